"""Data sources read from files written here in their real formats (IDX gz, CIFAR
pickles, PNG folders), samplers checked against the structure they promise, and
the in-memory loader against hand-computed values."""

import gzip
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import brn_repro.data.sources as sources
from brn_repro.config import ConfigError, norm_options, validate
from brn_repro.data import (
    DatasetError,
    DatasetNotFoundError,
    IIDSampler,
    InMemoryBatches,
    NonIIDSampler,
    NonIIDSplitSampler,
    TrainingData,
    augment,
    build_dataset,
    build_sampler,
    fixed_subset_indices,
    load_cifar,
    load_fashion_mnist,
    load_imagefolder,
    noniid_test_indices,
)
from brn_repro.data.sources import DatasetTensors
from brn_repro.schema import RunConfig, SamplerConfig

IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC = 0x00000803, 0x00000801


def write_idx(path, array, magic, compress=True):
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def fake_fashion(directory, n_train=50, n_test=20, seed=0, compress=True):
    """The four Fashion-MNIST IDX files with random pixels; returns what was written."""
    directory.mkdir(parents=True, exist_ok=True)
    rng, suffix, written = np.random.default_rng(seed), ".gz" if compress else "", {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(directory / f"{split}-images-idx3-ubyte{suffix}", x, IDX_IMAGES_MAGIC, compress)
        write_idx(directory / f"{split}-labels-idx1-ubyte{suffix}", y, IDX_LABELS_MAGIC, compress)
        written[split] = (torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y.astype(np.int64)))
    return written


@pytest.fixture
def no_debian(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")


@pytest.fixture
def offline(monkeypatch):
    """torchvision's downloads fail the way they do without a network."""
    import torchvision

    def fail(*args, **kwargs):
        raise RuntimeError("Error downloading x.gz:\nTried http://example/, got:\n"
                           "<urlopen error [Errno -2] Name or service not known>\n")

    for name in ("FashionMNIST", "CIFAR10", "CIFAR100"):
        monkeypatch.setattr(torchvision.datasets, name, fail)


# --- Fashion-MNIST --------------------------------------------------------------------


def test_fashion_mnist_reads_exact_pixels_and_labels_from_root(tmp_path, no_debian):
    written = fake_fashion(tmp_path / "root")
    data = load_fashion_mnist(tmp_path / "root", download=False, cache=tmp_path / "cache")
    assert data.train_x.dtype == torch.uint8 and data.train_x.shape == (50, 1, 28, 28)
    assert torch.equal(data.train_x, written["train"][0]) and torch.equal(data.train_y, written["train"][1])
    assert torch.equal(data.test_x, written["t10k"][0]) and torch.equal(data.test_y, written["t10k"][1])
    assert data.test_y.dtype == torch.int64
    assert (data.name, data.in_channels, data.image_size, data.num_classes) == ("fashion_mnist", 1, 28, 10)
    assert data.mean == (0.2860,) and data.std == (0.3530,)


def test_fashion_mnist_reads_raw_idx_in_torchvision_layout(tmp_path, no_debian):
    written = fake_fashion(tmp_path / "root" / "FashionMNIST" / "raw", compress=False, seed=5)
    data = load_fashion_mnist(tmp_path / "root", download=False, cache=tmp_path / "cache")
    assert torch.equal(data.train_x, written["train"][0]) and torch.equal(data.test_y, written["t10k"][1])


def test_debian_package_is_the_fallback_without_a_root(tmp_path, monkeypatch):
    debian = fake_fashion(tmp_path / "debian", seed=3)
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", tmp_path / "debian")
    data = load_fashion_mnist(None, download=False, cache=tmp_path / "cache")
    assert torch.equal(data.train_y, debian["train"][1])
    mine = fake_fashion(tmp_path / "root", seed=4)
    data = load_fashion_mnist(tmp_path / "root", download=False, cache=tmp_path / "cache")
    assert torch.equal(data.train_x, mine["train"][0])
    # the order README promises: the local data dir, then Debian's package, then a download
    local = fake_fashion(tmp_path / "cache", seed=6)
    data = load_fashion_mnist(None, download=False, cache=tmp_path / "cache")
    assert torch.equal(data.train_x, local["train"][0])


@pytest.mark.parametrize("root", ["missing", "empty", "incomplete"])
def test_a_given_root_is_the_only_place_looked_in(tmp_path, monkeypatch, root):
    """Issue 9: an explicit dataset.root that is missing or incomplete trained on the Debian copy."""
    fake_fashion(tmp_path / "debian", seed=3)
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", tmp_path / "debian")
    if root != "missing":
        (tmp_path / root).mkdir()
    if root == "incomplete":
        fake_fashion(tmp_path / root)
        (tmp_path / root / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError) as err:
        load_fashion_mnist(tmp_path / root, download=False, cache=tmp_path / "cache")
    message = str(err.value)
    assert "\n" not in message and f"dataset.root={tmp_path / root} does not hold" in message
    assert "debian" not in message and "download disabled" in message
    if root == "incomplete":
        assert "missing t10k-labels-idx1-ubyte[.gz];" in message


def test_downloads_cache_defaults_to_brn_data(tmp_path, no_debian, monkeypatch):
    written = fake_fashion(tmp_path / "env-cache" / "FashionMNIST" / "raw", seed=6)
    monkeypatch.setenv("BRN_DATA", str(tmp_path / "env-cache"))
    data = load_fashion_mnist(None, download=False)
    assert torch.equal(data.test_x, written["t10k"][0])


def test_missing_fashion_mnist_says_where_it_looked_and_how_to_get_it(tmp_path, no_debian, offline):
    with pytest.raises(DatasetNotFoundError) as err:
        load_fashion_mnist(None, download=True, cache=tmp_path / "cache")
    message = str(err.value)
    assert "\n" not in message
    for place in (tmp_path / "no-debian", tmp_path / "cache"):
        assert str(place) in message
    assert "apt-get install dataset-fashion-mnist" in message and "dataset.root=" in message
    assert "download to" in message and "Name or service not known" in message
    with pytest.raises(DatasetNotFoundError, match="download disabled"):
        load_fashion_mnist(None, download=False, cache=tmp_path / "cache")
    assert isinstance(err.value, DatasetError)


def test_truncated_and_corrupt_idx_files_are_named(tmp_path, no_debian):
    fake_fashion(tmp_path)
    images = tmp_path / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(images.read_bytes())

    def load():
        return load_fashion_mnist(tmp_path, download=False, cache=tmp_path / "cache")

    images.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte\.gz: .*truncated") as err:
        load()
    assert "\n" not in str(err.value) and "39100" in str(err.value)  # 50*28*28 - 100 bytes
    images.write_bytes(gzip.compress(b"\x12\x34" + raw[2:]))
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte\.gz: .*bad magic"):
        load()
    images.write_bytes(gzip.compress(b"\x00\x00\x0d" + raw[3:]))  # IDX of floats, not bytes
    with pytest.raises(DatasetError, match="bad magic"):
        load()
    images.write_bytes(gzip.compress(raw)[:30])  # a cut gzip stream
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte\.gz: cannot read"):
        load()
    images.write_bytes(gzip.compress(raw))
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    write_idx(labels, np.zeros(19, dtype=np.uint8), IDX_LABELS_MAGIC)  # 20 test images
    with pytest.raises(DatasetError, match=r"do not match .*t10k-labels"):
        load()


# --- CIFAR ------------------------------------------------------------------------------


def real_format(batch):
    """A batch pickled as the real CIFAR files are: protocol 2, numpy arrays under numpy
    1's module names (``numpy.core.multiarray._reconstruct``), labels a list of ints."""
    return pickle.dumps(batch, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def write_cifar(root, name, per_batch=4, seed=0, dumps=pickle.dumps):
    rng = np.random.default_rng(seed)
    key = b"labels" if name == "cifar10" else b"fine_labels"
    folder = root / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True)
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if name == "cifar10" else ["train", "test"]
    written = {}
    for f in files:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10 if name == "cifar10" else 100, per_batch).tolist()
        (folder / f).write_bytes(dumps({b"data": data, key: labels, b"batch_label": b"x",
                                        b"filenames": [b"%d.png" % i for i in range(per_batch)]}))
        written[f] = (torch.from_numpy(data.reshape(-1, 3, 32, 32)), torch.tensor(labels))
    return folder, files, written


@pytest.mark.parametrize("dumps", [pickle.dumps, real_format], ids=["protocol5", "real_format"])
@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_pickle_batches_read_back_exactly(tmp_path, name, dumps):
    folder, files, written = write_cifar(tmp_path, name, dumps=dumps)
    data = load_cifar(name, tmp_path, download=False, cache=tmp_path / "cache")
    train_files, test_file = files[:-1], files[-1]
    assert torch.equal(data.train_x, torch.cat([written[f][0] for f in train_files]))
    assert torch.equal(data.train_y, torch.cat([written[f][1] for f in train_files]))
    assert torch.equal(data.test_x, written[test_file][0]) and torch.equal(data.test_y, written[test_file][1])
    assert data.num_classes == (10 if name == "cifar10" else 100) and data.in_channels == 3
    assert data.image_size == 32 and data.name == name
    (folder / test_file).write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)})[:-5])
    with pytest.raises(DatasetError, match=f"{test_file}: cannot read"):
        load_cifar(name, tmp_path, download=False, cache=tmp_path / "cache")


class RunsCode:
    """Unpickled, calls ``os.system``: what a tampered CIFAR batch can do to a plain pickle.load."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize(("payload", "needle"), [
    (lambda marker: pickle.dumps({b"data": RunsCode(marker), b"labels": []}), "posix.system"),
    (lambda marker: b"cno_such_module\nloader\n.", "no_such_module.loader"),  # item 8: was a traceback
])
def test_a_cifar_pickle_naming_anything_but_data_is_refused_in_one_line(tmp_path, payload, needle):
    folder, _, _ = write_cifar(tmp_path, "cifar10")
    marker = tmp_path / "code-ran"
    (folder / "data_batch_2").write_bytes(payload(marker))
    with pytest.raises(DatasetError) as err:
        load_cifar("cifar10", tmp_path, download=False, cache=tmp_path / "cache")
    message = str(err.value)
    assert "\n" not in message and "data_batch_2" in message and needle in message
    assert not marker.exists()


def test_a_cifar_pickle_that_runs_code_stops_the_run_in_one_line(tmp_path):
    folder, _, _ = write_cifar(tmp_path, "cifar10")
    marker = tmp_path / "code-ran"
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": RunsCode(marker)}))
    done = subprocess.run([sys.executable, "-m", "brn_repro.train", "dataset=cifar10", f"dataset.root={tmp_path}",
                           "dataset.download=false", "logger=none", f"paths.runs={tmp_path / 'runs'}",
                           "hydra.output_subdir=null", f"hydra.run.dir={tmp_path}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and not marker.exists()
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "test_batch" in lines[0], lines
    assert not (tmp_path / "runs").exists()


def test_missing_cifar_is_one_line(tmp_path, offline):
    with pytest.raises(DatasetNotFoundError) as err:
        load_cifar("cifar100", tmp_path / "root", download=True, cache=tmp_path / "cache")
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "root") in message
    assert "cifar-100-python" in message and "failed" in message


# --- ImageFolder --------------------------------------------------------------------------


def write_pngs(root, colors):
    for split in ("train", "val"):
        for label, color in colors.items():
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((40, 40, 3), color, dtype=np.uint8)).save(folder / f"{i}.png")


def test_imagefolder_reads_pngs_with_their_classes(tmp_path):
    colors = {"cat": (30, 60, 90), "dog": (220, 200, 10)}
    write_pngs(tmp_path, colors)
    train, val = load_imagefolder(tmp_path, image_size=32)
    assert train.classes == ["cat", "dog"] and len(train) == len(val) == 4
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    for i, color in enumerate(colors.values()):
        x, y = val[2 * i]
        expected = (torch.tensor(color) / 255 - mean) / std
        assert y == i and x.shape == (3, 32, 32)
        assert torch.allclose(x, expected.view(3, 1, 1).expand(3, 32, 32), atol=1e-5)
        assert train[2 * i][0].shape == (3, 32, 32) and train[2 * i][1] == i
    splits = build_dataset("imagefolder", tmp_path, download=False, image_size=32)
    assert (splits.num_classes, splits.in_channels, splits.image_size) == (2, 3, 32)


def test_imagefolder_missing_or_empty_split_is_named(tmp_path):
    write_pngs(tmp_path, {"cat": (1, 2, 3)})
    (tmp_path / "val").rename(tmp_path / "validation")
    with pytest.raises(DatasetNotFoundError, match=r"val is missing"):
        load_imagefolder(tmp_path, image_size=32)
    (tmp_path / "validation").rename(tmp_path / "val")
    (tmp_path / "val" / "cat" / "0.png").unlink()
    (tmp_path / "val" / "cat" / "1.png").unlink()
    with pytest.raises(DatasetError, match="imagefolder .*cat") as err:
        load_imagefolder(tmp_path, image_size=32)
    assert "\n" not in str(err.value)
    with pytest.raises(DatasetNotFoundError, match="dataset.root"):
        load_imagefolder(None)


@pytest.mark.parametrize("loader_workers", [0, 1])
@pytest.mark.parametrize("bad", ["zero-byte PNG", "text file named .png"])
def test_an_unreadable_image_is_one_line_naming_it(tmp_path, monkeypatch, capsys, bad, loader_workers):
    """Issue 21.8: an image that does not decode, met in training (in the main process or a
    DataLoader worker), is one line naming the file and the fix, exit 2, not a traceback."""
    from test_faults import main

    write_pngs(tmp_path / "data", {"cat": (1, 2, 3), "dog": (4, 5, 6)})
    broken = tmp_path / "data" / "train" / "dog" / "1.png"
    broken.write_bytes(b"") if bad == "zero-byte PNG" else broken.write_text("not an image\n")
    argv = ["dataset=imagefolder", f"dataset.root={tmp_path / 'data'}", "dataset.image_size=16",
            f"dataset.loader_workers={loader_workers}", "model.width=4", "data.per_worker_batch=2",
            "data.workers=2", "train.steps=4", "train.eval_every=2", "train.threads=1", "train.progress=false",
            "logger=none", f"paths.runs={tmp_path / 'runs'}"]
    code, lines = main(argv, monkeypatch, capsys)
    why = "an empty file" if bad == "zero-byte PNG" else "not an image format PIL reads"
    assert code == 2 and lines == [f"error: imagefolder: {broken} is not a readable image ({why}); "
                                   "remove it or replace it with a readable one"], lines


def test_build_dataset_dispatches_and_names_bad_values(tmp_path, no_debian):
    fake_fashion(tmp_path)
    assert build_dataset("fashion_mnist", tmp_path, download=False, cache=tmp_path).num_classes == 10
    with pytest.raises(ValueError, match="'mnist'.*fashion_mnist, cifar10, cifar100, imagefolder"):
        build_dataset("mnist", tmp_path)


# --- samplers -----------------------------------------------------------------------------


def class_labels(n_per_class=30, classes=10):
    return torch.arange(classes).repeat_interleave(n_per_class)


def test_noniid_batches_have_the_promised_label_structure():
    labels = class_labels()
    sampler = NonIIDSampler(labels, workers=5, per_worker_batch=8, seed=0, labels_per_batch=2,
                            images_per_label=4)
    repeated_label, seen = False, torch.zeros(10, dtype=torch.bool)
    for _ in range(50):
        batch = sampler.next()
        assert batch.shape == (40,) and batch.dtype == torch.int64
        groups = labels[batch.view(5, 2, 4)]  # worker, label group, image
        assert (groups == groups[..., :1]).all()  # 4 images of one label in each group
        assert all(len(set(row.tolist())) == 4 for row in batch.view(-1, 4))  # distinct images
        repeated_label |= bool((groups[:, 0, 0] == groups[:, 1, 0]).any())
        seen[groups.flatten()] = True
    assert repeated_label  # labels are drawn with replacement: P(no repeat in 250) = 0.9^250
    assert seen.all()


def test_noniid_recipe_must_fill_the_per_worker_batch():
    with pytest.raises(ValueError) as err:
        build_sampler("noniid", class_labels(), 2, 32, 0, labels_per_batch=16, images_per_label=3)
    message = str(err.value)
    assert "\n" not in message
    for key in ("sampler.labels_per_batch", "sampler.images_per_label", "data.per_worker_batch"):
        assert key in message
    with pytest.raises(ValueError, match="sampler.name='shuffled'.*iid, noniid, noniid_split"):
        build_sampler("shuffled", class_labels(), 2, 32, 0)
    with pytest.raises(ValueError, match="images_per_label=1 must be at least 2") as err:
        build_sampler("noniid_split", class_labels(), 1, 3, 0, labels_per_batch=3, images_per_label=1)
    assert "\n" not in str(err.value)


def test_noniid_draws_only_labels_that_exist():
    labels = torch.tensor([0] * 5 + [3] * 5 + [7] * 5)  # classes 1, 2, 4-6 absent
    sampler = NonIIDSampler(labels, 4, 4, 0, labels_per_batch=2, images_per_label=2)
    drawn = labels[torch.cat([sampler.next() for _ in range(30)])]
    assert set(drawn.tolist()) == {0, 3, 7}


def split_norm_batch(labels_per_batch, images_per_label):
    """``RunConfig.norm_batch`` of a noniid_split run with this recipe."""
    sampler = SamplerConfig("noniid_split", labels_per_batch, images_per_label)
    return sampler.group_size(labels_per_batch * images_per_label)


@pytest.mark.parametrize("labels_per_batch,images_per_label", [(16, 2), (2, 4), (3, 3), (4, 5)])
def test_noniid_split_norm_batch_is_the_labels_per_batch(labels_per_batch, images_per_label):
    # The paper's control at 16 x 2: two halves of 16. For I images per label: I groups of L.
    assert split_norm_batch(labels_per_batch, images_per_label) == labels_per_batch
    unsplit = SamplerConfig("noniid", labels_per_batch, images_per_label)
    assert unsplit.group_size(labels_per_batch * images_per_label) == labels_per_batch * images_per_label


def one_image_from_each(group, draws):
    """Whether ``group`` is one image of each draw (a drawn label's images), one to one.
    A perfect matching, not a set intersection: a label drawn twice (with replacement)
    may hand both draws the same image."""
    if len(group) != len(draws):
        return False
    owner = [None] * len(draws)  # owner[k]: the position in group given to draw k

    def assign(i, seen):
        for k, images in enumerate(draws):
            if group[i] in images and k not in seen:
                seen.add(k)
                if owner[k] is None or assign(owner[k], seen):
                    owner[k] = i
                    return True
        return False

    return all(assign(i, set()) for i in range(len(group)))


@pytest.mark.parametrize("labels_per_batch,images_per_label", [(16, 2), (2, 4), (3, 3)])
def test_noniid_split_groups_hold_one_image_of_each_drawn_label(labels_per_batch, images_per_label):
    """The paper's split control: every normalization group (``norm_batch`` consecutive
    examples) holds exactly one image of each of the worker's drawn labels, and the
    worker's groups together are exactly its unsplit (noniid) draw."""
    labels, workers = class_labels(), 3
    size, group = labels_per_batch * images_per_label, split_norm_batch(labels_per_batch, images_per_label)
    split = build_sampler("noniid_split", labels, workers, size, 11,
                          labels_per_batch=labels_per_batch, images_per_label=images_per_label)
    plain = build_sampler("noniid", labels, workers, size, 11,
                          labels_per_batch=labels_per_batch, images_per_label=images_per_label)
    assert isinstance(split, NonIIDSplitSampler)
    for _ in range(20):
        batch, draw = split.next(), plain.next()
        assert batch.shape == draw.shape == (workers * size,)
        for w in range(workers):
            mine = batch[w * size:(w + 1) * size]
            # noniid lays a worker's draw out label by label: (drawn label, its images)
            drawn = draw[w * size:(w + 1) * size].view(labels_per_batch, images_per_label)
            assert sorted(mine.tolist()) == sorted(drawn.flatten().tolist())  # the same images
            groups = mine.view(-1, group)
            assert len(groups) == images_per_label
            for g in groups:
                assert one_image_from_each(g.tolist(), drawn.tolist())
                assert sorted(labels[g].tolist()) == sorted(labels[drawn[:, 0]].tolist())


def test_iid_covers_each_example_once_per_epoch_and_reshuffles():
    sampler = IIDSampler(class_labels(n_per_class=6), workers=2, per_worker_batch=5, seed=1)
    epochs = [torch.cat([sampler.next() for _ in range(6)]) for _ in range(2)]
    assert all(sorted(e.tolist()) == list(range(60)) for e in epochs)
    assert not torch.equal(epochs[0], epochs[1])
    with pytest.raises(ValueError, match="exceeds"):
        IIDSampler(class_labels(n_per_class=1), workers=4, per_worker_batch=4, seed=0)


@pytest.mark.parametrize("kind", ["iid", "noniid", "noniid_split"])
def test_sampler_resumes_to_the_identical_continuation(kind):
    labels = class_labels()

    def make(seed):
        return build_sampler(kind, labels, 3, 4, seed, labels_per_batch=2, images_per_label=2)

    sampler = make(seed=7)
    for _ in range(23):  # past an iid epoch boundary (300 / 12 = 25 steps)
        sampler.next()
    state = sampler.state_dict()
    ahead = [sampler.next() for _ in range(10)]
    restored = make(seed=99)
    restored.load_state_dict(state)
    assert all(torch.equal(a, restored.next()) for a in ahead)
    again = make(seed=7)
    assert torch.equal(torch.stack([again.next() for _ in range(33)])[23:], torch.stack(ahead))


# --- loader -------------------------------------------------------------------------------


def test_augmentation_identity_crop_windows_and_exact_flip():
    x = torch.arange(2 * 1 * 4 * 5, dtype=torch.float32).view(2, 1, 4, 5)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(augment(x, 0, False, g), x)
    padded = torch.nn.functional.pad(x, [2] * 4)
    windows = [padded[:, :, i:i + 4, j:j + 5] for i in range(5) for j in range(5)]
    offsets = set()
    for _ in range(30):
        cropped = augment(x, 2, False, g)
        assert cropped.shape == x.shape
        for b in range(2):  # every crop is a window of the zero-padded image
            hits = [k for k, w in enumerate(windows) if torch.equal(cropped[b], w[b])]
            assert hits
            offsets.update(hits)
    assert len(offsets) > 10  # random offsets, not one fixed window
    outcomes = {torch.equal(f, x[:1].flip(-1)) for f in (augment(x[:1], 0, True, g) for _ in range(30))}
    assert outcomes == {True, False}  # always x or exactly x reversed in width, both happen
    flipped = augment(x, 0, True, g)
    assert all(torch.equal(flipped[b], x[b]) or torch.equal(flipped[b], x[b].flip(-1)) for b in range(2))
    u8 = torch.randint(0, 256, (3, 3, 6, 6), dtype=torch.uint8)
    out = augment(u8, 1, True, torch.Generator().manual_seed(1))
    assert out.dtype == torch.uint8 and out.shape == u8.shape


def tiny_tensors(n_train=40, n_test=30, channels=3):
    g = torch.Generator().manual_seed(0)
    return DatasetTensors(
        name="tiny",
        train_x=torch.randint(0, 256, (n_train, channels, 8, 8), dtype=torch.uint8, generator=g),
        train_y=torch.arange(n_train) % 5,
        test_x=torch.randint(0, 256, (n_test, channels, 8, 8), dtype=torch.uint8, generator=g),
        test_y=torch.arange(n_test) % 5,
        num_classes=5, mean=(0.5, 0.25, 0.75)[:channels], std=(0.2, 0.5, 0.1)[:channels],
    )


def test_loader_normalizes_exactly_and_is_reproducible_from_the_seed():
    tensors = tiny_tensors()
    plain = InMemoryBatches(tensors)
    idx = torch.tensor([3, 0, 17])
    x, y = plain.train_batch(idx)
    expected = (tensors.train_x[idx].float() / 255 - torch.tensor([0.5, 0.25, 0.75]).view(1, 3, 1, 1)) \
        / torch.tensor([0.2, 0.5, 0.1]).view(1, 3, 1, 1)
    assert x.dtype == torch.float32 and torch.allclose(x, expected, atol=1e-5)
    assert torch.equal(y, tensors.train_y[idx])
    a, b = InMemoryBatches(tensors, 2, True, seed=3), InMemoryBatches(tensors, 2, True, seed=3)
    first = [a.train_batch(idx)[0] for _ in range(3)]
    assert all(torch.equal(f, b.train_batch(idx)[0]) for f in first)
    assert not torch.equal(first[0], x)  # augmentation is on
    state = a.state_dict()
    ahead = a.train_batch(idx)[0]
    resumed = InMemoryBatches(tensors, 2, True, seed=42)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.train_batch(idx)[0], ahead)


def test_evaluation_chunks_subsets_and_noniid_test_batches():
    tensors = tiny_tensors()
    batches = InMemoryBatches(tensors, crop_padding=2, flip=True)
    chunks = list(batches.test_batches(chunk=8))
    assert [len(c[1]) for c in chunks] == [8, 8, 8, 6]
    assert torch.equal(torch.cat([c[1] for c in chunks]), tensors.test_y)  # in order, no augmentation
    assert torch.equal(torch.cat([c[0] for c in chunks]), batches.batch(torch.arange(30))[0])
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(1234))
    assert torch.equal(fixed_subset_indices(40, 10), perm[:10])
    subset = torch.cat([y for _, y in batches.train_subset_batches(10, chunk=4)])
    assert torch.equal(subset, tensors.train_y[perm[:10]])
    test_perm = torch.randperm(30, generator=torch.Generator().manual_seed(1234))
    assert torch.equal(torch.cat([y for _, y in batches.test_batches(8, size=12)]),
                       tensors.test_y[test_perm[:12]])
    rows = noniid_test_indices(tensors.test_y, labels_per_batch=3, images_per_label=2, seed=5)
    assert rows.shape == (5, 6)  # 30 test examples fill 5 batches of 6
    pairs = tensors.test_y[rows].view(5, 3, 2)
    assert (pairs[..., 0] == pairs[..., 1]).all()  # 3 labels x 2 images each
    assert (rows.view(5, 3, 2)[..., 0] != rows.view(5, 3, 2)[..., 1]).all()  # two distinct images
    assert torch.equal(rows, noniid_test_indices(tensors.test_y, 3, 2, seed=5))
    assert torch.equal(rows[:2], noniid_test_indices(tensors.test_y, 3, 2, seed=5, batches=2))
    served = list(batches.noniid_test_batches(3, 2, seed=5))
    assert len(served) == 5 and torch.equal(served[0][1], tensors.test_y[rows[0]])


@pytest.mark.parametrize("eval_labels,eval_images", [(5, 4), (10, 2), (3, 3)])
def test_probe_test_batches_hold_eval_labels_distinct_labels_of_eval_images_each(eval_labels, eval_images):
    """The minibatch-statistics probe's batches (paper: 25 labels x 2 images): each is
    ``eval_labels`` different labels, ``eval_images`` different images of each."""
    labels = class_labels(n_per_class=12)  # 10 classes
    rows = noniid_test_indices(labels, eval_labels, eval_images, seed=3, batches=40)
    assert rows.shape == (40, eval_labels * eval_images)
    for row in rows:
        assert len(set(row.tolist())) == eval_labels * eval_images  # no image twice
        per_label = {}
        for label in labels[row].tolist():
            per_label[label] = per_label.get(label, 0) + 1
        assert len(per_label) == eval_labels and set(per_label.values()) == {eval_images}
    tensors = tiny_tensors(n_test=40)
    tensors.test_y = torch.arange(40) // 4  # 10 classes of 4 test images
    served = list(InMemoryBatches(tensors).noniid_test_batches(eval_labels, eval_images, batches=6))
    assert len(served) == 6
    assert all(len(set(y.tolist())) == eval_labels for _, y in served)


def test_probe_with_more_labels_than_the_test_set_has_fails_in_one_line():
    with pytest.raises(ValueError) as err:
        noniid_test_indices(class_labels(n_per_class=4), labels_per_batch=11, images_per_label=2)
    message = str(err.value)
    assert "train.minibatch_eval_labels=11" in message and "10" in message and "\n" not in message


# --- Fig 3 configs: the split control and the probe, as the paper ran them --------------------


def fig3_config(condition, *overrides, profile="quick"):
    """A resolved point of the fig3_noniid sweep (no data is read)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=fig3_noniid", f"profile={profile}",
                                           f"+experiment/conditions/fig3={condition}", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


def test_quick_fig3_split_normalizes_groups_of_one_image_per_label_and_probes_more_labels():
    config = fig3_config("bn_split")
    validate(config)
    sampler = config["sampler"]
    assert (sampler["labels_per_batch"], sampler["images_per_label"]) == (4, 8)  # the pilot's recipe
    assert config["data"]["per_worker_batch"] == 32
    assert RunConfig.parse(config).norm_batch == norm_options(RunConfig.parse(config))["per_worker_batch"] == 4
    # the probe runs on the non-i.i.d. runs only (the i.i.d. ones are fig2's records)
    noniid, iid = fig3_config("bn_noniid"), fig3_config("bn_iid")
    assert noniid["train"]["minibatch_stats_eval"] and not iid["train"]["minibatch_stats_eval"]
    train = noniid["train"]
    assert train["minibatch_eval_images"] == sampler["images_per_label"]
    assert sampler["labels_per_batch"] < train["minibatch_eval_labels"] <= 10
    for condition in ("bn_noniid", "brn_noniid", "bn_iid"):
        validate(fig3_config(condition))
    paper = fig3_config("bn_split", profile="paper")
    validate(paper)
    assert RunConfig.parse(paper).norm_batch == 16  # the paper's two halves of 16


@pytest.mark.parametrize("overrides,needles", [
    (["recipe.noniid.eval_images=3"], ["train.minibatch_eval_images=3", "sampler.images_per_label=8"]),
    (["recipe.noniid.eval_labels=4"], ["train.minibatch_eval_labels=4", "sampler.labels_per_batch=4"]),
    (["recipe.noniid.eval_labels=1"], ["train.minibatch_eval_labels=1", "recipe.noniid.eval_labels"]),
    (["recipe.noniid.eval_labels=11"], ["train.minibatch_eval_labels=11", "10 classes"]),
])
@pytest.mark.parametrize("condition", ["bn_noniid", "brn_noniid"])
def test_probe_mistakes_are_one_line_config_errors(condition, overrides, needles):
    with pytest.raises(ConfigError) as err:
        validate(fig3_config(condition, *overrides))
    message = str(err.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message


def test_split_with_one_image_per_label_is_a_one_line_config_error():
    config = fig3_config("bn_split", "recipe.noniid.images_per_label=1", "recipe.noniid.labels_per_batch=8",
                         "recipe.noniid.eval_images=1", "recipe.noniid.eval_labels=9",
                         "dataset=cifar100")
    with pytest.raises(ConfigError) as err:
        validate(config)
    assert "sampler.images_per_label=1" in str(err.value) and "\n" not in str(err.value)


def test_probe_recipe_is_only_checked_when_the_probe_is_on():
    validate(fig3_config("bn_noniid", "recipe.noniid.eval_images=2", "recipe.noniid.eval_labels=2",
                         "train.minibatch_stats_eval=false"))
    # i.i.d. training has no label structure to keep; only the test set's classes bound the probe
    validate(fig3_config("bn_iid", "recipe.noniid.eval_images=2", "recipe.noniid.eval_labels=2"))
    validate(fig3_config("bn_iid", "recipe.noniid.eval_labels=11"))  # its probe is off
    with pytest.raises(ConfigError, match="train.minibatch_eval_labels=11"):
        validate(fig3_config("bn_iid", "recipe.noniid.eval_labels=11", "train.minibatch_stats_eval=true"))


def test_probe_labels_beyond_an_imagefolders_classes_fail_before_training(tmp_path):
    """An ImageFolder's classes are known only once its folders are read: the data
    pipeline draws a probe batch up front, so the mistake is one line before step 1."""
    write_pngs(tmp_path, {"cat": (1, 2, 3), "dog": (4, 5, 6)})  # 2 classes, 2 images each
    config = fig3_config("bn_noniid", f"dataset.root={tmp_path}", "dataset.image_size=32",
                         "dataset.loader_workers=0", "recipe.noniid.labels_per_batch=1",
                         "recipe.noniid.images_per_label=2", "recipe.noniid.eval_labels=3",
                         "recipe.noniid.eval_images=2", "recipe.global_batch=2", profile="paper")
    validate(config)  # the classes are not known to the config
    with pytest.raises(ValueError) as err:
        TrainingData(RunConfig.parse(config))
    assert "train.minibatch_eval_labels=3" in str(err.value) and "\n" not in str(err.value)
    config["train"]["minibatch_eval_labels"] = 2
    TrainingData(RunConfig.parse(config))


def test_train_size_is_a_balanced_subset_the_same_for_every_seed(tmp_path, tiny_fashion_mnist):
    from tests.test_train import make_config

    full = TrainingData(RunConfig.parse(make_config(tmp_path, tiny_fashion_mnist)))
    seen = []
    for seed in (0, 1):
        config = make_config(tmp_path, tiny_fashion_mnist, "data.train_size=100", f"seed={seed}")
        data = TrainingData(RunConfig.parse(config))
        assert torch.bincount(data.train_labels, minlength=10).tolist() == [10] * 10
        seen.append(data.tensors.train_x)
        # every training batch is drawn from the subset
        subset = {bytes(img.numpy()) for img in data.tensors.train_x}
        assert len(full.tensors.train_x) == 600 and len(subset) <= 100
    assert torch.equal(seen[0], seen[1])
    # the subset's images are images of the full set, with their own labels
    rows = {bytes(img.numpy()): int(y) for img, y in zip(full.tensors.train_x, full.train_labels, strict=True)}
    assert all(rows[bytes(img.numpy())] == int(y) for img, y in zip(seen[0], data.train_labels, strict=True))


@pytest.mark.parametrize(("size", "needle"), [(105, "not a multiple of the 10 classes"),
                                              (1000, "which has")])
def test_train_size_the_set_cannot_give_is_one_line(tmp_path, tiny_fashion_mnist, size, needle):
    from tests.test_train import make_config

    with pytest.raises(ValueError, match=f"data.train_size={size}") as err:
        TrainingData(RunConfig.parse(make_config(tmp_path, tiny_fashion_mnist, f"data.train_size={size}")))
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_resize_shrinks_by_averaging_each_block_and_runs_train_on_it(tmp_path, tiny_fashion_mnist):
    from brn_repro.data.pipeline import resize
    from tests.test_train import make_config

    images = torch.tensor([[[[0, 10, 20, 30], [2, 12, 22, 33], [100, 100, 0, 0], [101, 100, 1, 2]]]],
                          dtype=torch.uint8)
    # 2x2 block means: (0+10+2+12)/4 = 6, (20+30+22+33)/4 = 26.25, 100.25, 0.75 -> rounded
    assert resize(images, 2).tolist() == [[[[6, 26], [100, 1]]]]
    data = TrainingData(RunConfig.parse(make_config(tmp_path, tiny_fashion_mnist, "dataset.image_size=14")))
    full = TrainingData(RunConfig.parse(make_config(tmp_path, tiny_fashion_mnist)))
    assert data.image_size == 14 and data.tensors.test_x.shape[-2:] == (14, 14)
    assert torch.equal(data.tensors.train_x, resize(full.tensors.train_x, 14))


def test_recipe_subset_batches_regroup_the_training_subset_by_the_recipe():
    """The groups batch_noise_noniid measures: whole groups of labels x images drawn from the
    fixed training subset, each group at most ``labels`` labels of ``images`` images each."""
    tensors = tiny_tensors(n_train=40)
    tensors.train_y = torch.arange(40) % 10  # 10 classes of 4 training images
    batches = InMemoryBatches(tensors)
    served = list(batches.recipe_subset_batches(40, labels_per_batch=2, images_per_label=2, chunk=9))
    sizes = [len(y) for _, y in served]
    assert sizes == [8, 8, 8, 8, 8] and sum(sizes) == 40  # whole groups of 4 per chunk (9 -> 8)
    for _, y in served:
        for group in y.view(-1, 2, 2):
            assert (group[:, 0] == group[:, 1]).all()  # 2 images of each drawn label
    images = torch.cat([x for x, _ in served])
    assert torch.equal(images, torch.cat([x for x, _ in batches.recipe_subset_batches(40, 2, 2, chunk=9)]))
