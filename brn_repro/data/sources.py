"""Where datasets come from, read into memory as uint8 tensors.

Fashion-MNIST is the offline default, looked for in this order: ``dataset.root``,
Debian's ``dataset-fashion-mnist`` package (/usr/share/datasets/fashion-mnist),
then torchvision's download. CIFAR-10/100: a local copy of the python pickle
batches, then torchvision's download. Each file is checked as it is read, so a
truncated or corrupt file is a one-line ``DatasetError`` naming it.
"""

from __future__ import annotations

import gzip
import pickle
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = {
    "train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte",
}
# Per-channel mean/std of the training sets (on the 0-1 scale), for normalization.
STATS = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


class DatasetError(RuntimeError):
    """A dataset that is there but cannot be read; one line naming the file."""


class DatasetNotFoundError(DatasetError):
    """A dataset that is nowhere; one line naming where it looked and how to get it."""


@dataclass
class DatasetTensors:
    name: str
    train_x: torch.Tensor  # uint8 (N, C, H, W)
    train_y: torch.Tensor  # int64 (N,)
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def in_channels(self) -> int:
        return self.train_x.shape[1]

    @property
    def image_size(self) -> int:
        return self.train_x.shape[-1]


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not) as a uint8 array, with its header checked."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise DatasetError(f"{path}: cannot read ({err}); delete it and get the dataset again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DatasetError(f"{path}: not an IDX file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DatasetError(f"{path}: holds {len(raw) - header} bytes of data, the header says "
                           f"{expected} {shape}; the file is truncated or corrupt")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find_idx(directory: Path) -> dict[str, Path] | None:
    found = {}
    for key, stem in FASHION_FILES.items():
        for candidate in (directory / f"{stem}.gz", directory / stem,
                          directory / "FashionMNIST" / "raw" / f"{stem}.gz",
                          directory / "FashionMNIST" / "raw" / stem):
            if candidate.exists():
                found[key] = candidate
                break
        else:
            return None
    return found


def _from_idx(files: dict[str, Path]) -> DatasetTensors:
    arrays = {key: read_idx(path) for key, path in files.items()}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DatasetError(f"{files[f'{split}_x']}: {x.shape} images do not match "
                               f"{y.shape} labels in {files[f'{split}_y']}")
        if y.max(initial=0) > 9:
            raise DatasetError(f"{files[f'{split}_y']}: label {y.max()} outside 0-9")
    return DatasetTensors(
        "fashion_mnist",
        torch.from_numpy(arrays["train_x"].copy()).unsqueeze(1),
        torch.from_numpy(arrays["train_y"].astype(np.int64)),
        torch.from_numpy(arrays["test_x"].copy()).unsqueeze(1),
        torch.from_numpy(arrays["test_y"].astype(np.int64)),
        10, *STATS["fashion_mnist"],
    )


def fashion_mnist_places(root: str | Path | None, cache: str | Path = "data") -> list[Path]:
    """Where Fashion-MNIST is looked for, in order (the download goes to ``cache``)."""
    return ([Path(root)] if root else []) + [DEBIAN_FASHION_MNIST, Path(cache)]


def find_fashion_mnist(root: str | Path | None, cache: str | Path = "data") -> dict[str, Path] | None:
    for directory in fashion_mnist_places(root, cache):
        files = _find_idx(directory)
        if files:
            return files
    return None


def load_fashion_mnist(root: str | Path | None, download: bool = True,
                       cache: str | Path = "data") -> DatasetTensors:
    looked = [str(p) for p in fashion_mnist_places(root, cache)]
    files = find_fashion_mnist(root, cache)
    if files:
        return _from_idx(files)
    reason = "download=false"
    if download:
        try:
            import torchvision

            torchvision.datasets.FashionMNIST(str(cache), train=True, download=True)
            torchvision.datasets.FashionMNIST(str(cache), train=False, download=True)
            files = _find_idx(Path(cache))
            if files:
                return _from_idx(files)
            reason = f"torchvision download to {cache} left no IDX files"
        except Exception as err:  # noqa: BLE001 - any download failure becomes the one line below
            reason = f"torchvision download to {cache} failed: {str(err).splitlines()[0][:120]}"
    raise DatasetNotFoundError(
        f"Fashion-MNIST not found (looked in: {', '.join(looked)}; {reason}); fix: "
        "apt-get install dataset-fashion-mnist, or make data on a machine with internet, "
        "or dataset.root=/path/to/the/idx/files"
    )


def _unpickle(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            return pickle.load(f, encoding="bytes")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as err:
        raise DatasetError(f"{path}: cannot read the CIFAR batch ({err}); the file is "
                           "truncated or corrupt") from None


def _cifar_arrays(paths: list[Path], label_key: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for path in paths:
        batch = _unpickle(path)
        if b"data" not in batch or label_key not in batch:
            raise DatasetError(f"{path}: not a CIFAR batch (no {label_key.decode()} / data)")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(batch[label_key]):
            raise DatasetError(f"{path}: data of shape {data.shape} is not N x 3072 with N labels")
        xs.append(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()))
        ys.append(torch.tensor(batch[label_key], dtype=torch.int64))
    return torch.cat(xs), torch.cat(ys)


def _cifar_files(name: str, directory: Path) -> tuple[list[Path], list[Path]] | None:
    if name == "cifar10":
        base = directory / "cifar-10-batches-py"
        train = [base / f"data_batch_{i}" for i in range(1, 6)]
        test = [base / "test_batch"]
    else:
        base = directory / "cifar-100-python"
        train, test = [base / "train"], [base / "test"]
    return (train, test) if all(p.exists() for p in train + test) else None


def load_cifar(name: str, root: str | Path | None, download: bool = True,
               cache: str | Path = "data") -> DatasetTensors:
    classes, label_key = (10, b"labels") if name == "cifar10" else (100, b"fine_labels")
    looked = []
    for directory in ([Path(root)] if root else []) + [Path(cache)]:
        looked.append(str(directory))
        files = _cifar_files(name, directory)
        if files:
            break
    else:
        files, reason = None, "download=false"
        if download:
            try:
                import torchvision

                cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
                cls(str(cache), train=True, download=True)
                files = _cifar_files(name, Path(cache))
            except Exception as err:  # noqa: BLE001
                reason = f"torchvision download to {cache} failed: {str(err).splitlines()[0][:120]}"
        if files is None:
            raise DatasetNotFoundError(
                f"{name} not found (looked in: {', '.join(looked)}; {reason}); fix: dataset.root="
                f"/path/containing/{'cifar-10-batches-py' if name == 'cifar10' else 'cifar-100-python'}"
                ", or make data DATASET=" + name + " on a machine with internet"
            )
    train_x, train_y = _cifar_arrays(files[0], label_key)
    test_x, test_y = _cifar_arrays(files[1], label_key)
    return DatasetTensors(name, train_x, train_y, test_x, test_y, classes, *STATS[name])
