"""Checkpoint intake in a forked child with memory and time limits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compression import InvalidCheckpointError, build_model
from worker.intake import read_checkpoint_isolated


def _save(tmp_path: Path, arch: str) -> Path:
    path = tmp_path / f"{arch}.pt"
    torch.save(build_model(arch).state_dict(), path)
    return path


def _read(
    checkpoint: Path,
    tmp_path: Path,
    arch: str,
    *,
    memory_bytes: int = 4 << 30,
    timeout_s: float = 120.0,
) -> dict[str, torch.Tensor]:
    return read_checkpoint_isolated(
        checkpoint,
        tmp_path / "out.safetensors",
        arch=arch,
        num_classes=None,
        max_bytes=1 << 30,
        memory_bytes=memory_bytes,
        timeout_s=timeout_s,
    )


def test_a_good_checkpoint_comes_back_as_tensors(tmp_path: Path) -> None:
    checkpoint = _save(tmp_path, "lenet-300-100")
    state = _read(checkpoint, tmp_path, "lenet-300-100")
    expected = torch.load(checkpoint, weights_only=True)
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[name], expected[name]) for name in state)


def test_the_memory_limit_refuses_a_checkpoint_that_needs_more(tmp_path: Path) -> None:
    # torchvision's AlexNet: 244 MB, one tensor of 151 MB. Tensors that large get fresh
    # mappings, which the limit refuses (small ones could reuse the parent's free heap).
    checkpoint = _save(tmp_path, "alexnet")
    with pytest.raises(InvalidCheckpointError, match="allocate memory|bytes of memory"):
        _read(checkpoint, tmp_path, "alexnet", memory_bytes=64 << 20)


def test_the_time_limit_stops_a_slow_read(tmp_path: Path) -> None:
    checkpoint = _save(tmp_path, "lenet-300-100")
    with pytest.raises(InvalidCheckpointError, match="took longer than 0.001 s"):
        _read(checkpoint, tmp_path, "lenet-300-100", timeout_s=0.001)
