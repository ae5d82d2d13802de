"""Where a data set's arrays come from: scikit-learn's digits, IDX files (MNIST, Fashion-MNIST),
torchvision's CIFAR, a user's `.npz` or image folder. Each reader returns the train and test
splits as uint8 tensors, the number of classes and, where the source has them, their names,
after checking what it read: a file pqz would misread is refused, naming the file.
"""

from __future__ import annotations

import contextlib
import gzip
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from compression.errors import DataNotFoundError, InvalidConfigError

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
TORCHVISION_FOLDER = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
DIGITS = tuple(str(digit) for digit in range(10))
FASHION = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
MAX_NPZ_BYTES = 8 << 30


@dataclass(frozen=True, slots=True)
class Split:
    """Images (n, channels, height, width) uint8 and labels (n,) int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.numel())


class Read(NamedTuple):
    """What a reader found: both splits, how many classes, and their names where known."""

    train: Split
    test: Split
    num_classes: int
    class_names: tuple[str, ...] | None = None


def _size(image: np.ndarray) -> str:
    return f"{image.shape[1]}x{image.shape[0]} pixels"


def shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(size) for size in shape)


def _split(x: np.ndarray, y: np.ndarray, where: str) -> Split:
    if x.ndim == 3:
        x = x[:, None]  # (n, 1, h, w): grayscale
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)  # channels last -> channels first
    if (
        y.ndim == 2
        and y.shape[1] > 1
        and len(y)
        and np.isin(y, (0, 1)).all()
        and (y.sum(1) == 1).all()
    ):
        raise InvalidConfigError(
            f"{where}: labels of shape {list(y.shape)} look one-hot; save the class numbers "
            "instead (y.argmax(1))"
        )
    if x.ndim != 4 or y.ndim != 1 or len(x) != len(y) or len(y) == 0:
        raise InvalidConfigError(
            f"{where}: images of shape {list(x.shape)} and labels of shape {list(y.shape)} do "
            "not form a data set (want n x h x w or n x c x h x w images and n labels)"
        )
    if np.issubdtype(x.dtype, np.integer) and x.dtype != np.uint8:
        smallest, largest = (int(x.min()), int(x.max())) if x.size else (0, 0)
        if smallest < 0 or largest > 255:
            raise InvalidConfigError(
                f"{where}: {x.dtype} images run from {smallest} to {largest}; pqz takes pixel "
                "values 0..255 (or floats in 0..1)"
            )
        x = x.astype(np.uint8)  # whole pixel values in a wider type
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
    if np.issubdtype(y.dtype, np.floating) and np.isfinite(y).all() and (y == np.rint(y)).all():
        y = y.astype(np.int64)  # whole class numbers stored as floats, as pandas often does
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise InvalidConfigError(f"{where}: labels must be non-negative integers, got {y.dtype}")
    return Split(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64)))


def _classes(train: Split, test: Split) -> int:
    return int(max(int(train.y.max()), int(test.y.max()))) + 1


def digits() -> Read:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images * (255.0 / 16.0)).round().astype(np.uint8)  # (1797, 8, 8)
    labels = bunch.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(labels))
    test, train = order[:360], order[360:]  # a fixed 20% test split
    return Read(
        _split(images[train], labels[train], "digits"),
        _split(images[test], labels[test], "digits"),
        10,
        DIGITS,
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


def idx(name: str, root: Path, download: bool) -> Read:
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
        return idx(name, root, download=False)
    splits = {}
    for split, paths in found.items():
        images, labels = (path for path in paths if path is not None)
        splits[split] = _split(_read_idx(images), _read_idx(labels), f"{name} {split}")
    return Read(splits["train"], splits["test"], 10, DIGITS if name == "mnist" else FASHION)


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


def cifar(name: str, root: Path, download: bool) -> Read:
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
    return Read(
        _split(np.asarray(train.data), np.asarray(train.targets), name),
        _split(np.asarray(test.data), np.asarray(test.targets), name),
        classes,
        tuple(train.classes) if len(train.classes) == classes else None,
    )


def npz(path: Path) -> Read:
    if path.stat().st_size > MAX_NPZ_BYTES:
        raise InvalidConfigError(f"{path} is larger than {MAX_NPZ_BYTES} bytes")
    if not zipfile.is_zipfile(path):
        # np.load would try it as a pickle and suggest allow_pickle: never for a user's file.
        raise InvalidConfigError(f"{path} is not an .npz file (a zip archive of .npy arrays)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = {"x_train", "y_train", "x_test", "y_test"} - set(archive.files)
            if missing:
                held = ", ".join(sorted(archive.files)) or "no arrays"
                raise InvalidConfigError(
                    f"{path} lacks the arrays {', '.join(sorted(missing))} (it holds {held}; "
                    "the names are x_train, y_train, x_test, y_test)"
                )
            arrays = {key: archive[key] for key in ("x_train", "y_train", "x_test", "y_test")}
            names = archive["classes"] if "classes" in archive.files else None
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
    if names is not None and (names.ndim != 1 or names.dtype.kind != "U" or len(names) != classes):
        raise InvalidConfigError(
            f"{path}: the optional array 'classes' must name the {classes} classes in order "
            f"(strings), got {names.dtype} of shape {list(names.shape)}"
        )
    return Read(train, test, classes, None if names is None else tuple(names.tolist()))


def image_folder(root: Path) -> Read:
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise InvalidConfigError(
            f"{root} is not an image folder: it needs train/<class>/ and test/<class>/"
        )
    classes = sorted(entry.name for entry in (root / "train").iterdir() if entry.is_dir())
    if not classes:
        raise InvalidConfigError(f"{root / 'train'} has no class folders")
    index = {name: i for i, name in enumerate(classes)}
    found: dict[str, list[tuple[Path, int]]] = {}
    for split in ("train", "test"):
        found[split] = []
        for name in sorted(p.name for p in (root / split).iterdir() if p.is_dir()):
            if name not in index:
                raise InvalidConfigError(
                    f"class '{name}' of {root / split} is not among the training classes"
                )
            files = [
                file
                for file in sorted((root / split / name).iterdir())
                if file.suffix.lower() in IMAGE_SUFFIXES
            ]
            if split == "train" and not files:
                raise InvalidConfigError(f"class folder {root / split / name} holds no images")
            found[split] += [(file, index[name]) for file in files]
        if not found[split]:
            raise InvalidConfigError(f"{root / split} holds no images")
    images = {split: [_pixels(file) for file, _ in found[split]] for split in found}
    # Grey images among colour ones are made colour: one mode for the whole data set.
    colour = any(image.ndim == 3 for split in images.values() for image in split)
    first = found["train"][0][0], _as(images["train"][0], colour)
    splits = {}
    for split, pixels in images.items():
        arrays = [_as(image, colour) for image in pixels]
        for (file, _), array in zip(found[split], arrays, strict=True):
            if array.shape != first[1].shape:
                raise InvalidConfigError(
                    f"{file} is {_size(array)}, but {first[0]} is {_size(first[1])}: the images "
                    "of a data set must all have one size (resize them first: pqz neither crops "
                    "nor pads photos)"
                )
        labels = np.array([label for _, label in found[split]])
        splits[split] = _split(np.stack(arrays), labels, f"{root.name} {split}")
    return Read(splits["train"], splits["test"], len(classes), tuple(classes))


def _pixels(file: Path) -> np.ndarray:
    """One image as uint8 pixels: (h, w) where it is grey, (h, w, 3) where it has colour.

    16-bit grey (PNG) is scaled to 8 bits, and an alpha channel is dropped. An image with a
    palette or an alpha channel whose colours are all grey is grey; one stored as plain colour
    (RGB, as JPEGs are) stays colour, whatever it shows.
    """
    from PIL import Image

    with Image.open(file) as image:
        mode = image.mode
        if mode.startswith("I"):  # I;16 and I: 16-bit grey
            wide = np.asarray(image).astype(np.float64)
            return np.rint(np.clip(wide, 0, 65535) / 257.0).astype(np.uint8)
        if mode in ("L", "LA", "1"):
            return np.asarray(image.convert("L"))
        rgb = np.asarray(image.convert("RGB"))  # (h, w, 3)
    stored_grey = mode in ("RGBA", "P", "PA") and bool(
        (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    )
    return np.ascontiguousarray(rgb[..., 0]) if stored_grey else rgb


def _as(image: np.ndarray, colour: bool) -> np.ndarray:
    if colour and image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)  # (h, w, 3)
    return image
