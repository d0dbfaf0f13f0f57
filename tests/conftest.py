import logging
import os
import sys

from brn_repro.kernels import pin

# The kernels of the quick profile (train.cpu_isa=avx2) for the whole session, pinned
# before any torch op fixes them (subprocesses inherit them): a run of that profile in
# this process checks that they hold, and graphs compiled here are cached under them.
pin("avx2")

import pytest  # noqa: E402
import torch  # noqa: E402

# figures as PNG only (PDFs are a third of an aggregate's time); inherited by the
# subprocesses the tests start. tests/test_plots.py checks the PDFs with its own setting.
os.environ.setdefault("BRN_FIGURE_FORMATS", "png")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


class _ConsoleLines(logging.Handler):
    """brn_repro's messages as Hydra's console shows them (conf/hydra/job_logging/brn.yaml),
    on the sys.stderr of the moment (capsys's): in process, pytest's own handlers would
    take them out of sight."""

    def emit(self, record):
        sys.stderr.write(self.format(record) + "\n")


@pytest.fixture(autouse=True)
def _console_logging():
    logger = logging.getLogger("brn_repro")
    for name, other in logging.root.manager.loggerDict.items():  # a Hydra job may have disabled them
        if name.startswith("brn_repro") and isinstance(other, logging.Logger):
            other.disabled = False
    handler, level = _ConsoleLines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield
    logger.removeHandler(handler)
    logger.setLevel(level)


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
    """Images whose class is a stripe pattern (5 periods x 2 orientations) under noise:
    easy for a small CNN to learn, impossible to guess (chance is 1/num_classes)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n).astype(np.uint8)
    grid = np.arange(size)
    images = np.empty((n, size, size), dtype=np.uint8)
    for i, label in enumerate(labels):
        period, vertical = 2 + int(label) // 2, int(label) % 2
        phase = rng.integers(0, period)
        stripes = ((grid + phase) // max(period // 2, 1)) % 2 if period > 2 else (grid + phase) % 2
        pattern = np.tile(stripes, (size, 1)) if vertical else np.tile(stripes[:, None], (1, size))
        noise = rng.integers(0, 80, (size, size))
        images[i] = np.clip(pattern * 150 + noise, 0, 255)
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
