"""``TrainingData``'s two kinds (in-memory tensors, a streamed ImageFolder) behind one interface."""

import typing

import torch

from brn_repro.data import InMemoryTrainingData, StreamingTrainingData, TrainingData
from brn_repro.schema import RunConfig
from tests.test_data import write_pngs
from tests.test_train import make_config


def _public(obj) -> set[str]:
    return {name for name in dir(obj) if not name.startswith("_")}


def _signature(value):
    """What a result is, not what it holds: the type, and for tensors dtype and rank."""
    if isinstance(value, torch.Tensor):
        return ("tensor", value.dtype, value.dim())
    if isinstance(value, tuple | list):
        return (type(value).__name__, tuple(_signature(v) for v in value))
    return type(value).__name__


def _batches_signature(batches, data):
    batches = list(batches)
    assert batches, "no evaluation batches on the tiny sets"
    for x, _ in batches:
        assert x.shape[1:] == (data.in_channels, data.image_size, data.image_size)
    return {_signature(b) for b in batches}


def test_the_constructor_picks_the_kind_and_both_kinds_answer_the_same_interface(tmp_path, tiny_fashion_mnist):
    write_pngs(tmp_path / "folder", {"cat": (30, 60, 90), "dog": (220, 200, 10)})
    eval_recipe = ("train.minibatch_eval_labels=2", "train.minibatch_eval_images=1", "train.eval_batch=3",
                   "data.per_worker_batch=2", "data.workers=2", "data.train_eval_size=4")
    in_memory = TrainingData(RunConfig.parse(make_config(tmp_path, tiny_fashion_mnist, *eval_recipe)),
                             rank=0, world_size=1)
    streamed = TrainingData(RunConfig.parse(make_config(tmp_path, tiny_fashion_mnist, "dataset=imagefolder",
                                        f"dataset.root={tmp_path / 'folder'}", "dataset.image_size=16",
                                        "dataset.loader_workers=0", *eval_recipe)))
    assert type(in_memory) is InMemoryTrainingData and type(streamed) is StreamingTrainingData

    # every public method is the interface's, implemented in both (nothing abstract left)
    for kind in (InMemoryTrainingData, StreamingTrainingData):
        assert _public(kind) == _public(TrainingData) and not kind.__abstractmethods__
    # the attributes the loop reads, with the declared types
    for name, kind in typing.get_type_hints(TrainingData).items():
        assert isinstance(getattr(in_memory, name), kind) and isinstance(getattr(streamed, name), kind), name

    signatures = []
    for data in (in_memory, streamed):
        x, y = data.train_batch()
        assert len(x) == len(y) == data.global_batch and data.steps_taken == 1
        state = data.state_dict()
        assert data.load_state_dict(state) is None and data.steps_taken == 1
        signatures.append({
            "train_batch": _signature((x, y)),
            "test_batches": _batches_signature(data.test_batches(), data),
            "test_subset": _batches_signature(data.test_batches(2), data),
            "train_subset_batches": _batches_signature(data.train_subset_batches(), data),
            "noniid_test_batches": _batches_signature(data.noniid_test_batches(), data),
            "state_dict": {key: _signature(value) for key, value in state.items() if key != "sampler"},
            "sampler_state": sorted(state["sampler"]),
        })
    assert signatures[0] == signatures[1]
