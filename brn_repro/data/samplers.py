"""Which examples make each step's global batch.

A step's batch is ``workers x per_worker_batch`` indices laid out worker-major
(indices ``[w*b:(w+1)*b]`` are worker w's), so batch-statistics norms with
``per_worker_batch=b`` normalize exactly the workers' minibatches, as the paper's
synchronized workers each normalize their own. All draws come from one seeded
``torch.Generator`` whose state ``state_dict()`` returns: a run resumed from a
checkpoint sees the same batches as an uninterrupted one.

- ``iid``: shuffled without replacement, reshuffled every epoch (the last
  ``N mod global_batch`` examples of each shuffle wait for the next epoch).
- ``noniid``: the paper's recipe (section 4, Fig 3): each per-worker batch is
  ``labels_per_batch`` labels drawn with replacement, ``images_per_label``
  distinct random images of each.
- ``noniid_split``: the paper's "batchnorm on half-minibatches" control (16 labels
  x 2 images, each half normalized on its own and holding one image of each drawn
  pair). Generalized to I images per label: the same draws, laid out as I groups
  of ``labels_per_batch`` images, group i holding image i of every drawn label.
  Normalize in groups of ``per_worker_batch // images_per_label``
  (``RunConfig.norm_batch`` does): then no normalization group sees a label
  twice from one draw, which is what removes the label structure BN overfits to.
  Splitting each label's images across only two halves would leave I/2 images of
  a label in each half, the unsplit batch's structure for I > 2.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

SAMPLER_NAMES = ("iid", "noniid", "noniid_split")


class GlobalBatchSampler:
    """Base: a seeded generator and the worker-major global batch shape."""

    def __init__(self, labels: Tensor, workers: int, per_worker_batch: int, seed: int):
        if workers < 1 or per_worker_batch < 1:
            raise ValueError(f"data.workers={workers} and data.per_worker_batch={per_worker_batch} "
                             "must be positive")
        self.labels, self.workers, self.per_worker_batch = labels, workers, per_worker_batch
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def global_batch(self) -> int:
        return self.workers * self.per_worker_batch

    def next(self) -> Tensor:
        """The next step's ``global_batch`` int64 indices, worker-major."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


class IIDSampler(GlobalBatchSampler):
    """Random without replacement within an epoch; a fresh shuffle each epoch."""

    def __init__(self, labels: Tensor, workers: int, per_worker_batch: int, seed: int):
        super().__init__(labels, workers, per_worker_batch, seed)
        if self.global_batch > len(labels):
            raise ValueError(f"the global batch of {self.global_batch} (data.workers x "
                             f"data.per_worker_batch) exceeds the {len(labels)} training examples")
        self.order, self.position = torch.randperm(len(labels), generator=self.generator), 0

    def next(self) -> Tensor:
        if self.position + self.global_batch > len(self.order):
            self.order, self.position = torch.randperm(len(self.labels), generator=self.generator), 0
        batch = self.order[self.position:self.position + self.global_batch]
        self.position += self.global_batch
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "order": self.order.clone(), "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.order, self.position = state["order"].clone(), int(state["position"])


class NonIIDSampler(GlobalBatchSampler):
    """Per-worker batch = ``labels_per_batch`` labels drawn with replacement (from the
    labels present) x ``images_per_label`` distinct random images of each, laid out
    label group by label group: ``[w*b + g*I : w*b + (g+1)*I]`` is group g of worker w.

    ``replace=False`` draws the labels of a per-worker batch without replacement:
    the minibatch-statistics probe's test batches, whose point is to hold more
    distinct labels than a training group (``noniid_test_indices``)."""

    def __init__(self, labels: Tensor, workers: int, per_worker_batch: int, seed: int,
                 labels_per_batch: int, images_per_label: int, *, replace: bool = True):
        super().__init__(labels, workers, per_worker_batch, seed)
        check_recipe("noniid", per_worker_batch, labels_per_batch, images_per_label)
        self.labels_per_batch, self.images_per_label = labels_per_batch, images_per_label
        # Indices sorted by label: label c's images are by_label[offsets[c]:offsets[c]+counts[c]].
        self.by_label = torch.argsort(labels, stable=True)
        self.num_classes = int(labels.max()) + 1
        self.counts = torch.bincount(labels, minlength=self.num_classes)
        self.offsets = torch.cumsum(self.counts, 0) - self.counts
        self.present = self.counts.nonzero().flatten()
        self.replace = replace
        if not replace and labels_per_batch > len(self.present):
            raise ValueError(f"{labels_per_batch} distinct labels per batch exceed the "
                             f"{len(self.present)} labels present")
        short = int(self.counts[self.present].min())
        if short < images_per_label:
            raise ValueError(f"sampler.images_per_label={images_per_label} exceeds the {short} "
                             "examples of the rarest label")

    def draw(self, groups: int) -> Tensor:
        """(groups, labels_per_batch, images_per_label) indices, one vectorized draw."""
        shape = (groups, self.labels_per_batch)
        if self.replace:
            slots = torch.randint(len(self.present), shape, generator=self.generator)
        else:  # a random permutation of the labels per group, cut to labels_per_batch
            slots = torch.rand(groups, len(self.present), generator=self.generator).argsort(-1)
            slots = slots[:, :self.labels_per_batch]
        drawn = self.present[slots]
        counts = self.counts[drawn].unsqueeze(-1)
        u = torch.rand(*shape, self.images_per_label, generator=self.generator)
        positions = (u * counts).long()
        # Distinct images within a label group: redraw the (rare) groups with a repeat.
        if self.images_per_label > 1:
            sorted_positions = positions.sort(-1).values
            repeats = (sorted_positions[..., 1:] == sorted_positions[..., :-1]).any(-1)
            for g, slot in repeats.nonzero().tolist():
                count = int(self.counts[drawn[g, slot]])
                positions[g, slot] = torch.randperm(count, generator=self.generator)[:self.images_per_label]
        return self.by_label[self.offsets[drawn].unsqueeze(-1) + positions]

    def next(self) -> Tensor:
        return self.draw(self.workers).reshape(-1)


class NonIIDSplitSampler(NonIIDSampler):
    """``NonIIDSampler``'s draws, transposed within each worker: worker w's batch is
    I groups of L (``images_per_label`` x ``labels_per_batch``), group i holding
    image i of every drawn label, slot k of every group from the same drawn label.
    Normalize in groups of ``per_worker_batch // images_per_label`` (= L) to get the
    paper's control; with I = 2 these are its two half-minibatches."""

    def __init__(self, labels: Tensor, workers: int, per_worker_batch: int, seed: int,
                 labels_per_batch: int, images_per_label: int):
        check_recipe("noniid_split", per_worker_batch, labels_per_batch, images_per_label)
        super().__init__(labels, workers, per_worker_batch, seed, labels_per_batch, images_per_label)

    def next(self) -> Tensor:
        # (W, L, I) -> (W, I, L): the same draws (the same generator calls) as noniid.
        return self.draw(self.workers).transpose(1, 2).reshape(-1)


def check_sampler(name: str, per_worker_batch: int, labels_per_batch: int | None = None,
                  images_per_label: int | None = None) -> None:
    """A sampler this module has, with a recipe it can draw: ``build_sampler`` checks it,
    and ``config.validate`` before any data is loaded."""
    if name not in SAMPLER_NAMES:
        raise ValueError(f"sampler.name={name!r} is not a sampler; use one of {', '.join(SAMPLER_NAMES)}")
    if name != "iid":
        check_recipe(name, per_worker_batch, labels_per_batch, images_per_label)


def check_recipe(name: str, per_worker_batch: int, labels_per_batch: int | None,
                 images_per_label: int | None) -> None:
    """A non-i.i.d. recipe that fills the per-worker batch."""
    if not labels_per_batch or not images_per_label:
        raise ValueError(f"sampler={name} needs sampler.labels_per_batch and sampler.images_per_label "
                         "(positive integers; recipe.noniid sets them)")
    if labels_per_batch * images_per_label != per_worker_batch:
        raise ValueError(
            f"data.per_worker_batch={per_worker_batch} must equal sampler.labels_per_batch x sampler."
            f"images_per_label = {labels_per_batch} x {images_per_label} = {labels_per_batch * images_per_label}")
    if name == "noniid_split" and images_per_label < 2:
        raise ValueError(f"sampler.images_per_label={images_per_label} must be at least 2 for "
                         "noniid_split (it normalizes one group per image of each label); use sampler=noniid")


def build_sampler(kind: str, labels: Tensor, workers: int, per_worker_batch: int, seed: int,
                  labels_per_batch: int | None = None,
                  images_per_label: int | None = None) -> GlobalBatchSampler:
    """``sampler.name`` -> its sampler; the non-i.i.d. ones need both recipe keys."""
    check_sampler(kind, per_worker_batch, labels_per_batch, images_per_label)
    if kind == "iid":
        return IIDSampler(labels, workers, per_worker_batch, seed)
    cls = NonIIDSampler if kind == "noniid" else NonIIDSplitSampler
    return cls(labels, workers, per_worker_batch, seed, labels_per_batch, images_per_label)
