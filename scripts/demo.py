"""`make demo`: the local pqz workflow end to end on a LeNet-5 checkpoint, under var/demo/
(each run replaces the last one's files).

The checkpoint is a freshly initialised LeNet-5 (no data set is needed); `pqz compress`
works the same way on a trained checkpoint of any architecture listed by `pqz zoo`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from compression import build_model, load_pqz

WORKDIR = Path("var/demo")


def pqz(*args: str) -> None:
    command = [str(Path(sys.executable).parent / "pqz"), *args]
    print(f"\n$ pqz {' '.join(args)}", flush=True)
    if subprocess.run(command, check=False).returncode != 0:
        raise SystemExit(f"pqz {args[0]} failed (its error is above)")


def main() -> int:
    WORKDIR.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = build_model("lenet-5")
    checkpoint = WORKDIR / "lenet5.pt"
    torch.save(model.state_dict(), checkpoint)
    artifact = WORKDIR / "lenet5.pqz"
    pqz("compress", str(checkpoint), "--arch", "lenet-5", "--sparsity", "0.9", "-o", str(artifact),
        "--force")  # fmt: skip
    pqz("inspect", str(artifact))
    pqz("decompress", str(artifact), "-o", str(WORKDIR / "lenet5.safetensors"), "--force")

    loaded = load_pqz(artifact)
    zeros = float((loaded.fc1.weight == 0).float().mean())
    with torch.no_grad():
        logits = loaded(torch.randn(4, 1, 28, 28))  # (batch, classes)
    print(
        f"\nload_pqz({artifact}) -> {type(loaded).__name__}: logits {tuple(logits.shape)}, "
        f"{zeros:.1%} of fc1's weights pruned"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
