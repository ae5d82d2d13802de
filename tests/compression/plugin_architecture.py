"""An architecture published through the `pqz.architectures` entry point group (for tests)."""

from torch import nn

from compression import Architecture


def _build(num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(16, num_classes))


TINY_PLUGIN = Architecture(name="tiny-plugin", build=_build, input_shape=(16,), num_classes=3)
NOT_AN_ARCHITECTURE = "just a string"
