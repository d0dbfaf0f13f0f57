"""ImageNet-style folders (ImageNet, Imagenette, Tiny ImageNet): ``root/train/<class>/*``
and ``root/val/<class>/*``.

These are too big for memory, so unlike the other sources they stream: the
datasets decode and transform one image at a time and are meant for a torch
DataLoader with worker processes. Augmentation is the standard ImageNet one
(RandomResizedCrop + flip for train, Resize + CenterCrop for val), applied in
the workers instead of on tensors. An image that does not decode is met when it is
drawn, in training or evaluation: one line naming it (reading every image up front
would cost an ImageNet run minutes of its start).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from brn_repro.data.errors import DatasetError, DatasetNotFoundError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class ImageFolderSplits:
    """The streamed counterpart of ``DatasetTensors``: two ImageFolder datasets
    whose items are already-normalized float tensors."""

    name: str
    train: object  # torchvision.datasets.ImageFolder
    val: object
    num_classes: int
    image_size: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    in_channels: int = 3


class UnreadableImage(DatasetError):
    """An image file that does not decode; one line naming it. Raised in a DataLoader
    worker, it comes back as ``UnreadableImage(<the worker's traceback>)``, whose last
    line is the original's: that line is kept."""

    def __init__(self, message: str):
        last = (message.strip().splitlines() or [""])[-1]
        super().__init__(last.removeprefix(f"{__name__}.{type(self).__qualname__}: "))


def load_image(path: str) -> Any:
    """torchvision's image loader, with a file that does not decode as one line naming it."""
    from torchvision.datasets.folder import default_loader

    try:
        return default_loader(path)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:  # PIL's kinds of bad file
        raise UnreadableImage(f"imagefolder: {path} is not a readable image ({_why(path, err)}); remove it or "
                              "replace it with a readable one") from None


def _why(path: str, err: Exception) -> str:
    if isinstance(err, UnidentifiedImageError):  # opened, but no format knows it
        return "an empty file" if os.path.getsize(path) == 0 else "not an image format PIL reads"
    return (str(err).splitlines() or [type(err).__name__])[0]


def _check_split(folder: Path) -> None:
    if not folder.is_dir():
        raise DatasetNotFoundError(f"imagefolder: {folder} is missing; fix: dataset.root= a "
                                   "directory with train/ and val/ class folders")
    if not any(p.is_dir() for p in folder.iterdir()):
        raise DatasetNotFoundError(f"imagefolder: {folder} has no class folders; fix: dataset.root= "
                                   "a directory with train/<class>/*.jpg and val/<class>/*.jpg")


def load_imagefolder(root: str | Path | None, image_size: int = 224, flip: bool = True):
    """(train, val) torchvision ImageFolder datasets with their transforms."""
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    if not root or str(root) == "???":
        raise DatasetNotFoundError("dataset=imagefolder needs dataset.root=/path/with/train/and/val "
                                   "class folders (ImageNet, Imagenette, Tiny ImageNet)")
    root = Path(root)
    for split in ("train", "val"):
        _check_split(root / split)
    normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = [T.RandomResizedCrop(image_size)]
    if flip:
        train_tf.append(T.RandomHorizontalFlip())
    train_tf += [T.ToTensor(), normalize]
    # The usual 256 -> 224 resize-then-center-crop ratio, at any size.
    val_tf = T.Compose([T.Resize(int(image_size * 256 / 224)), T.CenterCrop(image_size),
                        T.ToTensor(), normalize])
    try:
        train = ImageFolder(str(root / "train"), T.Compose(train_tf), loader=load_image)
        val = ImageFolder(str(root / "val"), val_tf, loader=load_image)
    except (FileNotFoundError, OSError) as err:  # e.g. a class folder with no images
        raise DatasetError(f"imagefolder {root}: {str(err).splitlines()[0]}") from None
    if train.classes != val.classes:
        raise DatasetError(f"imagefolder {root}: train/ has {len(train.classes)} classes, val/ has "
                           f"{len(val.classes)}; they must list the same class folders")
    return train, val


def load_imagefolder_splits(root: str | Path | None, image_size: int = 224,
                            flip: bool = True) -> ImageFolderSplits:
    """``load_imagefolder`` with the facts a model and a sampler need alongside."""
    train, val = load_imagefolder(root, image_size=image_size, flip=flip)
    return ImageFolderSplits(name="imagefolder", train=train, val=val,
                             num_classes=len(train.classes), image_size=image_size)
