"""`make data`: get a dataset and say where it is.

Fashion-MNIST (the default): already in DIR / Debian's package / data/ -> done;
else, on a Debian machine where we may, `apt-get install dataset-fashion-mnist`
(the offline route); else torchvision's download into data/. CIFAR-10/100:
torchvision's download into data/.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

from brn_repro.data import DatasetError, find_fashion_mnist, load_cifar, load_fashion_mnist


def apt_install(package: str) -> bool:
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return False
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"installing Debian's {package} ...", flush=True)
    for attempt in ([], ["update"]):
        if attempt:
            subprocess.run(["apt-get", "update", "-qq"], env=env, check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        result = subprocess.run(["apt-get", "install", "-y", "-qq", package], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if result.returncode == 0:
            return True
    print(f"apt-get install {package} failed: {result.stderr.strip().splitlines()[-1:]}")
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist",
                        choices=("fashion_mnist", "cifar10", "cifar100"))
    parser.add_argument("--root", default=None, help="a local copy: the only place looked in (a download goes there)")
    parser.add_argument("--cache", default="data", help="where downloads go")
    args = parser.parse_args()
    try:
        if args.dataset == "fashion_mnist":
            files = find_fashion_mnist(args.root, args.cache)
            if files is None and not args.root and apt_install("dataset-fashion-mnist"):
                files = find_fashion_mnist(args.root, args.cache)
            if files is None:
                load_fashion_mnist(args.root, download=True, cache=args.cache)
                files = find_fashion_mnist(args.root, args.cache)
            data = load_fashion_mnist(args.root, download=False, cache=args.cache)
            where = files["train_x"].parent
        else:
            data = load_cifar(args.dataset, args.root, download=True, cache=args.cache)
            where = args.root or args.cache
    except DatasetError as err:
        sys.exit(f"error: {err}")
    print(f"{data.name}: {len(data.train_y)} train / {len(data.test_y)} test images "
          f"({data.in_channels}x{data.image_size}x{data.image_size}) in {where}")


if __name__ == "__main__":
    main()
