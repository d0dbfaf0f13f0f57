"""ImageNet-style folders (ImageNet, Imagenette, Tiny ImageNet): ``root/train/<class>/*``
and ``root/val/<class>/*``, streamed through a DataLoader with worker processes."""

from __future__ import annotations

from pathlib import Path

from brn_repro.data.sources import DatasetError, DatasetNotFoundError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def load_imagefolder(root: str | Path | None, image_size: int = 224, crop_padding: int = 0,
                     flip: bool = True):
    """(train, val) torchvision ImageFolder datasets with their transforms."""
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    if not root or str(root) == "???":
        raise DatasetNotFoundError("dataset=imagefolder needs dataset.root=/path/with/train/and/val "
                                   "class folders (ImageNet, Imagenette, Tiny ImageNet)")
    root = Path(root)
    for split in ("train", "val"):
        folder = root / split
        if not folder.is_dir() or not any(p.is_dir() for p in folder.iterdir()):
            raise DatasetNotFoundError(f"imagefolder: {folder} is missing or has no class folders; "
                                       f"fix: dataset.root= a directory with train/ and val/ class folders")
    normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = [T.RandomResizedCrop(image_size)]
    if flip:
        train_tf.append(T.RandomHorizontalFlip())
    train_tf += [T.ToTensor(), normalize]
    val_tf = T.Compose([T.Resize(int(image_size * 256 / 224)), T.CenterCrop(image_size),
                        T.ToTensor(), normalize])
    try:
        train = ImageFolder(str(root / "train"), T.Compose(train_tf))
        val = ImageFolder(str(root / "val"), val_tf, allow_empty=False)
    except (FileNotFoundError, OSError) as err:
        raise DatasetError(f"imagefolder {root}: {str(err).splitlines()[0]}") from None
    if train.classes != val.classes:
        raise DatasetError(f"imagefolder {root}: train/ has {len(train.classes)} classes, val/ has "
                           f"{len(val.classes)}; they must list the same class folders")
    return train, val
