from __future__ import annotations

from importlib.metadata import EntryPoint
from typing import Any

import pytest
import torch

from compression import InvalidConfigError, build_model, get_architecture, list_architectures, zoo


@pytest.mark.parametrize(
    ("name", "parameters"),
    [
        ("lenet-300-100", 266_610),
        ("lenet-5", 431_080),
        ("alexnet-cifar", 5_871_434),
        ("vgg16-cifar", 15_253_578),
        ("resnet18-cifar", 11_173_962),
        ("resnet20-cifar", 269_722),
    ],
)
def test_built_in_networks_have_their_papers_sizes_and_run(name: str, parameters: int) -> None:
    arch = get_architecture(name)
    assert zoo.count_parameters(arch) == parameters
    model = build_model(name, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, *arch.input_shape))
    assert out.shape == (2, 7)


def test_torchvision_architectures_build_with_num_classes() -> None:
    model = build_model("resnet18", num_classes=5)
    assert model.fc.out_features == 5
    names = [arch.name for arch in list_architectures()]
    assert "mobilenet_v2" in names
    assert names[:6] == [arch.name for arch in zoo.BUILT_IN]


def test_unknown_architecture_is_a_clear_error() -> None:
    with pytest.raises(InvalidConfigError, match="unknown architecture 'lenet-6'"):
        build_model("lenet-6")


@pytest.fixture
def plugin_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    points = [
        EntryPoint(
            "tiny-plugin",
            "tests.compression.plugin_architecture:TINY_PLUGIN",
            zoo.ENTRY_POINT_GROUP,
        ),
        EntryPoint(
            "broken",
            "tests.compression.plugin_architecture:NOT_AN_ARCHITECTURE",
            zoo.ENTRY_POINT_GROUP,
        ),
        EntryPoint("missing", "tests.no_such_module:THING", zoo.ENTRY_POINT_GROUP),
    ]

    def entry_points(**kwargs: Any) -> list[EntryPoint]:
        return points if kwargs.get("group") == zoo.ENTRY_POINT_GROUP else []

    monkeypatch.setattr(zoo, "entry_points", entry_points)
    zoo._plugin_architectures.cache_clear()
    yield
    zoo._plugin_architectures.cache_clear()


@pytest.mark.usefixtures("plugin_entry_points")
def test_entry_point_architectures_join_the_registry() -> None:
    model = build_model("tiny-plugin")
    assert model(torch.randn(2, 16)).shape == (2, 3)
    assert "tiny-plugin" in [arch.name for arch in list_architectures()]
    with pytest.raises(InvalidConfigError, match="'broken' cannot be used: .* not an Architecture"):
        build_model("broken")
    with pytest.raises(InvalidConfigError, match="'missing' cannot be used: .*failed to load"):
        build_model("missing")
