"""What a `.pqz` records of its inputs, and a user's code feeding the model with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from compression import (
    CompressionSpec,
    CorruptArtifactError,
    InvalidConfigError,
    build_model,
    compress_model,
    inspect_pqz,
)
from compression.data import batches, fit_to, load_dataset
from compression.pipeline import Pipeline
from compression.pqz import save_pqz
from compression.pqz.container import SectionWriter, write_container
from compression.pqz.tensors import encode_model
from compression.preprocessing import Preprocessing


def test_pixels_are_scaled_resized_and_normalised_per_channel() -> None:
    grey = Preprocessing((1, 28, 28), (0.5,), (0.25,))
    white = torch.full((28, 28), 255, dtype=torch.uint8)
    assert torch.equal(grey(white), torch.full((1, 1, 28, 28), 2.0))  # one image, no channel axis
    assert grey(torch.zeros(5, 28, 28)).shape == (5, 1, 28, 28)  # floats in 0..1, grey batch
    # Pixel values in any integer type or array, and floats of 0..255, read as pixels too.
    for same in (white.long(), white.numpy(), white.float(), white.float() / 255):
        assert torch.equal(grey(same), torch.full((1, 1, 28, 28), 2.0))
    with pytest.raises(InvalidConfigError, match="images run from -1 to -1; give pixel values"):
        grey(torch.full((28, 28), -1.0))
    colour = Preprocessing((3, 4, 4), (0.0, 0.5, 1.0), (1.0, 0.5, 0.25), source_size=(2, 2))
    x = colour(torch.full((3, 2, 2), 255, dtype=torch.uint8))  # (1, 3, 4, 4): resized
    assert x.shape == (1, 3, 4, 4)
    assert x[0, :, 0, 0].tolist() == [1.0, 1.0, 0.0]
    with pytest.raises(InvalidConfigError, match=r"images of shape \[2, 1, 4, 4\] do not fit"):
        colour(torch.zeros(2, 1, 4, 4))


def test_channels_last_and_read_only_arrays_as_pil_gives_them(
    recwarn: pytest.WarningsRecorder,
) -> None:
    colour = Preprocessing((3, 4, 4), (0.0, 0.5, 1.0), (1.0, 0.5, 0.25))
    first = torch.arange(48, dtype=torch.uint8).reshape(3, 4, 4)  # (c, h, w)
    expected = colour(first)
    last = first.permute(1, 2, 0).numpy()  # (h, w, c), as np.asarray(PIL image)
    last.flags.writeable = False
    assert torch.equal(colour(last), expected)
    assert torch.equal(colour(np.stack([last, last])), torch.cat([expected, expected]))
    grey = Preprocessing((1, 4, 4), (0.5,), (0.25,))
    assert torch.equal(grey(first[0].numpy()[..., None]), grey(first[0]))  # (h, w, 1)
    assert not recwarn.list  # torch's warning about a read-only array stays inside


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"mean": (0.1, 0.2)}, r"input mean must be 1 finite numbers \(one per channel\), got"),
        ({"std": (0.0,)}, r"input std must be positive, got \[0.0\]"),
        ({"std": (float("nan"),)}, "input std must be 1 finite numbers"),
        ({"shape": (1, 0, 28)}, r"input shape must be 3 positive sizes, got \(1, 0, 28\)"),
        ({"classes": ()}, "input classes must be names"),
    ],
)
def test_bad_preprocessing_is_refused_quoting_the_value(
    fields: dict[str, object], message: str
) -> None:
    values: dict[str, object] = {"shape": (1, 28, 28), "mean": (0.5,), "std": (0.25,)} | fields
    with pytest.raises(InvalidConfigError, match=message):
        Preprocessing(**values)  # type: ignore[arg-type]


def test_the_file_records_the_data_sets_recipe_and_a_users_code_gets_the_same_inputs(
    tmp_path: Path,
) -> None:
    raw = load_dataset("digits")  # 8x8 images
    fitted = fit_to(raw, (1, 28, 28), True, "lenet-5")
    recipe = fitted.preprocessing
    assert recipe.source_size == (8, 8)
    assert recipe.classes == tuple(str(digit) for digit in range(10))
    info = save_pqz(
        build_model("lenet-5"),
        tmp_path / "m.pqz",
        architecture="lenet-5",
        num_classes=10,
        preprocessing=recipe,
    )
    assert info.input == recipe
    assert inspect_pqz(tmp_path / "m.pqz").input == recipe
    assert info.to_dict()["input"]["mean"] == list(fitted.mean)
    # The raw 8x8 test pixels, prepared as the file says, are the pipeline's own batches.
    (expected, _), *_ = batches(
        fitted, fitted.test, batch_size=len(fitted.test), device=torch.device("cpu")
    )
    assert torch.equal(recipe(raw.test.x), expected)


def test_a_file_without_a_recipe_or_with_a_broken_one(tmp_path: Path) -> None:
    model = build_model("lenet-300-100")
    assert save_pqz(model, tmp_path / "plain.pqz", architecture="lenet-300-100", num_classes=10)
    assert inspect_pqz(tmp_path / "plain.pqz").input is None
    writer = SectionWriter()
    entries = encode_model(model, writer)
    manifest = {
        "format": "pqz",
        "architecture": {"name": "lenet-300-100", "num_classes": 10},
        "dense_size_bytes": 1,
        "tensors": entries,
        "input": {"shape": [1, 28, 28], "mean": [0.5], "std": [-1.0]},
    }
    write_container(tmp_path / "broken.pqz", manifest, writer)
    with pytest.raises(CorruptArtifactError, match=r"manifest's input std must be positive"):
        inspect_pqz(tmp_path / "broken.pqz")


def test_a_file_compressed_without_data_records_the_normalize_its_user_gave(
    tmp_path: Path,
) -> None:
    cpu = torch.device("cpu")
    spec = {"arch": "lenet-5", "prune": {"sparsity": 0.5}, "quantize": {"n_iter": 2}}
    told = CompressionSpec.from_dict(spec | {"normalize": {"mean": 0.5, "std": 0.5}})
    info = compress_model(
        build_model("lenet-5"), told, tmp_path / "told.pqz", **_post_training(cpu)
    )
    assert info.input == Preprocessing((1, 28, 28), (0.5,), (0.5,))
    assert inspect_pqz(tmp_path / "told.pqz").input == info.input
    untold = compress_model(
        build_model("lenet-5"),
        CompressionSpec.from_dict(spec),
        tmp_path / "untold.pqz",
        **_post_training(cpu),
    )
    assert untold.input is None  # pqz knows nothing of the input, so the file says nothing
    # Three values for LeNet-5's one channel: refused before any work, in the spec's words.
    three = CompressionSpec.from_dict(spec | {"normalize": {"mean": [0.5] * 3, "std": [0.5] * 3}})
    with pytest.raises(InvalidConfigError, match="normalize gives 3 values per statistic, but"):
        Pipeline(build_model("lenet-5"), three, None, cpu)


def _post_training(device: torch.device) -> dict[str, Any]:
    return {"architecture": "lenet-5", "num_classes": 10, "dataset": None, "device": device}
