"""Batches from a dataset held in memory (``DatasetTensors``), with no DataLoader.

The point is speed at the paper's small normalization batches: a training step
of 1-4 examples per worker must not pay a DataLoader round trip or a Python loop
per image. A batch here is one index gather, one vectorized crop/flip over the
whole batch (pad once, gather each image's random window), a cast and a
normalization. All augmentation randomness comes from a seeded generator whose
state is saved with the run, so a resumed run augments exactly as an
uninterrupted one.

Evaluation reads the test set in fixed chunks, a fixed training subset (for
"train accuracy in inference mode"), or non-i.i.d. test batches (the paper's
Fig 3 control: batchnorm evaluated with minibatch statistics on test batches of
25 distinct labels x 2 images: the training groups' 2 images per label, more labels).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from brn_repro.data.samplers import NonIIDSampler
from brn_repro.data.sources import DatasetTensors

# Fixed seeds so every run is evaluated on the same subsets and batches.
TRAIN_SUBSET_SEED, NONIID_TEST_SEED = 1234, 4321


def augment(x: Tensor, crop_padding: int, flip: bool, generator: torch.Generator) -> Tensor:
    """Random crop with ``crop_padding`` zero pixels on each side, then a horizontal
    flip with p=0.5; one draw per image, vectorized over the batch. Works on uint8
    (zero = black, as torchvision's RandomCrop pads) or float."""
    n, _, h, w = x.shape
    if crop_padding > 0:
        padded = F.pad(x, [crop_padding] * 4)
        dy = torch.randint(0, 2 * crop_padding + 1, (n, 1), generator=generator)
        dx = torch.randint(0, 2 * crop_padding + 1, (n, 1), generator=generator)
        rows = (dy + torch.arange(h)).view(n, h, 1)
        cols = (dx + torch.arange(w)).view(n, 1, w)
        # advanced indices around the channel slice put it last: (n, h, w, c)
        x = padded[torch.arange(n).view(n, 1, 1), :, rows, cols].permute(0, 3, 1, 2)
    if flip:
        mask = torch.rand(n, generator=generator) < 0.5
        x = torch.where(mask.view(n, 1, 1, 1), x.flip(-1), x)
    return x.contiguous()


def normalize(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``(x - mean) / std`` as float32; ``mean``/``std`` already on ``x``'s scale
    (see ``channel_stats``)."""
    return (x.float() - mean) / std


def channel_stats(tensors: DatasetTensors) -> tuple[Tensor, Tensor]:
    """Per-channel mean/std shaped (1, C, 1, 1) on the pixels' scale: 0-255 for
    uint8 images, 0-1 (the stats as given) for float ones."""
    scale = 255.0 if tensors.train_x.dtype == torch.uint8 else 1.0
    mean = torch.tensor(tensors.mean, dtype=torch.float32).view(1, -1, 1, 1) * scale
    std = torch.tensor(tensors.std, dtype=torch.float32).view(1, -1, 1, 1) * scale
    return mean, std


def fixed_subset_indices(total: int, size: int | None, seed: int = TRAIN_SUBSET_SEED) -> Tensor:
    """The first ``size`` indices of a seeded permutation of ``range(total)``: the same
    subset for every run (all of it, permuted, when ``size >= total``);
    ``range(total)`` in order when ``size`` is None."""
    if size is None:
        return torch.arange(total)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(total, generator=generator)[:size]


def balanced_subset_indices(labels: Tensor, size: int, seed: int = TRAIN_SUBSET_SEED) -> Tensor:
    """``size`` indices, the same number of each class (``size`` must be a multiple of
    the classes), the first of a seeded permutation within each class: the same
    training set for every run, whatever its seed. Sorted, so a sampler's draws
    over it do not depend on how the subset was picked."""
    classes = labels.unique()
    if size % len(classes):
        raise ValueError(f"data.train_size={size} is not a multiple of the {len(classes)} classes; "
                         f"fix: pick a multiple, e.g. {size // len(classes) * len(classes) or len(classes)}")
    per_class = size // len(classes)
    generator = torch.Generator().manual_seed(seed)
    picks = []
    for c in classes.tolist():
        members = (labels == c).nonzero().flatten()
        if len(members) < per_class:
            raise ValueError(f"data.train_size={size} needs {per_class} images of class {c}, "
                             f"which has {len(members)}; fix: a smaller data.train_size")
        picks.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    return torch.cat(picks).sort().values


def noniid_test_indices(labels: Tensor, labels_per_batch: int = 25, images_per_label: int = 2,
                        seed: int = NONIID_TEST_SEED, batches: int | None = None) -> Tensor:
    """(batches, labels_per_batch * images_per_label) test indices drawn the
    non-i.i.d. way; by default as many batches as the test set fills once. Drawn one
    batch at a time, so the first k batches do not depend on how many are asked for.

    A batch's labels are distinct (drawn without replacement): the probe asks whether
    batch statistics of MORE labels than a training group (paper: 25 vs 16, each x 2
    images) still classify, and a repeated label would quietly give it fewer."""
    present = int(labels.unique().numel())
    if labels_per_batch > present:
        raise ValueError(f"train.minibatch_eval_labels={labels_per_batch} exceeds the {present} labels "
                         f"of the test set (a probe batch holds distinct labels); set "
                         f"recipe.noniid.eval_labels to at most {present}")
    size = labels_per_batch * images_per_label
    sampler = NonIIDSampler(labels, 1, size, seed, labels_per_batch, images_per_label, replace=False)
    count = batches if batches is not None else max(1, len(labels) // size)
    return torch.stack([sampler.next() for _ in range(count)])


class InMemoryBatches:
    """Training and evaluation batches of one ``DatasetTensors``."""

    def __init__(self, tensors: DatasetTensors, crop_padding: int = 0, flip: bool = False,
                 seed: int = 0):
        if crop_padding < 0:
            raise ValueError(f"dataset.augment.crop_padding={crop_padding} must be >= 0")
        self.tensors, self.crop_padding, self.flip = tensors, int(crop_padding), bool(flip)
        self.mean, self.std = channel_stats(tensors)
        self.generator = torch.Generator().manual_seed(seed)

    # --- training -------------------------------------------------------------
    def train_batch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """Training examples ``indices``, augmented and normalized: (x float32, y int64)."""
        x = self.tensors.train_x[indices]
        if self.crop_padding or self.flip:
            x = augment(x, self.crop_padding, self.flip, self.generator)
        return normalize(x, self.mean, self.std), self.tensors.train_y[indices]

    # --- evaluation (no augmentation) -------------------------------------------
    def _split(self, split: str) -> tuple[Tensor, Tensor]:
        if split not in ("train", "test"):
            raise ValueError(f"split={split!r}; use train or test")
        t = self.tensors
        return (t.train_x, t.train_y) if split == "train" else (t.test_x, t.test_y)

    def batch(self, indices: Tensor, split: str = "test") -> tuple[Tensor, Tensor]:
        """Examples ``indices`` of ``split``, normalized, not augmented."""
        x, y = self._split(split)
        return normalize(x[indices], self.mean, self.std), y[indices]

    def chunks(self, split: str = "test", chunk: int = 1000,
               indices: Tensor | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """``split`` (or its ``indices``) in order, ``chunk`` examples at a time."""
        if chunk < 1:
            raise ValueError(f"train.eval_batch={chunk} must be positive")
        _, y = self._split(split)
        indices = torch.arange(len(y)) if indices is None else indices
        for part in indices.split(chunk):
            yield self.batch(part, split)

    def test_batches(self, chunk: int = 1000, size: int | None = None):
        """The test set in order, or its fixed subset of ``size`` examples, in chunks."""
        total = len(self.tensors.test_y)
        indices = fixed_subset_indices(total, size if size is not None and size < total else None)
        return self.chunks("test", chunk, indices)

    def train_subset_batches(self, size: int, chunk: int = 1000):
        """A fixed training subset (same for every run) for train accuracy in
        inference mode, where overfitting to the non-i.i.d. batches shows."""
        indices = fixed_subset_indices(len(self.tensors.train_y), size)
        return self.chunks("train", chunk, indices)

    def recipe_subset_batches(self, size: int, labels_per_batch: int, images_per_label: int,
                              chunk: int = 1000):
        """The fixed training subset's images regrouped the way training's non-i.i.d. sampler
        groups them (``labels_per_batch`` labels drawn with replacement x ``images_per_label``),
        about ``size`` images in consecutive groups, the same for every run: the batch noise a
        non-i.i.d. worker normalizes with (``moving_average_errors``' ``group_size``)."""
        subset = fixed_subset_indices(len(self.tensors.train_y), size)
        group = labels_per_batch * images_per_label
        sampler = NonIIDSampler(self.tensors.train_y[subset], max(1, size // group), group,
                                NONIID_TEST_SEED, labels_per_batch, images_per_label)
        per_chunk = max(1, chunk // group) * group  # whole groups per forward pass
        return self.chunks("train", per_chunk, subset[sampler.next()])

    def noniid_test_batches(self, labels_per_batch: int = 25, images_per_label: int = 2,
                            seed: int = NONIID_TEST_SEED, batches: int | None = None):
        """Test batches drawn the non-i.i.d. way (paper: 25 distinct labels x 2), one
        per yield, the same for every run: to evaluate with minibatch statistics."""
        rows = noniid_test_indices(self.tensors.test_y, labels_per_batch, images_per_label,
                                   seed, batches)
        for row in rows:
            yield self.batch(row, "test")

    # --- resume ---------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
