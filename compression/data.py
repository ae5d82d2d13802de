"""Data sets as preloaded uint8 tensors: built-in names, image folders, and users' `.npz` files.

Every data set comes as train / validation / test splits. The validation split is held out of
the training data (seeded) and drives every decision of the pipeline; the test split is only
reported. Images stay uint8 in memory (CIFAR-10 is 150 MB that way) and are normalised batch by
batch, on the device that trains.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from compression.config import Augment
from compression.errors import DataNotFoundError, InvalidConfigError

BUILT_IN = ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100")
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
TORCHVISION_FOLDER = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
MAX_NPZ_BYTES = 8 << 30


@dataclass(frozen=True, slots=True)
class Split:
    """Images (n, channels, height, width) uint8 and labels (n,) int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.numel())


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

    @property
    def image_shape(self) -> tuple[int, int, int]:
        channels, height, width = self.train.x.shape[1:]
        return int(channels), int(height), int(width)


def default_data_dir() -> Path:
    return Path(os.environ.get("PQZ_DATA_DIR", Path.home() / ".cache" / "pqz" / "data"))


def load_dataset(
    source: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> Dataset:
    """A built-in name (`digits`, `mnist`, `fashion-mnist`, `cifar10`, `cifar100`) or a path to
    an image-folder directory (`train/<class>/*`, `test/<class>/*`) or a `.npz` file."""
    if not 0.0 < val_fraction < 1.0:
        raise InvalidConfigError(f"val_fraction {val_fraction!r} is outside (0, 1)")
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    if source == "digits":
        train, test, classes = _digits()
    elif source in ("mnist", "fashion-mnist"):
        train, test, classes = _idx(source, root, download)
    elif source in ("cifar10", "cifar100"):
        train, test, classes = _cifar(source, root, download)
    elif Path(source).suffix == ".npz" and Path(source).is_file():
        train, test, classes = _npz(Path(source))
    elif Path(source).is_dir():
        train, test, classes = _image_folder(Path(source))
    else:
        raise InvalidConfigError(
            f"unknown data set {source!r}: not one of {', '.join(BUILT_IN)}, "
            "nor an existing .npz file or image-folder directory"
        )
    train, val = _hold_out(train, val_fraction, seed)
    mean, std = _statistics(train.x)
    return Dataset(
        name=source,
        train=train,
        val=val,
        test=test,
        num_classes=classes,
        mean=mean,
        std=std,
        augment=source in ("cifar10", "cifar100") or train.x.shape[1] == 3,
    )


def fit_to(dataset: Dataset, input_shape: tuple[int, ...], resizes: bool, arch: str) -> Dataset:
    """Resize the images to the architecture's input where it documents that it resizes."""
    if len(input_shape) != 3 or dataset.image_shape == tuple(input_shape):
        return dataset
    channels, height, width = input_shape
    if dataset.image_shape[0] != channels or not resizes:
        raise InvalidConfigError(
            f"data set '{dataset.name}' has {_shape(dataset.image_shape)} images; architecture "
            f"'{arch}' takes {_shape(tuple(input_shape))}"
        )

    def resize(split: Split) -> Split:
        x = F.interpolate(split.x.float(), size=(height, width), mode="bilinear", antialias=True)
        return Split(x.round().clamp(0, 255).to(torch.uint8), split.y)

    return Dataset(
        name=dataset.name,
        train=resize(dataset.train),
        val=resize(dataset.val),
        test=resize(dataset.test),
        num_classes=dataset.num_classes,
        mean=dataset.mean,
        std=dataset.std,
        augment=dataset.augment,
    )


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


def _hold_out(train: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    n = len(train)
    n_val = max(1, round(fraction * n))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val, rest = order[:n_val], order[n_val:]
    return Split(train.x[rest], train.y[rest]), Split(train.x[val], train.y[val])


def _size(image: np.ndarray) -> str:
    return f"{image.shape[1]}x{image.shape[0]} pixels"


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(size) for size in shape)


def _split(x: np.ndarray, y: np.ndarray, where: str) -> Split:
    if x.ndim == 3:
        x = x[:, None]  # (n, 1, h, w): grayscale
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)  # channels last -> channels first
    if x.ndim != 4 or y.ndim != 1 or len(x) != len(y) or len(y) == 0:
        raise InvalidConfigError(
            f"{where}: images of shape {list(x.shape)} and labels of shape {list(y.shape)} do "
            "not form a data set (want n x h x w or n x c x h x w images and n labels)"
        )
    if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.floating) or not np.isfinite(x).all():
            raise InvalidConfigError(
                f"{where}: images must be uint8 or finite floats, got {x.dtype}"
            )
        low, high = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
        if low < 0.0 or high > 255.0:
            raise InvalidConfigError(
                f"{where}: float images run from {low:.4g} to {high:.4g}; pqz takes pixel "
                "values, uint8 or floats in 0..1 (or 0..255), and normalises them itself: "
                "save the images before any normalisation"
            )
        scale = 255.0 if high <= 1.0 else 1.0
        x = np.rint(x * scale).astype(np.uint8)
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise InvalidConfigError(f"{where}: labels must be non-negative integers, got {y.dtype}")
    return Split(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64)))


def _classes(train: Split, test: Split) -> int:
    return int(max(int(train.y.max()), int(test.y.max()))) + 1


def _digits() -> tuple[Split, Split, int]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images * (255.0 / 16.0)).round().astype(np.uint8)  # (1797, 8, 8)
    labels = bunch.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(labels))
    test, train = order[:360], order[360:]  # a fixed 20% test split
    return (
        _split(images[train], labels[train], "digits"),
        _split(images[test], labels[test], "digits"),
        10,
    )


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise InvalidConfigError(f"{path} is not an IDX file of unsigned bytes")
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    offset = 4 + 4 * dims
    if len(data) - offset != int(np.prod(shape)):
        raise InvalidConfigError(
            f"{path} holds {len(data) - offset} bytes, its header says {shape}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape).copy()


def _find(folders: list[Path], stem: str) -> Path | None:
    for folder in folders:
        for name in (stem, f"{stem}.gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def _idx(name: str, root: Path, download: bool) -> tuple[Split, Split, int]:
    folders = [root / name, root / TORCHVISION_FOLDER[name] / "raw", root]
    found = {split: [_find(folders, stem) for stem in stems] for split, stems in IDX_FILES.items()}
    if any(path is None for paths in found.values() for path in paths):
        if not download:
            raise DataNotFoundError(
                f"data set '{name}' not found under {root} (looked in {root / name} and "
                f"{root / TORCHVISION_FOLDER[name] / 'raw'}); set --data-dir or PQZ_DATA_DIR, "
                "or allow downloading (--download)",
                name,
            )
        import torchvision

        dataset_class = (
            torchvision.datasets.MNIST if name == "mnist" else torchvision.datasets.FashionMNIST
        )
        with _downloading(name, root, root / TORCHVISION_FOLDER[name] / "raw"):
            dataset_class(str(root), train=True, download=True)
            dataset_class(str(root), train=False, download=True)
        return _idx(name, root, download=False)
    splits = {}
    for split, paths in found.items():
        images, labels = (path for path in paths if path is not None)
        splits[split] = _split(_read_idx(images), _read_idx(labels), f"{name} {split}")
    return splits["train"], splits["test"], 10


@contextlib.contextmanager
def _downloading(name: str, root: Path, folder: Path | None = None) -> Iterator[None]:
    """torchvision's download of `name` into `folder` (under `root`): a network error becomes
    one line, and the folders made for it are removed if they stayed empty."""
    made, path = [], folder or root  # the folders the download will make, deepest first
    while not path.exists() and path != path.parent:
        made.append(path)
        path = path.parent
    try:
        yield
    except (OSError, RuntimeError) as error:  # URLError is an OSError; MNIST wraps it
        for path in made:
            with contextlib.suppress(OSError):
                path.rmdir()  # only where it stayed empty
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else repr(error)
        raise InvalidConfigError(
            f"downloading data set '{name}' into {root} failed: {reason} (without internet, "
            "put its files there yourself, or set --data-dir or PQZ_DATA_DIR where they are)"
        ) from None


def _cifar(name: str, root: Path, download: bool) -> tuple[Split, Split, int]:
    import torchvision

    dataset_class = (
        torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    )
    try:
        with _downloading(name, root) if download else contextlib.nullcontext():
            train = dataset_class(str(root), train=True, download=download)
            test = dataset_class(str(root), train=False, download=download)
    except RuntimeError as error:
        raise DataNotFoundError(
            f"data set '{name}' not found under {root} ({error}); set --data-dir or PQZ_DATA_DIR, "
            "allow downloading (--download), or pass an image-folder directory",
            name,
        ) from None
    classes = 10 if name == "cifar10" else 100
    return (
        _split(np.asarray(train.data), np.asarray(train.targets), name),
        _split(np.asarray(test.data), np.asarray(test.targets), name),
        classes,
    )


def _npz(path: Path) -> tuple[Split, Split, int]:
    if path.stat().st_size > MAX_NPZ_BYTES:
        raise InvalidConfigError(f"{path} is larger than {MAX_NPZ_BYTES} bytes")
    if not zipfile.is_zipfile(path):
        # np.load would try it as a pickle and suggest allow_pickle: never for a user's file.
        raise InvalidConfigError(f"{path} is not an .npz file (a zip archive of .npy arrays)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = {"x_train", "y_train", "x_test", "y_test"} - set(archive.files)
            if missing:
                raise InvalidConfigError(f"{path} lacks the arrays {', '.join(sorted(missing))}")
            arrays = {key: archive[key] for key in ("x_train", "y_train", "x_test", "y_test")}
    except InvalidConfigError:
        raise
    except ValueError as error:
        why = "it holds Python objects" if "allow_pickle" in str(error) else str(error)
        raise InvalidConfigError(f"{path} is not a readable .npz file: {why}") from None
    except (OSError, zipfile.BadZipFile) as error:
        raise InvalidConfigError(f"{path} is not a readable .npz file: {error}") from None
    train = _split(arrays["x_train"], arrays["y_train"], f"{path.name} train")
    test = _split(arrays["x_test"], arrays["y_test"], f"{path.name} test")
    if train.x.shape[1:] != test.x.shape[1:]:
        raise InvalidConfigError(f"{path}: train and test images differ in shape")
    classes = _classes(train, test)
    absent = sorted(set(range(classes)) - set(train.y.unique().tolist()))
    if absent:
        shown = ", ".join(str(label) for label in absent[:10]) + (", ..." if absent[10:] else "")
        raise InvalidConfigError(
            f"{path}: labels run up to {classes - 1}, but no training image has label {shown}: "
            "the labels must number the classes 0 to N-1"
        )
    return train, test, classes


def _image_folder(root: Path) -> tuple[Split, Split, int]:
    from PIL import Image

    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise InvalidConfigError(
            f"{root} is not an image folder: it needs train/<class>/ and test/<class>/"
        )
    classes = sorted(entry.name for entry in (root / "train").iterdir() if entry.is_dir())
    if not classes:
        raise InvalidConfigError(f"{root / 'train'} has no class folders")
    index = {name: i for i, name in enumerate(classes)}

    def read(split: str) -> Split:
        images, labels, files = [], [], []
        for name in sorted(p.name for p in (root / split).iterdir() if p.is_dir()):
            if name not in index:
                raise InvalidConfigError(
                    f"class '{name}' of {root / split} is not among the training classes"
                )
            found = [
                file
                for file in sorted((root / split / name).iterdir())
                if file.suffix.lower() in IMAGE_SUFFIXES
            ]
            if split == "train" and not found:
                raise InvalidConfigError(f"class folder {root / split / name} holds no images")
            for file in found:
                with Image.open(file) as image:
                    images.append(image.convert("RGB" if image.mode != "L" else "L"))
                files.append(file)
                labels.append(index[name])
        if not images:
            raise InvalidConfigError(f"{root / split} holds no images")
        # Grey images among colour ones are made colour: one mode for the whole set.
        mode = "RGB" if any(image.mode == "RGB" for image in images) else "L"
        arrays = [np.asarray(image.convert(mode)) for image in images]
        for file, array in zip(files, arrays, strict=True):
            if array.shape != arrays[0].shape:
                raise InvalidConfigError(
                    f"{file} is {_size(array)}, but {files[0]} is {_size(arrays[0])}: the images "
                    "of a data set must all have one size"
                )
        return _split(np.stack(arrays), np.array(labels), f"{root.name} {split}")

    return read("train"), read("test"), len(classes)
