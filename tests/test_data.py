"""Data sources in their real formats (written here), samplers, augmentation."""

import gzip
import pickle

import numpy as np
import pytest
import torch
from conftest import write_idx
from PIL import Image

import brn_repro.data.sources as sources
from brn_repro.data import (
    DatasetError,
    DatasetNotFoundError,
    IIDSampler,
    NonIIDSampler,
    NonIIDSplitSampler,
    augment,
    load_cifar,
    load_fashion_mnist,
    load_imagefolder,
)


def fake_idx_dir(directory, n_train=50, n_test=20, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(directory / f"{split}-images-idx3-ubyte.gz", x)
        write_idx(directory / f"{split}-labels-idx1-ubyte.gz", y)
        arrays[split] = (x, y)
    return arrays


@pytest.fixture
def no_debian(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")


def test_fashion_mnist_reads_idx_from_root_exactly(tmp_path, no_debian):
    arrays = fake_idx_dir(tmp_path)
    data = load_fashion_mnist(tmp_path, download=False, cache=tmp_path / "cache")
    assert torch.equal(data.train_x[:, 0], torch.from_numpy(arrays["train"][0]))
    assert torch.equal(data.test_y, torch.from_numpy(arrays["t10k"][1].astype(np.int64)))
    assert (data.in_channels, data.image_size, data.num_classes) == (1, 28, 10)


def test_debian_package_is_the_fallback(tmp_path, monkeypatch):
    debian = tmp_path / "debian"
    debian.mkdir()
    arrays = fake_idx_dir(debian, seed=3)
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", debian)
    data = load_fashion_mnist(tmp_path / "empty-root", download=False, cache=tmp_path / "cache")
    assert torch.equal(data.train_y, torch.from_numpy(arrays["train"][1].astype(np.int64)))


def test_missing_dataset_says_where_it_looked_and_how_to_get_it(tmp_path, no_debian, monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nno network")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(DatasetNotFoundError) as err:
        load_fashion_mnist(tmp_path / "root", download=True, cache=tmp_path / "cache")
    message = str(err.value)
    assert "\n" not in message
    assert str(tmp_path / "root") in message and "no-debian" in message
    assert "apt-get install dataset-fashion-mnist" in message and "dataset.root=" in message
    assert "download" in message and "no network" not in message.split("failed:")[0]


def test_truncated_and_corrupt_files_are_named(tmp_path, no_debian):
    fake_idx_dir(tmp_path)
    images = tmp_path / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(images.read_bytes())
    images.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.gz.*truncated"):
        load_fashion_mnist(tmp_path, download=False, cache=tmp_path / "cache")
    images.write_bytes(gzip.compress(b"\x12\x34" + raw[2:]))
    with pytest.raises(DatasetError, match="bad magic"):
        load_fashion_mnist(tmp_path, download=False, cache=tmp_path / "cache")
    images.write_bytes(images.read_bytes()[:30])  # a cut gzip stream
    with pytest.raises(DatasetError, match="cannot read"):
        load_fashion_mnist(tmp_path, download=False, cache=tmp_path / "cache")


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_pickle_batches(tmp_path, name):
    rng = np.random.default_rng(0)
    key = b"labels" if name == "cifar10" else b"fine_labels"
    folder = tmp_path / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    folder.mkdir()
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if name == "cifar10" else ["train", "test"]
    written = {}
    for f in files:
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, 4).tolist()
        (folder / f).write_bytes(pickle.dumps({b"data": data, key: labels}))
        written[f] = (data, labels)
    loaded = load_cifar(name, tmp_path, download=False, cache=tmp_path / "cache")
    first = written["data_batch_1" if name == "cifar10" else "train"]
    assert torch.equal(loaded.train_x[:4], torch.from_numpy(first[0].reshape(4, 3, 32, 32)))
    assert loaded.train_y[:4].tolist() == first[1]
    assert loaded.num_classes == (10 if name == "cifar10" else 100)
    (folder / files[-1]).write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match=files[-1]):
        load_cifar(name, tmp_path, download=False, cache=tmp_path / "cache")


def test_imagefolder_of_pngs(tmp_path):
    for split in ("train", "val"):
        for label, color in (("cat", 30), ("dog", 220)):
            folder = tmp_path / split / label
            folder.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((40, 40, 3), color, dtype=np.uint8)).save(folder / f"{i}.png")
    train, val = load_imagefolder(tmp_path, image_size=32)
    x, y = val[3]
    assert train.classes == ["cat", "dog"] and x.shape == (3, 32, 32) and y == 1
    assert x.mean() > 1.0  # the bright dog image, normalized
    with pytest.raises(DatasetNotFoundError, match="val"):
        load_imagefolder(tmp_path / "train", image_size=32)


def labels_for(n_per_class=30, classes=10):
    return torch.arange(classes).repeat_interleave(n_per_class)


def test_noniid_batches_have_the_promised_label_structure():
    labels = labels_for()
    sampler = NonIIDSampler(labels, workers=5, per_worker_batch=8, seed=0, labels_per_batch=2,
                            images_per_label=4)
    repeated_label = False
    for _ in range(50):
        batch = sampler.next().view(5, 2, 4)
        groups = labels[batch]
        assert (groups == groups[..., :1]).all()  # 4 images of one label in each group
        assert all(len(set(row.tolist())) == 4 for row in batch.view(-1, 4))  # distinct images
        repeated_label |= bool((groups[:, 0, 0] == groups[:, 1, 0]).any())
    assert repeated_label  # labels are drawn with replacement


def test_noniid_split_puts_each_pair_in_different_halves():
    labels = labels_for()
    sampler = NonIIDSplitSampler(labels, workers=3, per_worker_batch=8, seed=0, labels_per_batch=4,
                                 images_per_label=2)
    batch = sampler.next().view(3, 2, 4)  # worker, half, label slot
    first, second = labels[batch[:, 0]], labels[batch[:, 1]]
    assert torch.equal(first, second)  # slot k of each half holds the same label's images
    assert not (batch[:, 0] == batch[:, 1]).any()


def test_iid_covers_each_example_once_per_epoch_and_resumes():
    labels = labels_for(n_per_class=6)
    sampler = IIDSampler(labels, workers=2, per_worker_batch=5, seed=1)
    epoch = torch.cat([sampler.next() for _ in range(6)])
    assert sorted(epoch.tolist()) == list(range(60))
    state = sampler.state_dict()
    ahead = [sampler.next() for _ in range(10)]
    restored = IIDSampler(labels, workers=2, per_worker_batch=5, seed=99)
    restored.load_state_dict(state)
    assert all(torch.equal(a, restored.next()) for a in ahead)


def test_augmentation_crop_and_flip():
    x = torch.arange(2 * 1 * 4 * 5, dtype=torch.float32).view(2, 1, 4, 5)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(augment(x, 0, False, g), x)
    cropped = augment(x, 2, False, g)
    assert cropped.shape == x.shape
    flipped = [augment(x[:1], 0, True, torch.Generator().manual_seed(s)) for s in range(20)]
    assert any(torch.equal(f, x[:1].flip(-1)) for f in flipped) and any(torch.equal(f, x[:1]) for f in flipped)
    again = augment(x, 2, True, torch.Generator().manual_seed(5))
    assert torch.equal(again, augment(x, 2, True, torch.Generator().manual_seed(5)))
    # every crop is a window of the zero-padded image
    padded = torch.nn.functional.pad(x, [2] * 4)
    windows = [padded[:, :, i:i + 4, j:j + 5] for i in range(5) for j in range(5)]
    for b in range(2):
        assert any(torch.equal(cropped[b], w[b]) for w in windows)
