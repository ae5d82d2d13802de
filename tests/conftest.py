"""Shared test setup: torch on at most two threads, seeded, and tiny models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

torch.set_num_threads(2)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


class TinyNet(nn.Module):
    """A conv and two linear layers: every code path of pqz, in a few thousand weights."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc1 = nn.Linear(8 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))  # (batch, 8, 8, 8)
        x = nn.functional.max_pool2d(x, 2).flatten(1)  # (batch, 128)
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.fixture
def tiny_net() -> TinyNet:
    return TinyNet().eval()
