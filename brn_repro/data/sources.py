"""Where datasets come from, read into memory as uint8 tensors.

Fashion-MNIST is the offline default, looked for in the local data dir (the
cache, ``paths.data``), then Debian's ``dataset-fashion-mnist`` package
(/usr/share/datasets/fashion-mnist), then torchvision's download into the cache.
CIFAR-10/100: a copy of the python pickle batches in the cache dir, then
torchvision's download. A ``dataset.root`` that is given is the only place
looked in (and where a download goes): training on another copy than the one
asked for would be a silent mistake, so a missing or incomplete root is an error.
Each file is checked as it is read, so a truncated or corrupt file is
a one-line ``DatasetError`` naming it, not a numpy or pickle traceback deep in a
sweep's log. CIFAR's pickles are read by an unpickler that builds only arrays and
plain data (:class:`CifarUnpickler`): a file that names anything else, code or a
missing module, is refused in one line before anything in it runs.
``build_dataset`` picks the source from ``dataset.name``.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brn_repro.data.errors import DatasetError, DatasetNotFoundError
from brn_repro.dataset_facts import DATASET_NAMES, NUM_CLASSES, STATS

# A module constant (not a default argument) so tests can point it at a tmp dir.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
# Where downloads go when no cache is passed: $BRN_DATA, else data/ in the cwd.
CACHE_ENV = "BRN_DATA"
FASHION_FILES = {
    "train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte",
}
CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}

GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class DatasetTensors:
    """A whole dataset in memory: small enough that a batch is a tensor gather."""

    name: str
    train_x: torch.Tensor  # uint8 (N, C, H, W)
    train_y: torch.Tensor  # int64 (N,)
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]  # per channel, on the 0-1 scale
    std: tuple[float, ...]

    @property
    def in_channels(self) -> int:
        return self.train_x.shape[1]

    @property
    def image_size(self) -> int:
        return self.train_x.shape[-1]


def default_cache() -> Path:
    """Where downloads go: ``$BRN_DATA`` if set, else ``data/`` in the cwd."""
    return Path(os.environ.get(CACHE_ENV) or "data")


def _short_reason(err: BaseException) -> str:
    """An exception as one short line: torchvision puts the cause on its last line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
    text = lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}"
    return text[:160]


# --- IDX (Fashion-MNIST) ----------------------------------------------------------


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file of unsigned bytes (gzipped or raw, told apart by content) as a
    uint8 array, with its magic number and declared size checked."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == GZIP_MAGIC:
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise DatasetError(f"{path}: cannot read, truncated or corrupt gzip ({_short_reason(err)}); "
                           "delete it and get the dataset again") from None
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08" or raw[3] == 0:
        raise DatasetError(f"{path}: not an IDX file of unsigned bytes (bad magic number "
                           f"{raw[:4].hex() or 'empty file'}, expected 0000080N)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header ({len(raw)} bytes for {ndim} dims)")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DatasetError(f"{path}: holds {len(raw) - header} bytes of data, the header says "
                           f"{expected} {tuple(shape)}; the file is truncated or corrupt")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find_idx(directory: Path) -> dict[str, Path] | None:
    """The four IDX files directly in ``directory`` or in torchvision's
    ``FashionMNIST/raw/`` under it; None unless all four are there."""
    found = {}
    for key, stem in FASHION_FILES.items():
        for folder in (directory, directory / "FashionMNIST" / "raw"):
            candidates = [folder / f"{stem}.gz", folder / stem]
            hit = next((c for c in candidates if c.is_file()), None)
            if hit:
                found[key] = hit
                break
        else:
            return None
    return found


def _from_idx(files: dict[str, Path]) -> DatasetTensors:
    arrays = {key: read_idx(path) for key, path in files.items()}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DatasetError(f"{files[f'{split}_x']}: images of shape {x.shape} do not match "
                               f"labels of shape {y.shape} in {files[f'{split}_y']}")
        if y.max(initial=0) > 9:
            raise DatasetError(f"{files[f'{split}_y']}: label {y.max()} outside 0-9")
    mean, std = STATS["fashion_mnist"]
    return DatasetTensors(
        name="fashion_mnist",
        train_x=torch.from_numpy(arrays["train_x"].copy()).unsqueeze(1),
        train_y=torch.from_numpy(arrays["train_y"].astype(np.int64)),
        test_x=torch.from_numpy(arrays["test_x"].copy()).unsqueeze(1),
        test_y=torch.from_numpy(arrays["test_y"].astype(np.int64)),
        num_classes=NUM_CLASSES["fashion_mnist"], mean=mean, std=std,
    )


def fashion_mnist_places(root: str | Path | None, cache: str | Path | None = None) -> list[Path]:
    """Where Fashion-MNIST is looked for, in order (a download goes to the first):
    ``root`` alone when it is given, else the local data dir, then Debian's package."""
    if root:
        return [Path(root)]
    return [default_cache() if cache is None else Path(cache), DEBIAN_FASHION_MNIST]


def find_fashion_mnist(root: str | Path | None,
                       cache: str | Path | None = None) -> dict[str, Path] | None:
    """The IDX files of the first place holding all four, without reading them."""
    for directory in fashion_mnist_places(root, cache):
        files = _find_idx(directory)
        if files:
            return files
    return None


def load_fashion_mnist(root: str | Path | None, download: bool = True,
                       cache: str | Path | None = None) -> DatasetTensors:
    """Fashion-MNIST from ``root`` (only there, when given: a download goes there),
    else the cache (the local data dir), Debian's package, or a download into the cache;
    ``DatasetNotFoundError`` (one line: where it looked, how to get it)."""
    places = fashion_mnist_places(root, cache)
    cache = places[0]
    looked = [str(p) for p in places]
    files = find_fashion_mnist(root, cache)
    if files:
        return _from_idx(files)
    reason = "download disabled (dataset.download=false)"
    if download:
        try:
            import torchvision

            torchvision.datasets.FashionMNIST(str(cache), train=True, download=True)
            torchvision.datasets.FashionMNIST(str(cache), train=False, download=True)
            files = _find_idx(cache)
            if files:
                return _from_idx(files)
            reason = f"torchvision download to {cache} left no IDX files"
        except Exception as err:  # noqa: BLE001 - any download failure becomes the one line below
            reason = f"torchvision download to {cache} failed: {_short_reason(err)}"
    if root:
        raise DatasetNotFoundError(
            f"dataset.root={root} does not hold Fashion-MNIST (missing {_missing_idx(Path(root))}; {reason}); "
            "fix: point dataset.root at the folder with the four IDX files, or leave it unset to use "
            "the Debian package or a download")
    raise DatasetNotFoundError(
        f"Fashion-MNIST not found (looked in: {', '.join(looked)}; {reason}); fix: "
        "apt-get install dataset-fashion-mnist, or run make data on a machine with internet, "
        "or pass dataset.root=/path/to/the/idx/files"
    )


def _missing_idx(directory: Path) -> str:
    if not directory.is_dir():
        return "the folder itself"
    missing = [stem for stem in FASHION_FILES.values()
               if not any((f / n).is_file() for f in (directory, directory / "FashionMNIST" / "raw")
                          for n in (f"{stem}.gz", stem))]
    return ", ".join(f"{m}[.gz]" for m in missing)


# --- CIFAR python pickles -----------------------------------------------------------


# What a CIFAR batch's pickle may name: numpy arrays (real CIFAR files, written by Python
# 2, use numpy 1's module names; numpy 2 writes numpy._core; protocol 5 uses _frombuffer),
# and bytes as Python 3 writes them in protocol 2. A pickle can call anything it names.
CIFAR_PICKLE_GLOBALS = frozenset({
    *((f"numpy.{core}.multiarray", name) for core in ("core", "_core") for name in ("_reconstruct", "scalar")),
    *((f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
})


class CifarUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that builds only what a CIFAR batch holds (dicts, lists, bytes,
    numbers, numpy arrays): any other name is refused before it is imported or called."""

    def __init__(self, path: Path, file: Any) -> None:
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in CIFAR_PICKLE_GLOBALS:
            raise DatasetError(f"{self.path}: refused: it names {module}.{name}, which a CIFAR batch never "
                               "holds (a pickle runs what it names; nothing was run); get the dataset again "
                               "from its source")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            batch = CifarUnpickler(path, f).load()
    except DatasetError:
        raise
    except Exception as err:  # noqa: BLE001 - only data is built, so any failure is a damaged file
        raise DatasetError(f"{path}: cannot read the CIFAR batch ({_short_reason(err)}); the file "
                           "is truncated or corrupt") from None
    if not isinstance(batch, dict):
        raise DatasetError(f"{path}: not a CIFAR batch (a {type(batch).__name__}, not a dict)")
    return batch


def _cifar_arrays(paths: list[Path], label_key: bytes,
                  num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for path in paths:
        batch = _unpickle(path)
        if b"data" not in batch or label_key not in batch:
            raise DatasetError(f"{path}: not a CIFAR batch (no {label_key.decode()} / data)")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[label_key], dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (len(data),):
            raise DatasetError(f"{path}: data of shape {data.shape} with {labels.size} labels is "
                               "not N x 3072 with N labels")
        if labels.size and not 0 <= labels.min() <= labels.max() < num_classes:
            raise DatasetError(f"{path}: labels outside 0-{num_classes - 1}")
        xs.append(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()))
        ys.append(torch.from_numpy(labels))
    return torch.cat(xs), torch.cat(ys)


def _cifar_files(name: str, directory: Path) -> tuple[list[Path], list[Path]] | None:
    base = directory / CIFAR_FOLDERS[name]
    if name == "cifar10":
        train = [base / f"data_batch_{i}" for i in range(1, 6)]
        test = [base / "test_batch"]
    else:
        train, test = [base / "train"], [base / "test"]
    return (train, test) if all(p.is_file() for p in train + test) else None


def load_cifar(name: str, root: str | Path | None, download: bool = True,
               cache: str | Path | None = None) -> DatasetTensors:
    """CIFAR-10 (``labels``) or CIFAR-100 (``fine_labels``) from the python pickle
    batches under ``root`` or the cache, else torchvision's download into the cache."""
    if name not in CIFAR_FOLDERS:
        raise ValueError(f"load_cifar name={name!r}; use cifar10 or cifar100")
    cache = Path(root) if root else default_cache() if cache is None else Path(cache)
    classes, label_key = NUM_CLASSES[name], b"labels" if name == "cifar10" else b"fine_labels"
    places = [cache]  # dataset.root alone when given (a download goes there too)
    files = next((f for f in (_cifar_files(name, p) for p in places) if f), None)
    if files is None:
        reason = "download disabled (dataset.download=false)"
        if download:
            try:
                import torchvision

                cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
                cls(str(cache), train=True, download=True)
                files = _cifar_files(name, cache)
                reason = f"torchvision download to {cache} left no {CIFAR_FOLDERS[name]}"
            except Exception as err:  # noqa: BLE001 - any download failure becomes one line
                reason = f"torchvision download to {cache} failed: {_short_reason(err)}"
        if files is None:
            raise DatasetNotFoundError(
                f"{name} not found (looked in: {', '.join(map(str, places))}; {reason}); fix: "
                f"pass dataset.root=/path/containing/{CIFAR_FOLDERS[name]}, or run "
                f"make data DATASET={name} on a machine with internet"
            )
    train_x, train_y = _cifar_arrays(files[0], label_key, classes)
    test_x, test_y = _cifar_arrays(files[1], label_key, classes)
    mean, std = STATS[name]
    return DatasetTensors(name=name, train_x=train_x, train_y=train_y, test_x=test_x,
                          test_y=test_y, num_classes=classes, mean=mean, std=std)


# --- by name ------------------------------------------------------------------------


def build_dataset(name: str, root: str | Path | None = None, download: bool = True,
                  cache: str | Path | None = None, image_size: int = 224, flip: bool = True):
    """``dataset.name`` -> its data: ``DatasetTensors`` for the in-memory sets,
    ``ImageFolderSplits`` (streamed) for ``imagefolder``."""
    if name == "fashion_mnist":
        return load_fashion_mnist(root, download, cache)
    if name in CIFAR_FOLDERS:
        return load_cifar(name, root, download, cache)
    if name == "imagefolder":
        from brn_repro.data.imagefolder import load_imagefolder_splits

        return load_imagefolder_splits(root, image_size=image_size, flip=flip)
    raise ValueError(f"dataset.name={name!r} is not a dataset; use one of {', '.join(DATASET_NAMES)}")
