from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from compression import InvalidConfigError
from compression.data import Dataset, Split, batches, fit_to, load_dataset, resolve_augment


def test_digits_has_disjoint_train_val_confirm_test_splits() -> None:
    dataset = load_dataset("digits", val_fraction=0.2, seed=1)
    assert dataset.image_shape == (1, 8, 8)
    assert dataset.confirm is not None
    sizes = (len(dataset.train), len(dataset.val), len(dataset.confirm), len(dataset.test))
    assert sum(sizes) == 1797
    assert len(dataset.val) == round(0.2 * 1437)
    assert len(dataset.confirm) == round(0.1 * 1437)
    # The validation images are a seed's as they were before there was a confirm split.
    alone = load_dataset("digits", val_fraction=0.2, confirm_fraction=0.0, seed=1)
    assert alone.confirm is None
    assert torch.equal(alone.val.x, dataset.val.x)
    confirm_rows = {bytes(row) for row in dataset.confirm.x.flatten(1).numpy()}
    assert sum(bytes(row) in confirm_rows for row in dataset.val.x.flatten(1).numpy()) < 10
    assert dataset.num_classes == 10
    assert dataset.train.x.dtype == torch.uint8
    train_rows = {bytes(row) for row in dataset.train.x.flatten(1).numpy()}
    val_rows = [bytes(row) for row in dataset.val.x.flatten(1).numpy()]
    assert sum(row in train_rows for row in val_rows) < len(val_rows) // 4  # digits repeat a little


def test_lenet_input_is_resized_where_documented() -> None:
    dataset = fit_to(load_dataset("digits"), (1, 28, 28), True, "lenet-5")
    assert dataset.image_shape == (1, 28, 28)
    with pytest.raises(
        InvalidConfigError, match="has 1x8x8 images; architecture 'vgg16-cifar' takes 3x32x32"
    ):
        fit_to(load_dataset("digits"), (3, 32, 32), True, "vgg16-cifar")


@pytest.mark.parametrize("confirm_fraction", [-0.1, 0.9, 1.0])
def test_a_confirm_fraction_that_leaves_no_training_images_is_refused(
    confirm_fraction: float,
) -> None:
    with pytest.raises(InvalidConfigError, match=f"confirm_fraction {confirm_fraction!r} is"):
        load_dataset("digits", confirm_fraction=confirm_fraction)


def test_batches_are_normalised_and_cover_the_split() -> None:
    dataset = load_dataset("digits")
    seen = 0
    means = []
    for x, y in batches(dataset, dataset.train, batch_size=100, device=torch.device("cpu")):
        assert x.dtype == torch.float32
        seen += len(y)
        means.append(float(x.mean()))
    assert seen == len(dataset.train)
    assert abs(float(np.mean(means))) < 0.1


def _raw_batch(dataset: Dataset, augment: str, seed: int = 0) -> torch.Tensor:
    """The first training batch of `dataset` (unshuffled), de-normalised back to 0..1."""
    x, _ = next(
        batches(
            dataset,
            dataset.train,
            batch_size=64,
            device=torch.device("cpu"),
            augment=augment,  # type: ignore[arg-type]
            generator=torch.Generator().manual_seed(seed),
        )
    )
    mean = torch.tensor(dataset.mean).view(1, -1, 1, 1)
    std = torch.tensor(dataset.std).view(1, -1, 1, 1)
    return x * std + mean  # (64, c, h, w)


def test_shift_moves_each_image_by_at_most_two_pixels_over_a_black_edge() -> None:
    dataset = load_dataset("digits")
    original = dataset.train.x[:64].float() / 255.0  # (64, 1, 8, 8)
    shifted = _raw_batch(dataset, "shift")
    padded = torch.nn.functional.pad(original, (2, 2, 2, 2))  # (64, 1, 12, 12)
    offsets = []
    for image, moved in zip(padded, shifted, strict=True):
        matches = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.allclose(image[:, dy : dy + 8, dx : dx + 8], moved, atol=1e-5)
        ]
        assert matches, "an image is not its original moved by up to 2 pixels"
        offsets.append(matches[0])
    assert len(set(offsets)) > 5  # each image draws its own offset
    assert torch.equal(shifted, _raw_batch(dataset, "shift"))  # seeded
    assert not torch.equal(shifted, _raw_batch(dataset, "shift", seed=1))


def test_crop_flip_is_the_usual_cifar_recipe_and_auto_picks_it_for_colour_images() -> None:
    rng = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8, generator=rng)
    split = Split(x, torch.zeros(64, dtype=torch.int64))
    colour = Dataset("toy", split, split, split, 1, (0.0,) * 3, (1.0,) * 3, augment=True)
    assert resolve_augment("auto", colour) == "crop-flip"
    assert resolve_augment("auto", load_dataset("digits")) == "none"
    assert resolve_augment("shift", colour) == "shift"
    # Reference: a 4-pixel reflect-padded crop per image, then a flip of about half of them,
    # drawn in that order from the same generator.
    generator = torch.Generator().manual_seed(0)
    padded = torch.nn.functional.pad(x.float() / 255.0, (4, 4, 4, 4), mode="reflect")
    dy, dx = torch.randint(0, 9, (2, 64), generator=generator).tolist()
    expected = torch.stack([padded[i, :, dy[i] : dy[i] + 8, dx[i] : dx[i] + 8] for i in range(64)])
    flip = torch.rand(64, generator=generator) < 0.5
    expected[flip] = expected[flip].flip(3)
    assert torch.allclose(_raw_batch(colour, "auto"), expected, atol=1e-6)
    assert torch.allclose(_raw_batch(colour, "none"), x.float() / 255.0, atol=1e-6)


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = (
        b"\x00\x00\x08" + bytes([array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
    )
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_idx_files_in_debian_layout_load(tmp_path: Path) -> None:
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 50), ("t10k", 20)):
        _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    dataset = load_dataset("fashion-mnist", data_dir=tmp_path)
    assert dataset.confirm is not None
    assert len(dataset.train) + len(dataset.val) + len(dataset.confirm) == 50
    assert len(dataset.test) == 20
    with pytest.raises(InvalidConfigError, match="data set 'mnist' not found under"):
        load_dataset("mnist", data_dir=tmp_path)


def test_npz_is_validated(tmp_path: Path) -> None:
    good = tmp_path / "good.npz"
    rng = np.random.default_rng(0)
    np.savez(
        good,
        x_train=rng.random((40, 3, 8, 8)).astype(np.float32),
        y_train=rng.integers(0, 4, 40),
        x_test=rng.random((10, 3, 8, 8)).astype(np.float32),
        y_test=rng.integers(0, 4, 10),
    )
    dataset = load_dataset(str(good))
    assert dataset.image_shape == (3, 8, 8)
    assert dataset.classes is None  # an .npz names its classes only where it says so
    named = tmp_path / "named.npz"
    arrays = {key: np.load(good)[key] for key in ("x_train", "y_train", "x_test", "y_test")}
    np.savez(named, **arrays, classes=np.array(["a", "b", "c", "d"]))
    assert load_dataset(str(named)).classes == ("a", "b", "c", "d")
    np.savez(named, **arrays, classes=np.array(["a", "b"]))
    with pytest.raises(InvalidConfigError, match="'classes' must name the 4 classes in order"):
        load_dataset(str(named))
    wide = tmp_path / "wide.npz"  # whole pixel values in int64, as np.array(list) makes them
    pixels = rng.integers(0, 256, (10, 8, 8))
    labels = np.arange(10) % 2
    np.savez(wide, x_train=pixels, y_train=labels, x_test=pixels, y_test=labels.astype(float))
    assert torch.equal(
        load_dataset(str(wide)).test.x[:, 0], torch.from_numpy(pixels).to(torch.uint8)
    )
    missing = tmp_path / "missing.npz"
    np.savez(missing, x_train=np.zeros((4, 8, 8)), y_train=np.zeros(4, dtype=int))
    with pytest.raises(InvalidConfigError) as error:
        load_dataset(str(missing))
    assert str(error.value) == (
        f"{missing} lacks the arrays x_test, y_test (it holds x_train, y_train; the names are "
        "x_train, y_train, x_test, y_test)"
    )
    wrong = tmp_path / "wrong.npz"
    np.savez(
        wrong,
        x_train=np.zeros((4, 8, 8)),
        y_train=np.zeros(5, dtype=int),
        x_test=np.zeros((2, 8, 8)),
        y_test=np.zeros(2, dtype=int),
    )
    with pytest.raises(
        InvalidConfigError, match="images of shape \\[4, 1, 8, 8\\] and labels of shape \\[5\\]"
    ):
        load_dataset(str(wrong))
    labels = tmp_path / "labels.npz"
    np.savez(
        labels,
        x_train=np.zeros((4, 8, 8)),
        y_train=np.full(4, 0.5),
        x_test=np.zeros((2, 8, 8)),
        y_test=np.zeros(2, dtype=int),
    )
    with pytest.raises(InvalidConfigError, match="labels must be non-negative integers"):
        load_dataset(str(labels))


def test_an_npz_that_is_not_plain_arrays_is_refused_without_unsafe_advice(tmp_path: Path) -> None:
    noise = tmp_path / "noise.npz"
    noise.write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(InvalidConfigError, match="is not an .npz file") as raised:
        load_dataset(str(noise))
    assert "allow_pickle" not in str(raised.value)
    objects = tmp_path / "objects.npz"
    arrays = {name: np.zeros(2, dtype=int) for name in ("y_train", "x_test", "y_test")}
    np.savez(objects, x_train=np.array([{"a": 1}], dtype=object), **arrays)
    with pytest.raises(InvalidConfigError, match="it holds Python objects$"):
        load_dataset(str(objects))


def test_image_folder_loads(tmp_path: Path) -> None:
    from PIL import Image

    for split, n in (("train", 6), ("test", 2)):
        for name in ("cat", "dog"):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((32, 32, 3), 40 * i, dtype=np.uint8)).save(
                    folder / f"{i}.png"
                )
    dataset = load_dataset(str(tmp_path), val_fraction=0.25)
    assert dataset.image_shape == (3, 32, 32)
    assert dataset.num_classes == 2
    assert len(dataset.test) == 4


def _image_folder(root: Path, n: int = 2) -> None:
    from PIL import Image

    for split in ("train", "test"):
        for name in ("cat", "dog"):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((32, 32, 3), 40 * i, dtype=np.uint8)).save(
                    root / split / name / f"{i}.png"
                )


def test_grey_images_among_colour_ones_are_made_colour(tmp_path: Path) -> None:
    from PIL import Image

    _image_folder(tmp_path)
    Image.fromarray(np.full((32, 32), 200, dtype=np.uint8)).save(tmp_path / "train/cat/grey.png")
    dataset = load_dataset(str(tmp_path), val_fraction=0.2)
    assert dataset.image_shape == (3, 32, 32)
    assert dataset.confirm is not None
    assert len(dataset.train) + len(dataset.val) + len(dataset.confirm) == 5


def test_sixteen_bit_grey_and_grey_with_alpha_stay_grey(tmp_path: Path) -> None:
    """A 16-bit PNG is scaled to 8 bits (it was clipped to white as colour); a grey image saved
    with an alpha channel among grey ones keeps the data set grey."""
    from PIL import Image

    for split in ("train", "test"):
        for label, name in enumerate(("a", "b")):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(2):
                grey = np.full((8, 8), 100 * label + i, dtype=np.uint8)
                Image.fromarray(grey).save(tmp_path / split / name / f"{i}.png")
    wide = np.full((8, 8), 40_000, dtype=np.uint16)
    Image.fromarray(wide).save(tmp_path / "test/a/16bit.png")
    assert Image.open(tmp_path / "test/a/16bit.png").mode.startswith("I")
    rgba = np.full((8, 8, 4), 77, dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "train/b/alpha.png")
    dataset = load_dataset(str(tmp_path), val_fraction=0.2)
    assert dataset.image_shape == (1, 8, 8)
    assert dataset.classes == ("a", "b")
    assert sorted(dataset.test.x[:, 0, 0, 0].tolist()) == [0, 1, 100, 101, round(40_000 / 257)]
    pixels = torch.cat([dataset.train.x, dataset.val.x])[:, 0, 0, 0].tolist()
    assert 77 in pixels


def test_image_folder_mistakes_name_the_file_or_folder(tmp_path: Path) -> None:
    from PIL import Image

    # Another size among the training images, or in the test split: both name the two files.
    odd_ones = [("sizes", "train/dog/odd.png", (28, 30)), ("test", "test/cat/big.png", (36, 36))]
    for folder, odd, size in odd_ones:
        _image_folder(tmp_path / folder)
        Image.fromarray(np.zeros((*size, 3), dtype=np.uint8)).save(tmp_path / folder / odd)
        with pytest.raises(InvalidConfigError) as error:
            load_dataset(str(tmp_path / folder))
        assert str(error.value) == (
            f"{tmp_path / folder / odd} is {size[1]}x{size[0]} pixels, but "
            f"{tmp_path / folder / 'train/cat/0.png'} is 32x32 pixels: the images of a data set "
            "must all have one size (resize them first: pqz neither crops nor pads photos)"
        )
    (tmp_path / "one/train/cat").mkdir(parents=True)
    (tmp_path / "one/test/cat").mkdir(parents=True)
    for split in ("train", "test"):
        Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / f"one/{split}/cat/0.png")
    with pytest.raises(InvalidConfigError, match="has a single class: a classifier needs"):
        load_dataset(str(tmp_path / "one"))
    _image_folder(tmp_path / "empty")
    (tmp_path / "empty/train/bird").mkdir()
    with pytest.raises(InvalidConfigError) as error:
        load_dataset(str(tmp_path / "empty"))
    assert str(error.value) == f"class folder {tmp_path / 'empty/train/bird'} holds no images"


@pytest.mark.parametrize(
    ("x_train", "y_train", "message"),
    [
        (
            np.full((4, 8, 8), -0.5),
            np.arange(4),
            "bad.npz train: float images run from -0.5 to -0.5; pqz takes pixel values, uint8 "
            "or floats in 0..1 (or 0..255), and normalises them itself: save the images before "
            "any normalisation",
        ),
        (
            np.full((4, 8, 8), 300, dtype=np.int64),
            np.arange(4),
            "bad.npz train: int64 images run from 300 to 300; pqz takes pixel values 0..255 (or "
            "floats in 0..1)",
        ),
        (
            np.zeros((4, 8, 8), dtype=np.uint8),
            np.eye(4, dtype=np.int64),
            "bad.npz train: labels of shape [4, 4] look one-hot; save the class numbers instead "
            "(y.argmax(1))",
        ),
        (
            np.zeros((4, 8, 8), dtype=np.uint8),
            np.array([0, 1, 2, 5]),
            "bad.npz: labels run up to 5, but no training image has label 3, 4: the labels must "
            "number the classes 0 to N-1",
        ),
    ],
)
def test_npz_values_pqz_would_misread_are_refused(
    tmp_path: Path, x_train: np.ndarray, y_train: np.ndarray, message: str
) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(
        bad,
        x_train=x_train,
        y_train=y_train,
        x_test=np.zeros((2, 8, 8), dtype=np.uint8),
        y_test=np.zeros(2, dtype=int),
    )
    with pytest.raises(InvalidConfigError) as error:
        load_dataset(str(bad))
    assert str(error.value) == message.replace("bad.npz:", f"{bad}:")


def test_unknown_data_set_is_a_clear_error() -> None:
    with pytest.raises(InvalidConfigError, match="unknown data set 'imagenet'"):
        load_dataset("imagenet")


@pytest.mark.parametrize(("name", "class_name"), [("mnist", "MNIST"), ("cifar10", "CIFAR10")])
def test_a_failed_download_is_one_line_and_leaves_no_empty_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, class_name: str
) -> None:
    import urllib.error

    import torchvision

    def offline(root: str, train: bool, download: bool) -> None:
        # The folders torchvision makes before it downloads: MNIST/raw, or the root for CIFAR.
        (Path(root) / class_name / "raw" if name == "mnist" else Path(root)).mkdir(parents=True)
        reason = urllib.error.URLError("[Errno -2] Name or service not known")
        if name == "mnist":  # torchvision wraps it, over several lines
            raise RuntimeError(
                f"Error downloading train-images-idx3-ubyte.gz:\nTried x, got:\n{reason}"
            )
        raise reason

    monkeypatch.setattr(torchvision.datasets, class_name, offline)
    root = tmp_path / "new" / "data"  # two folders that did not exist
    with pytest.raises(InvalidConfigError) as error:
        load_dataset(name, data_dir=root, download=True)
    assert str(error.value) == (
        f"downloading data set '{name}' into {root} failed: <urlopen error [Errno -2] Name or "
        "service not known> (without internet, put its files there yourself, or set --data-dir "
        "or PQZ_DATA_DIR where they are)"
    )
    assert not (tmp_path / "new").exists()
