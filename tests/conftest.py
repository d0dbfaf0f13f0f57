import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def write_idx(path, array):
    """Write ``array`` (uint8) as an IDX file, gzipped when the name ends in .gz."""
    import gzip
    import struct

    import numpy as np

    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def learnable_images(n, num_classes=10, size=28, seed=0):
    """Images whose class is a bright 6x6 patch at a class-specific place, plus noise:
    easy for a small CNN to learn, impossible to guess (chance is 1/num_classes)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, size, size)).astype(np.uint8)
    for i, label in enumerate(labels):
        row, col = divmod(int(label), 4)
        images[i, 2 + row * 8: 8 + row * 8, 2 + col * 6: 8 + col * 6] = 230
    return images, labels


@pytest.fixture(scope="session")
def tiny_fashion_mnist(tmp_path_factory):
    """A tiny, learnable Fashion-MNIST in the real IDX gz format (600 train, 300 test)."""
    root = tmp_path_factory.mktemp("fashion")
    for split, n, seed in (("train", 600, 1), ("t10k", 300, 2)):
        images, labels = learnable_images(n, seed=seed)
        write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root
