"""Data sets as preloaded uint8 tensors: built-in names, image folders, and users' `.npz` files.

Every data set comes as train / validation / confirm / test splits. The validation split (the
pipeline's search split) and the confirm split are held out of the training data (seeded):
the first drives every decision of the pipeline, the second judges only its final candidates,
and the test split is only reported. Images stay uint8 in memory (CIFAR-10 is 150 MB that
way) and are normalised batch by batch, on the device that trains.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from compression import sources
from compression.config import Augment, Normalize
from compression.errors import InvalidConfigError
from compression.pqz.container import atomic_path
from compression.preprocessing import Preprocessing, resize_pixels
from compression.sources import Split
from compression.zoo import get_architecture

__all__ = [
    "BUILT_IN",
    "Dataset",
    "Split",
    "batches",
    "fit_to",
    "load_dataset",
    "normalized",
    "pack",
    "read_source",
    "resolve_augment",
]

BUILT_IN = ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100")


@dataclass(frozen=True, slots=True)
class Dataset:
    """A named data set, split three ways, with the statistics used to normalise it."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool  # the data set's own recipe is crop-and-flip (CIFAR); see `resolve_augment`
    classes: tuple[str, ...] | None = None  # the labels' names, where the source has them
    resized_from: tuple[int, int] | None = None  # (height, width) before `fit_to` resized
    # Held out like `val` but seen by no decision: it judges the pipeline's final candidates.
    # None where a caller built the splits itself; the pipeline then says it judged on `val`.
    confirm: Split | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        channels, height, width = self.train.x.shape[1:]
        return int(channels), int(height), int(width)

    @property
    def preprocessing(self) -> Preprocessing:
        """What a model trained on this data set expects, as a `.pqz` records it."""
        return Preprocessing(self.image_shape, self.mean, self.std, self.resized_from, self.classes)


def default_data_dir() -> Path:
    return Path(os.environ.get("PQZ_DATA_DIR", Path.home() / ".cache" / "pqz" / "data"))


def load_dataset(
    source: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    val_fraction: float = 0.1,
    confirm_fraction: float = 0.1,
    seed: int = 0,
    arch: str | None = None,
) -> Dataset:
    """A built-in name (`digits`, `mnist`, `fashion-mnist`, `cifar10`, `cifar100`) or a path to
    an image-folder directory (`train/<class>/*`, `test/<class>/*`) or a `.npz` file; with
    `arch`, fitted to that architecture's input (see `fit_to`). `val_fraction` and
    `confirm_fraction` of the training images are held out as the validation (search) and
    confirm splits: 6,000 each of Fashion-MNIST's 60,000."""
    if not 0.0 < val_fraction < 1.0:
        raise InvalidConfigError(f"val_fraction {val_fraction!r} is outside (0, 1)")
    if not 0.0 <= confirm_fraction < 1.0 - val_fraction:
        raise InvalidConfigError(
            f"confirm_fraction {confirm_fraction!r} is outside [0, {1.0 - val_fraction:g}) "
            f"(what val_fraction {val_fraction!r} leaves)"
        )
    read = read_source(source, data_dir=data_dir, download=download)
    train, val, confirm = _hold_out(read.train, val_fraction, confirm_fraction, seed)
    mean, std = _statistics(train.x)
    dataset = Dataset(
        name=source,
        train=train,
        val=val,
        confirm=confirm,
        test=read.test,
        num_classes=read.num_classes,
        mean=mean,
        std=std,
        augment=source in ("cifar10", "cifar100") or train.x.shape[1] == 3,
        classes=read.class_names,
    )
    if arch is None:
        return dataset
    architecture = get_architecture(arch)
    return fit_to(dataset, architecture.input_shape, architecture.resizes_input, arch)


def read_source(
    source: str, *, data_dir: str | os.PathLike[str] | None = None, download: bool = False
) -> sources.Read:
    """A data set's train and test splits as its files hold them (see `load_dataset`)."""
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    if source == "digits":
        read = sources.digits()
    elif source in ("mnist", "fashion-mnist"):
        read = sources.idx(source, root, download)
    elif source in ("cifar10", "cifar100"):
        read = sources.cifar(source, root, download)
    elif Path(source).suffix == ".npz" and Path(source).is_file():
        read = sources.npz(Path(source))
    elif Path(source).is_dir():
        read = sources.image_folder(Path(source))
    elif Path(source).is_file():
        raise InvalidConfigError(
            f"data set {source!r} is a file but not an .npz: pqz reads .npz files (x_train, "
            "y_train, x_test, y_test) and image folders"
        )
    else:
        path = Path(source)
        where = (
            f" ({path.resolve()} does not exist)"
            if os.sep in source or path.suffix == ".npz"
            else ""
        )
        raise InvalidConfigError(
            f"unknown data set {source!r}{where}: not one of {', '.join(BUILT_IN)}, "
            "nor an existing .npz file or image-folder directory"
        )
    if read.num_classes < 2:
        raise InvalidConfigError(
            f"data set {source!r} has a single class: a classifier needs at least two"
        )
    return read


def pack(
    source: str,
    output: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
) -> sources.Read:
    """Write a data set's train and test splits (and class names) as an `.npz` that
    `load_dataset` reads back the same: what the service takes for an image folder."""
    read = read_source(source, data_dir=data_dir, download=download)
    arrays: dict[str, Any] = {
        "x_train": read.train.x.numpy(),  # (n, c, h, w) uint8
        "y_train": read.train.y.numpy(),
        "x_test": read.test.x.numpy(),
        "y_test": read.test.y.numpy(),
    }
    if read.class_names is not None:
        arrays["classes"] = np.array(read.class_names)  # unicode, readable without pickle
    with atomic_path(output) as temporary, temporary.open("wb") as handle:
        np.savez_compressed(handle, **arrays)
    return read


def fit_to(dataset: Dataset, input_shape: tuple[int, ...], resizes: bool, arch: str) -> Dataset:
    """Resize the images to the architecture's input where it documents that it resizes."""
    if len(input_shape) != 3 or dataset.image_shape == tuple(input_shape):
        return dataset
    channels, height, width = input_shape
    if dataset.image_shape[0] != channels or not resizes:
        raise InvalidConfigError(
            f"data set '{dataset.name}' has {sources.shape_text(dataset.image_shape)} images; "
            f"architecture '{arch}' takes {sources.shape_text(tuple(input_shape))}"
        )

    def resize(split: Split) -> Split:
        return Split(resize_pixels(split.x.float(), height, width).to(torch.uint8), split.y)

    return dataclasses.replace(
        dataset,
        train=resize(dataset.train),
        val=resize(dataset.val),
        confirm=None if dataset.confirm is None else resize(dataset.confirm),
        test=resize(dataset.test),
        resized_from=dataset.image_shape[1:],
    )


def normalized(dataset: Dataset, normalize: Normalize | None) -> Dataset:
    """`dataset` fed as a model trained with `normalize` expects (None: its own statistics)."""
    if normalize is None:
        return dataset
    mean, std = normalize.for_channels(dataset.image_shape[0])
    return dataclasses.replace(dataset, mean=mean, std=std)


def resolve_augment(augment: Augment, dataset: Dataset) -> Augment:
    """`auto` made concrete for `dataset`: crop-flip where that is its recipe, else none."""
    if augment == "auto":
        return "crop-flip" if dataset.augment else "none"
    return augment


def batches(
    dataset: Dataset,
    split: Split,
    *,
    batch_size: int,
    device: torch.device,
    shuffle: bool = False,
    augment: Augment = "none",
    generator: torch.Generator | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Normalised float batches (batch, c, h, w) and labels, on `device`, augmented as asked
    (`auto` as `resolve_augment` says)."""
    augment = resolve_augment(augment, dataset)
    n = len(split)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    mean = torch.tensor(dataset.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(dataset.std, device=device).view(1, -1, 1, 1)
    for start in range(0, n, batch_size):
        index = order[start : start + batch_size]
        x = split.x[index].to(device, non_blocking=True).float().div_(255.0)  # (b, c, h, w)
        if augment == "crop-flip":
            x = _crop_and_flip(x, generator)
        elif augment == "shift":
            x = _translate(x, 2, "constant", generator)
        yield (x - mean) / std, split.y[index].to(device, non_blocking=True)


def _crop_and_flip(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Random 4-pixel-padded crops and horizontal flips, one draw per image."""
    crops = _translate(x, 4, "reflect", generator)
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    crops[flip.to(x.device)] = crops[flip.to(x.device)].flip(3)
    return crops


def _translate(
    x: torch.Tensor, pad: int, mode: str, generator: torch.Generator | None
) -> torch.Tensor:
    """Each image moved by its own random offset of up to `pad` pixels each way; the edge is
    filled by `mode` (`constant`: black, the background of digits; `reflect`)."""
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode=mode)  # (b, c, h + 2 pad, w + 2 pad)
    dy, dx = torch.randint(0, 2 * pad + 1, (2, b), generator=generator).to(x.device)  # (b,) each
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (b, 1, h, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (b, 1, 1, w)
    images = torch.arange(b, device=x.device)[:, None, None, None]  # (b, 1, 1, 1)
    channels = torch.arange(c, device=x.device)[None, :, None, None]  # (1, c, 1, 1)
    return padded[images, channels, rows, cols]  # (b, c, h, w)


def _statistics(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    pixels = x.float().div(255.0).transpose(0, 1).reshape(x.shape[1], -1)  # (c, n * h * w)
    return tuple(pixels.mean(1).tolist()), tuple(pixels.std(1).clamp(min=1e-3).tolist())


def _hold_out(
    train: Split, val_fraction: float, confirm_fraction: float, seed: int
) -> tuple[Split, Split, Split | None]:
    """(train, val, confirm): val is the first images of a seeded order, as it was before
    there was a confirm split, so a seed's validation images stay the same; None without
    `confirm_fraction`."""
    n = len(train)
    n_val = max(1, round(val_fraction * n))
    n_confirm = 0
    if confirm_fraction > 0:  # at least one image, and one left to train on
        n_confirm = min(max(1, round(confirm_fraction * n)), max(n - n_val - 1, 0))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val, confirm, rest = order[:n_val], order[n_val : n_val + n_confirm], order[n_val + n_confirm :]
    return (
        Split(train.x[rest], train.y[rest]),
        Split(train.x[val], train.y[val]),
        Split(train.x[confirm], train.y[confirm]) if n_confirm else None,
    )
