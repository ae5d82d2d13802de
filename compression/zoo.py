"""The architecture registry: built-in networks, torchvision's classifiers, and plug-ins.

A team adds its own architecture through the entry point group `pqz.architectures`; each entry
point names an `Architecture` object:

    [project.entry-points."pqz.architectures"]
    my-net = "my_package.models:MY_NET"
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points

import torch
from torch import nn

from compression import nets
from compression.errors import InvalidConfigError

ENTRY_POINT_GROUP = "pqz.architectures"


@dataclass(frozen=True, kw_only=True, slots=True)
class Architecture:
    """A named network: how to build it for `num_classes` and what input it takes."""

    name: str
    build: Callable[[int], nn.Module]
    input_shape: tuple[int, ...]  # (channels, height, width) or (features,)
    num_classes: int = 10
    source: str = "pqz"
    description: str = ""
    resizes_input: bool = False  # other image sizes are resized to input_shape (documented)

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise InvalidConfigError(f"architecture name {self.name!r} must be a non-empty string")
        if self.num_classes < 1:
            raise InvalidConfigError(
                f"num_classes {self.num_classes} of '{self.name}' must be >= 1"
            )


BUILT_IN = (
    Architecture(
        name="lenet-300-100",
        build=nets.LeNet300100,
        input_shape=(1, 28, 28),
        description="LeNet-300-100, 784-300-100-10 fully connected (MNIST; resizes to 28x28)",
        resizes_input=True,
    ),
    Architecture(
        name="lenet-5",
        build=nets.LeNet5,
        input_shape=(1, 28, 28),
        description="Caffe LeNet-5, 20-50 5x5 convolutions, 500 hidden (MNIST; resizes to 28x28)",
        resizes_input=True,
    ),
    Architecture(
        name="alexnet-cifar",
        build=nets.AlexNetCifar,
        input_shape=(3, 32, 32),
        description="AlexNet, five convolutions and three fully connected layers (CIFAR)",
    ),
    Architecture(
        name="vgg16-cifar",
        build=nets.VGG16Cifar,
        input_shape=(3, 32, 32),
        description="VGG-16 with batch norm, 512-512 classifier (CIFAR)",
    ),
    Architecture(
        name="resnet18-cifar",
        build=nets.resnet18_cifar,
        input_shape=(3, 32, 32),
        description="ResNet-18 with a 3x3 stem (CIFAR)",
    ),
    Architecture(
        name="resnet20-cifar",
        build=nets.resnet20_cifar,
        input_shape=(3, 32, 32),
        description="He et al.'s ResNet-20, option A shortcuts (CIFAR)",
    ),
)


def _torchvision_build(name: str) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        import torchvision

        model: nn.Module = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        return model

    return build


@functools.cache
def _torchvision_architectures() -> tuple[Architecture, ...]:
    import torchvision

    names = sorted(torchvision.models.list_models(module=torchvision.models))
    shape = {"inception_v3": (3, 299, 299)}
    return tuple(
        Architecture(
            name=name,
            build=_torchvision_build(name),
            input_shape=shape.get(name, (3, 224, 224)),
            num_classes=1000,
            source="torchvision",
            description=f"torchvision.models.{name}",
        )
        for name in names
    )


@functools.cache
def _plugin_architectures() -> tuple[tuple[Architecture, ...], dict[str, str]]:
    """Load the entry points once; a broken plug-in is reported under its name, not raised here."""
    found: list[Architecture] = []
    broken: dict[str, str] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            value = entry.load()
        except Exception as error:  # a plug-in's import can fail in any way
            broken[entry.name] = f"entry point {entry.value!r} failed to load: {error}"
            continue
        if not isinstance(value, Architecture):
            broken[entry.name] = (
                f"entry point {entry.value!r} is a {type(value).__name__}, not an Architecture"
            )
            continue
        found.append(value)
    return tuple(found), broken


def list_architectures() -> list[Architecture]:
    """Every known architecture: built-in first, then plug-ins, then torchvision's."""
    plugins, _ = _plugin_architectures()
    seen: dict[str, Architecture] = {}
    for arch in (*BUILT_IN, *plugins, *_torchvision_architectures()):
        seen.setdefault(arch.name, arch)
    return list(seen.values())


def get_architecture(name: str) -> Architecture:
    for arch in BUILT_IN:
        if arch.name == name:
            return arch
    plugins, broken = _plugin_architectures()
    for arch in plugins:
        if arch.name == name:
            return arch
    if name in broken:
        raise InvalidConfigError(f"architecture '{name}' cannot be used: {broken[name]}")
    for arch in _torchvision_architectures():
        if arch.name == name:
            return arch
    built_in = ", ".join(arch.name for arch in BUILT_IN)
    raise InvalidConfigError(
        f"unknown architecture '{name}' (built in: {built_in}; `pqz zoo` lists all)"
    )


def build_model(name: str, num_classes: int | None = None) -> nn.Module:
    """A freshly initialised network of the named architecture."""
    arch = get_architecture(name)
    classes = arch.num_classes if num_classes is None else num_classes
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
        raise InvalidConfigError(f"num_classes {classes!r} must be a positive integer")
    return arch.build(classes)


def count_parameters(arch: Architecture) -> int | None:
    """Parameter count for the default num_classes, without allocating weights; None if unknown."""
    if arch.source == "torchvision":
        import torchvision

        try:
            weights = torchvision.models.get_model_weights(arch.name)
            return int(next(iter(weights)).meta["num_params"])
        except (ValueError, StopIteration, KeyError):
            return None
    try:
        with torch.device("meta"):
            model = arch.build(arch.num_classes)
    except Exception:  # a plug-in may not build on the meta device
        return None
    return sum(parameter.numel() for parameter in model.parameters())
