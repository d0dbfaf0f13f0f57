"""What the training loop sees: batches, augmented on tensors, and the evaluation sets.

Small datasets live in memory as uint8 tensors: a batch is a gather, a cast and
one vectorized crop/flip, so batches of 1-4 examples cost microseconds, not a
DataLoader round trip. ImageFolder streams through a DataLoader with workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from brn_repro.data.imagefolder import load_imagefolder
from brn_repro.data.samplers import NonIIDSampler, build_sampler
from brn_repro.data.sources import DatasetTensors, load_cifar, load_fashion_mnist

TRAIN_SUBSET_SEED, NONIID_TEST_SEED = 1234, 4321


@lru_cache(maxsize=2)
def load_tensors(name: str, root: str | None, download: bool, cache: str) -> DatasetTensors:
    """Cached per process: a sweep's runs in one worker read the files once."""
    if name == "fashion_mnist":
        return load_fashion_mnist(root, download, cache)
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, root, download, cache)
    raise ValueError(f"dataset.name={name!r} is not a dataset; use fashion_mnist, cifar10, "
                     "cifar100 or imagefolder")


def augment(x: Tensor, crop_padding: int, flip: bool, generator: torch.Generator) -> Tensor:
    """Random crop with zero padding and horizontal flip, one draw per image, vectorized."""
    n, _, h, w = x.shape
    if crop_padding > 0:
        padded = F.pad(x, [crop_padding] * 4)
        dy = torch.randint(0, 2 * crop_padding + 1, (n, 1), generator=generator)
        dx = torch.randint(0, 2 * crop_padding + 1, (n, 1), generator=generator)
        rows = (dy + torch.arange(h)).view(n, h, 1)
        cols = (dx + torch.arange(w)).view(n, 1, w)
        x = padded[torch.arange(n).view(n, 1, 1), :, rows, cols].permute(0, 3, 1, 2)
    if flip:
        mask = torch.rand(n, generator=generator) < 0.5
        x = torch.where(mask.view(n, 1, 1, 1), x.flip(-1), x)
    return x.contiguous()


class TrainingData:
    """Built from a resolved config; raises ``DatasetError`` (one line) before training."""

    def __init__(self, config: dict[str, Any]):
        dataset, data, train = config["dataset"], config["data"], config["train"]
        sampler_cfg, seed = config["sampler"], config["seed"]
        self.eval_batch, self.train_eval_size = train["eval_batch"], data["train_eval_size"]
        self.eval_recipe = (train.get("minibatch_eval_labels", 25), train.get("minibatch_eval_images", 2))
        augment_cfg = dataset.get("augment") or {}
        self.crop_padding, self.flip = int(augment_cfg.get("crop_padding", 0)), bool(augment_cfg.get("flip"))
        self.streaming = dataset["name"] == "imagefolder"
        if self.streaming:
            self.train_set, self.val_set = load_imagefolder(
                dataset.get("root"), dataset.get("image_size", 224), self.crop_padding, self.flip)
            self.train_labels = torch.tensor(self.train_set.targets)
            self.test_labels = torch.tensor(self.val_set.targets)
            self.num_classes, self.in_channels = len(self.train_set.classes), 3
            self.image_size = dataset.get("image_size", 224)
            self.loader_workers = dataset.get("loader_workers", 4)
        else:
            tensors = load_tensors(dataset["name"], dataset.get("root"), bool(dataset.get("download", True)),
                                   str(config["paths"]["data"]))
            self.tensors = tensors
            self.train_labels, self.test_labels = tensors.train_y, tensors.test_y
            self.num_classes, self.in_channels = tensors.num_classes, tensors.in_channels
            self.image_size = tensors.image_size
            self.mean = torch.tensor(tensors.mean).view(1, -1, 1, 1) * 255
            self.std = torch.tensor(tensors.std).view(1, -1, 1, 1) * 255
        self.sampler = build_sampler(sampler_cfg["type"], self.train_labels, data["workers"],
                                     data["per_worker_batch"], seed, sampler_cfg.get("labels_per_batch"),
                                     sampler_cfg.get("images_per_label"))
        self.global_batch = self.sampler.global_batch
        self.augment_generator = torch.Generator().manual_seed(seed + 1)
        self.steps_taken = 0
        self._stream: Iterator | None = None

    # --- training -------------------------------------------------------------
    def _normalize(self, x: Tensor) -> Tensor:
        return (x.float() - self.mean) / self.std

    def train_batch(self) -> tuple[Tensor, Tensor]:
        self.steps_taken += 1
        if self.streaming:
            if self._stream is None:
                self._stream = iter(self._stream_loader())
            return next(self._stream)
        idx = self.sampler.next()
        x = self.tensors.train_x[idx]
        if self.crop_padding or self.flip:
            x = augment(x, self.crop_padding, self.flip, self.augment_generator)
        return self._normalize(x), self.train_labels[idx]

    def _stream_loader(self):
        sampler = self.sampler

        class Batches:
            def __iter__(self):
                while True:
                    yield sampler.next().tolist()

        return torch.utils.data.DataLoader(self.train_set, batch_sampler=Batches(),
                                           num_workers=self.loader_workers, persistent_workers=False)

    # --- evaluation -----------------------------------------------------------
    def _memory_batches(self, x: Tensor, y: Tensor, idx: Tensor | None = None):
        idx = torch.arange(len(y)) if idx is None else idx
        for chunk in idx.split(self.eval_batch):
            yield self._normalize(x[chunk]), y[chunk]

    def _stream_batches(self, dataset, idx: Tensor | None = None, batch: int | None = None):
        subset = dataset if idx is None else torch.utils.data.Subset(dataset, idx.tolist())
        yield from torch.utils.data.DataLoader(subset, batch_size=batch or self.eval_batch,
                                               num_workers=self.loader_workers)

    def test_batches(self, size: int | None = None):
        """The test set, or a fixed subset of ``size`` examples (the same for every run)."""
        idx = None
        if size is not None and size < len(self.test_labels):
            generator = torch.Generator().manual_seed(TRAIN_SUBSET_SEED)
            idx = torch.randperm(len(self.test_labels), generator=generator)[:size]
        if self.streaming:
            return self._stream_batches(self.val_set, idx)
        return self._memory_batches(self.tensors.test_x, self.tensors.test_y, idx)

    def train_subset_batches(self):
        """A fixed training subset (same for every run) for train accuracy in inference mode."""
        generator = torch.Generator().manual_seed(TRAIN_SUBSET_SEED)
        idx = torch.randperm(len(self.train_labels), generator=generator)[: self.train_eval_size]
        if self.streaming:
            return self._stream_batches(self.train_set, idx)
        return self._memory_batches(self.tensors.train_x, self.train_labels, idx)

    def noniid_test_batches(self):
        """Test batches drawn the non-i.i.d. way (paper: 25 labels x 2), fixed across runs."""
        labels, images = self.eval_recipe
        sampler = NonIIDSampler(self.test_labels, 1, labels * images, NONIID_TEST_SEED, labels, images)
        count = max(1, len(self.test_labels) // (labels * images))
        idx = torch.stack([sampler.next() for _ in range(count)])
        if self.streaming:
            for row in idx:
                yield from self._stream_batches(self.val_set, row, batch=len(row))
            return
        for row in idx:
            yield self._normalize(self.tensors.test_x[row]), self.test_labels[row]

    # --- resume ---------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict(), "augment": self.augment_generator.get_state(),
                "steps_taken": self.steps_taken}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.augment_generator.set_state(state["augment"])
        self.steps_taken = int(state["steps_taken"])
        if self.streaming:
            # The loader prefetches, so the sampler's saved state runs ahead of the
            # batches trained on; replay the draws instead, from the seed.
            for _ in range(self.steps_taken):
                self.sampler.next()
        else:
            self.sampler.load_state_dict(state["sampler"])
