"""Datasets (sources), samplers (i.i.d. and the paper's non-i.i.d. recipes) and the
in-memory batch pipeline the training loop reads from."""

from brn_repro.data.imagefolder import load_imagefolder
from brn_repro.data.pipeline import TrainingData, augment, load_tensors
from brn_repro.data.samplers import (
    IIDSampler,
    NonIIDSampler,
    NonIIDSplitSampler,
    build_sampler,
)
from brn_repro.data.sources import (
    DEBIAN_FASHION_MNIST,
    DatasetError,
    DatasetNotFoundError,
    DatasetTensors,
    find_fashion_mnist,
    load_cifar,
    load_fashion_mnist,
    read_idx,
)

__all__ = [
    "DEBIAN_FASHION_MNIST", "DatasetError", "DatasetNotFoundError", "DatasetTensors",
    "IIDSampler", "NonIIDSampler", "NonIIDSplitSampler", "TrainingData", "augment",
    "build_sampler", "find_fashion_mnist", "load_cifar", "load_fashion_mnist", "load_imagefolder", "load_tensors",
    "read_idx",
]
