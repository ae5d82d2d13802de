"""Checkpoint intake in a separate process with memory and time limits (DESIGN.md section 5).

The job's process never unpickles anything: a forked child reads the upload with
`weights_only=True` (or safetensors) under an address-space limit, checks it against the
architecture, and hands back a safetensors file. Forking (rather than starting a new
interpreter) saves the child a fresh torch import, seconds per job; the child touches no CUDA,
no database and no lock.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import time
from pathlib import Path

import torch

from compression.errors import InvalidCheckpointError


def read_checkpoint_isolated(
    checkpoint: Path,
    out: Path,
    *,
    arch: str,
    num_classes: int | None,
    max_bytes: int,
    memory_bytes: int,
    timeout_s: float,
) -> dict[str, torch.Tensor]:
    """The checked state dict, read by a child process; InvalidCheckpointError otherwise.

    `memory_bytes` is how much address space the child may add to what it inherits (free heap
    it inherits can be reused on top).
    """
    from safetensors.torch import load_file

    # os.fork, not multiprocessing: Celery's pool processes are daemonic, and multiprocessing
    # refuses children to those.
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's code
        try:
            os.close(read_end)
            outcome, message = _read(
                str(checkpoint), str(out), arch, num_classes, max_bytes, memory_bytes
            )
            # Short, so that it fits the pipe before the parent reads it.
            with os.fdopen(write_end, "w") as channel:
                channel.write(json.dumps([outcome, message[:2000]]))
        finally:
            os._exit(0)
    os.close(write_end)
    status = _wait(pid, timeout_s)
    with os.fdopen(read_end) as channel:
        reply = channel.read()
    if status is None:
        raise InvalidCheckpointError(f"reading the checkpoint took longer than {timeout_s:g} s")
    outcome, message = json.loads(reply) if reply else ("crashed", f"wait status {status}")
    if outcome == "ok":
        return load_file(str(out))
    if outcome == "invalid":
        raise InvalidCheckpointError(message)
    if outcome in ("memory", "crashed"):
        raise InvalidCheckpointError(
            f"reading the checkpoint needed more than {memory_bytes} bytes of memory or crashed"
        )
    raise RuntimeError(f"checkpoint intake failed: {message}")


def _wait(pid: int, timeout_s: float) -> int | None:
    """The child's wait status, or None after killing it at the time limit."""
    deadline = time.monotonic() + timeout_s
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None
        time.sleep(0.01)


def _read(
    checkpoint: str, out: str, arch: str, num_classes: int | None, max_bytes: int, memory_bytes: int
) -> tuple[str, str]:
    """The child: limits first, then the only code that ever looks inside an upload."""
    try:
        from safetensors.torch import save_file

        from compression import CompressionError, build_model, check_state_dict, read_checkpoint
        from compression.checkpoint import checkpoint_classes

        limit = _address_space() + memory_bytes
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        state = read_checkpoint(checkpoint, max_bytes=max_bytes)
        classes = num_classes or checkpoint_classes(state, arch)
        state = check_state_dict(build_model(arch, classes), state, arch)
        save_file({name: tensor.contiguous() for name, tensor in state.items()}, out)
    except CompressionError as error:
        return ("invalid", str(error))
    except MemoryError:
        return ("memory", "")
    except RuntimeError as error:
        # torch reports a refused allocation as a RuntimeError from its CPU allocator.
        refused = "can't allocate memory" in str(error)
        return ("memory", "") if refused else ("error", f"RuntimeError: {error}")
    except Exception as error:
        return ("error", f"{type(error).__name__}: {error}")
    return ("ok", "")


def _address_space() -> int:
    """This process's current virtual memory size in bytes."""
    with open(f"/proc/{os.getpid()}/statm") as handle:
        pages = int(handle.read().split()[0])
    return pages * os.sysconf("SC_PAGE_SIZE")
