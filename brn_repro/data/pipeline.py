"""What the training loop sees, built from a resolved config: a sampler, training
batches, the evaluation sets, and the state a checkpoint needs to resume.

This is the config binding only; the work is done elsewhere. ``TrainingData(config)``
builds one of two kinds, picked by what the dataset's source returns: in-memory
datasets (``DatasetTensors``) go through ``loader.InMemoryBatches`` (a gather and a
vectorized crop/flip, so batches of 1-4 cost microseconds); an ImageFolder
(``ImageFolderSplits``) streams through a DataLoader with worker processes, its
batches chosen by the same samplers.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from functools import lru_cache
from itertools import islice
from typing import Any

import torch
from torch import Tensor

from brn_repro.data.imagefolder import ImageFolderSplits
from brn_repro.data.loader import (
    InMemoryBatches,
    balanced_subset_indices,
    fixed_subset_indices,
    noniid_test_indices,
)
from brn_repro.data.samplers import build_sampler
from brn_repro.data.sources import DatasetTensors, build_dataset
from brn_repro.schema import RunConfig

__all__ = ["InMemoryTrainingData", "StreamingTrainingData", "TrainingData", "load_dataset"]

# ``build_dataset``, cached per process: a sweep's runs in one worker read the files once.
load_dataset = lru_cache(maxsize=2)(build_dataset)

Batches = Iterable[tuple[Tensor, Tensor]]


def _source(cfg: RunConfig) -> DatasetTensors | ImageFolderSplits:
    """The config's dataset, as its source returns it (cached: see ``load_dataset``)."""
    dataset = cfg.dataset
    return load_dataset(dataset.name, dataset.root, dataset.download, str(cfg.paths.data),
                        dataset.image_size, dataset.augment.flip)


def resize(images: Tensor, size: int) -> Tensor:
    """uint8 (N, C, H, W) images at ``size`` x ``size``: area averaging when shrinking
    (each output pixel the mean of the input pixels it covers), bilinear when growing."""
    shrink = size < images.shape[-1]
    out = torch.nn.functional.interpolate(images.float(), size=(size, size),
                                          mode="area" if shrink else "bilinear",
                                          **({} if shrink else {"align_corners": False}))
    return out.round().clamp(0, 255).to(torch.uint8)


class TrainingData(ABC):
    """Built from a resolved config; raises ``DatasetError`` (one line) before training.

    ``TrainingData(config, rank=..., world_size=...)`` returns an ``InMemoryTrainingData``
    or a ``StreamingTrainingData``, whichever the dataset's source calls for. Under
    several processes (``brn_repro.distributed``), ``rank`` of ``world_size`` trains on
    its contiguous part of each global batch and evaluates every ``world_size``-th
    evaluation batch (the caller sums the counts)."""

    # What the loop and the model builder read, the same in both kinds.
    num_classes: int
    in_channels: int
    image_size: int
    global_batch: int
    train_labels: Tensor
    test_labels: Tensor
    steps_taken: int

    def __new__(cls, cfg: RunConfig, rank: int = 0, world_size: int = 1):
        if cls is TrainingData:  # the source is cached, so __init__ reads it again for free
            streamed = isinstance(_source(cfg), ImageFolderSplits)
            cls = StreamingTrainingData if streamed else InMemoryTrainingData
        return super().__new__(cls)

    def __init__(self, cfg: RunConfig, rank: int = 0, world_size: int = 1):
        data, train, sampler = cfg.data, cfg.train, cfg.sampler
        self.eval_batch, self.train_eval_size = train.eval_batch, data.train_eval_size
        self.eval_recipe = (train.minibatch_eval_labels, train.minibatch_eval_images)
        built = self._bind(_source(cfg), cfg)
        self.num_classes, self.in_channels = built.num_classes, built.in_channels
        self.image_size = built.image_size
        self.sampler = build_sampler(sampler.name, self.train_labels, data.workers, data.per_worker_batch,
                                     cfg.seed, sampler.labels_per_batch, sampler.images_per_label)
        self.global_batch = self.sampler.global_batch
        if train.minibatch_stats_eval:
            # The probe's batches are drawn at evaluation time, after training has begun;
            # draw one now so a recipe this test set cannot fill fails before training.
            noniid_test_indices(self.test_labels, *self.eval_recipe, batches=1)
        self.rank, self.world_size = rank, world_size
        part = self.global_batch // world_size
        self.local = slice(rank * part, (rank + 1) * part)
        self.steps_taken = 0

    @abstractmethod
    def _bind(self, built, cfg: RunConfig):
        """Keep the dataset's splits (after ``data.train_size`` and any resize), set
        ``train_labels`` and ``test_labels``, and return the splits as kept."""

    # --- training -------------------------------------------------------------
    def train_batch(self) -> tuple[Tensor, Tensor]:
        """This process's part of the next global batch."""
        self.steps_taken += 1
        return self._next_batch()

    @abstractmethod
    def _next_batch(self) -> tuple[Tensor, Tensor]: ...

    # --- evaluation -----------------------------------------------------------
    @abstractmethod
    def test_batches(self, size: int | None = None) -> Batches:
        """The test set, or a fixed subset of ``size`` examples (the same for every run)."""

    @abstractmethod
    def train_subset_batches(self) -> Batches:
        """A fixed training subset (same for every run) for train accuracy in inference mode."""

    def recipe_subset_batches(self, labels_per_batch: int, images_per_label: int) -> Batches | None:
        """The training subset grouped by the non-i.i.d. recipe (``InMemoryBatches``); None
        where the data streams from disk (no such groups: the metric is left out)."""
        return None

    def noniid_test_batches(self, size: int | None = None) -> Batches:
        """Test batches drawn the non-i.i.d. way (paper: 25 distinct labels x 2), fixed across
        runs: as many as fill the test set once, or the first ones holding ``size``
        examples (each batch costs a forward pass of its own: small and many)."""
        labels, images = self.eval_recipe
        count = None if size is None else max(1, size // (labels * images))
        return self._noniid_batches(labels, images, count)

    @abstractmethod
    def _noniid_batches(self, labels: int, images: int, count: int | None) -> Batches: ...

    # --- resume ---------------------------------------------------------------
    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """``{"sampler", "augment", "steps_taken"}``: the checkpoint format of both kinds."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class InMemoryTrainingData(TrainingData):
    """A dataset held in memory (``DatasetTensors``), batched by ``InMemoryBatches``."""

    def _bind(self, built: DatasetTensors, cfg: RunConfig) -> DatasetTensors:
        dataset, train_size = cfg.dataset, cfg.data.train_size
        self.crop_padding, self.flip = dataset.augment.crop_padding, dataset.augment.flip
        if train_size is not None:
            keep = balanced_subset_indices(built.train_y, train_size)
            built = dataclasses.replace(built, train_x=built.train_x[keep], train_y=built.train_y[keep])
        if dataset.image_size and dataset.image_size != built.image_size:
            size = dataset.image_size
            built = dataclasses.replace(built, train_x=resize(built.train_x, size),
                                        test_x=resize(built.test_x, size))
        self.tensors: DatasetTensors = built
        self.train_labels, self.test_labels = built.train_y, built.test_y
        # seed + 1: augmentation draws independent of the sampler's
        self.batches = InMemoryBatches(self.tensors, self.crop_padding, self.flip, cfg.seed + 1)
        return built

    def _next_batch(self) -> tuple[Tensor, Tensor]:
        # The whole global batch is augmented, then cut: the augmentation draws (one
        # generator for the global batch) do not depend on the number of processes.
        x, y = self.batches.train_batch(self.sampler.next())
        return x[self.local], y[self.local]

    def _shard(self, batches: Batches) -> Batches:
        """This process's evaluation batches: every ``world_size``-th one."""
        return batches if self.world_size == 1 else islice(batches, self.rank, None, self.world_size)

    def test_batches(self, size: int | None = None) -> Batches:
        return self._shard(self.batches.test_batches(self.eval_batch, size))

    def train_subset_batches(self) -> Batches:
        return self._shard(self.batches.train_subset_batches(self.train_eval_size, self.eval_batch))

    def _noniid_batches(self, labels: int, images: int, count: int | None) -> Batches:
        return self._shard(self.batches.noniid_test_batches(labels, images, batches=count))

    def recipe_subset_batches(self, labels_per_batch: int, images_per_label: int) -> Batches:
        return self._shard(self.batches.recipe_subset_batches(
            self.train_eval_size, labels_per_batch, images_per_label, self.eval_batch))

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict(), "augment": self.batches.state_dict()["generator"],
                "steps_taken": self.steps_taken}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps_taken = int(state["steps_taken"])
        self.batches.load_state_dict({"generator": state["augment"]})
        self.sampler.load_state_dict(state["sampler"])


class _SamplerBatches:
    """The sampler as an endless DataLoader ``batch_sampler`` (lists of indices),
    cut to this process's ``local`` part of each global batch."""

    def __init__(self, sampler, local: slice):
        self.sampler, self.local = sampler, local

    def __iter__(self):
        while True:
            yield self.sampler.next()[self.local].tolist()


class StreamingTrainingData(TrainingData):
    """An ImageFolder (``ImageFolderSplits``) streamed through DataLoader workers, which
    decode and augment each image; the sampler still chooses every batch."""

    def _bind(self, built: ImageFolderSplits, cfg: RunConfig) -> ImageFolderSplits:
        train_size = cfg.data.train_size
        self.train_set, self.val_set = built.train, built.val
        self.train_labels = torch.tensor(self.train_set.targets)
        if train_size is not None:
            keep = balanced_subset_indices(self.train_labels, train_size)
            self.train_set = torch.utils.data.Subset(self.train_set, keep.tolist())
            self.train_labels = self.train_labels[keep]
        self.test_labels = torch.tensor(self.val_set.targets)
        self.loader_workers = cfg.dataset.loader_workers
        self._stream: Iterator | None = None
        return built

    def _next_batch(self) -> tuple[Tensor, Tensor]:
        if self._stream is None:
            self._stream = iter(torch.utils.data.DataLoader(
                self.train_set, batch_sampler=_SamplerBatches(self.sampler, self.local),
                num_workers=self.loader_workers, persistent_workers=False))
        x, y = next(self._stream)  # a DataLoader's [x, y] list, as the (x, y) of the interface
        return x, y

    def _loader(self, dataset, batch_size: int) -> Batches:
        """``dataset`` in order, its DataLoader's [x, y] lists as the interface's (x, y)."""
        return map(tuple, torch.utils.data.DataLoader(dataset, batch_size=batch_size,
                                                      num_workers=self.loader_workers))

    def _stream_batches(self, dataset, idx: Tensor | None = None) -> Batches:
        if self.world_size > 1:  # shard the examples before any image is decoded
            idx = (torch.arange(len(dataset)) if idx is None else idx)[self.rank::self.world_size]
        subset = dataset if idx is None else torch.utils.data.Subset(dataset, idx.tolist())
        yield from self._loader(subset, self.eval_batch)

    def test_batches(self, size: int | None = None) -> Batches:
        total = len(self.test_labels)
        idx = fixed_subset_indices(total, size) if size is not None and size < total else None
        return self._stream_batches(self.val_set, idx)

    def train_subset_batches(self) -> Batches:
        idx = fixed_subset_indices(len(self.train_labels), self.train_eval_size)
        return self._stream_batches(self.train_set, idx)

    def _noniid_batches(self, labels: int, images: int, count: int | None) -> Batches:
        rows = noniid_test_indices(self.test_labels, labels, images, batches=count)
        for row in rows[self.rank::self.world_size]:  # one whole batch each: its statistics are the point
            subset = torch.utils.data.Subset(self.val_set, row.tolist())
            yield from self._loader(subset, len(row))

    def state_dict(self) -> dict[str, Any]:
        # The workers augment with their own seeds; a fresh generator's state keeps the
        # checkpoint in the in-memory kind's format.
        return {"sampler": self.sampler.state_dict(), "augment": torch.Generator().get_state(),
                "steps_taken": self.steps_taken}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps_taken = int(state["steps_taken"])
        # The loader prefetches, so the sampler's saved state runs ahead of the
        # batches trained on; replay the draws instead, from the seed.
        for _ in range(self.steps_taken):
            self.sampler.next()
