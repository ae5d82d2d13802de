"""Checkpoint intake in a separate process with memory and time limits (DESIGN.md section 5).

The parent never unpickles anything: the child reads the upload with `weights_only=True` (or
safetensors), checks it against the architecture, and hands back a safetensors file.

    python -m worker.intake CHECKPOINT OUT.safetensors --arch NAME [--num-classes N]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
from pathlib import Path

import torch

from compression.errors import InvalidCheckpointError

INVALID = 3  # exit status of a refused checkpoint; its message is the last line of stderr


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
    """The checked state dict, read by a child process; InvalidCheckpointError otherwise."""
    from safetensors.torch import load_file

    command = [sys.executable, "-m", "worker.intake", str(checkpoint), str(out), "--arch", arch]
    command += ["--max-bytes", str(max_bytes)]
    if num_classes is not None:
        command += ["--num-classes", str(num_classes)]

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))

    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            preexec_fn=limit,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise InvalidCheckpointError(
            f"reading the checkpoint took longer than {timeout_s:g} s"
        ) from None
    if done.returncode == INVALID:
        lines = done.stderr.strip().splitlines()
        raise InvalidCheckpointError(lines[-1] if lines else "the checkpoint was refused")
    if done.returncode != 0:
        if "MemoryError" in done.stderr or done.returncode < 0:
            raise InvalidCheckpointError(
                f"reading the checkpoint needed more than {memory_bytes} bytes of memory or crashed"
            )
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"checkpoint intake failed ({done.returncode}): {tail[0]}")
    return load_file(str(out))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--arch", required=True)
    parser.add_argument("--num-classes", type=int)
    parser.add_argument("--max-bytes", type=int, required=True)
    args = parser.parse_args()
    from safetensors.torch import save_file

    from compression import CompressionError, build_model, check_state_dict, read_checkpoint

    try:
        state = read_checkpoint(args.checkpoint, max_bytes=args.max_bytes)
        check_state_dict(build_model(args.arch, args.num_classes), state, args.arch)
    except CompressionError as error:
        print(error, file=sys.stderr)
        return INVALID
    save_file({name: tensor.contiguous() for name, tensor in state.items()}, str(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
