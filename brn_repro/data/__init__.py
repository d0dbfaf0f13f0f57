"""Datasets (sources), samplers (i.i.d. and the paper's non-i.i.d. recipes), the
in-memory batch loader, and the config-bound ``TrainingData`` the training loop
reads from (in memory or streamed: ``InMemoryTrainingData``, ``StreamingTrainingData``)."""

from brn_repro.data.imagefolder import ImageFolderSplits, load_imagefolder, load_imagefolder_splits
from brn_repro.data.loader import (
    NONIID_TEST_SEED,
    TRAIN_SUBSET_SEED,
    InMemoryBatches,
    augment,
    channel_stats,
    fixed_subset_indices,
    noniid_test_indices,
    normalize,
)
from brn_repro.data.pipeline import InMemoryTrainingData, StreamingTrainingData, TrainingData, load_dataset
from brn_repro.data.samplers import (
    SAMPLER_NAMES,
    GlobalBatchSampler,
    IIDSampler,
    NonIIDSampler,
    NonIIDSplitSampler,
    build_sampler,
)
from brn_repro.data.sources import (
    DATASET_NAMES,
    DEBIAN_FASHION_MNIST,
    DatasetError,
    DatasetNotFoundError,
    DatasetTensors,
    build_dataset,
    default_cache,
    find_fashion_mnist,
    load_cifar,
    load_fashion_mnist,
    read_idx,
)

__all__ = [
    "DATASET_NAMES", "DEBIAN_FASHION_MNIST", "NONIID_TEST_SEED", "SAMPLER_NAMES",
    "TRAIN_SUBSET_SEED", "DatasetError", "DatasetNotFoundError", "DatasetTensors",
    "GlobalBatchSampler", "IIDSampler", "ImageFolderSplits", "InMemoryBatches", "InMemoryTrainingData",
    "NonIIDSampler", "NonIIDSplitSampler", "StreamingTrainingData", "TrainingData", "augment", "build_dataset",
    "build_sampler", "channel_stats", "default_cache", "find_fashion_mnist",
    "fixed_subset_indices", "load_cifar", "load_fashion_mnist", "load_imagefolder",
    "load_dataset", "load_imagefolder_splits", "noniid_test_indices", "normalize", "read_idx",
]
