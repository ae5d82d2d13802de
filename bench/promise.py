"""Does `max_accuracy_drop` hold on data no decision saw? The default spec over seeds, per row.

    python bench/promise.py                                  # both LeNets, Fashion-MNIST and MNIST 10k
    python bench/promise.py --rows lenet-5:fashion-mnist --seeds 5
    python bench/promise.py --rows lenet-300-100:fashion-mnist --set finetune.distill=true

Each seed trains its own baseline (as `pqz train --epochs 15` does; 30 epochs on the 8,000
images of the MNIST subset, with shifts there as bench/reproduce.py does) on its own split
(the data split's seed is the run's seed), then runs the default pipeline (`pqz compress CKPT
--arch A --data D`, or with `--set`'s overrides) and compares the file with its baseline on the
test split, image by image. Per row: the ratio's mean and lowest, the test drop's mean and
spread, how many seeds kept the tolerance on the test split, how many stayed within the
tolerance plus 1.96 standard errors of their own paired test comparison, how often the confirm
split's 95% interval covered the test drop, and the pipeline's wall time. Every run is printed
as a JSON line as it ends, so a long run can be read while it goes.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import reproduce

from compression import CompressionSpec, build_model
from compression.pipeline import Pipeline

ROWS = reproduce.ROWS["lenet"]
EPOCHS = {"fashion-mnist": 15, "mnist10k": 30}


def override(document: dict[str, Any], setting: str) -> None:
    """Apply one `path.to.field=value` (JSON, or a bare string) to a spec document."""
    path, _, value = setting.partition("=")
    *parents, name = path.split(".")
    target = document
    for parent in parents:
        target = target.setdefault(parent, {})
    try:
        target[name] = json.loads(value)
    except json.JSONDecodeError:  # a bare word: a string (finetune.scope=all)
        target[name] = value


def run(arch: str, data: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    dataset = reproduce.load(data, arch, args.workdir, seed, 0.1)
    augment = reproduce.AUGMENT.get(data, "auto")
    checkpoint = reproduce.baseline(
        arch, dataset, EPOCHS[data], args.workdir, device, seed, 0.1, augment, seed
    )
    model = build_model(arch, dataset.num_classes)
    model.load_state_dict(torch.load(checkpoint, weights_only=True))
    document: dict[str, Any] = {"data": data, "seed": seed, "augment": augment}
    for setting in args.set:
        override(document, setting)
    spec = CompressionSpec.from_dict(document)
    tolerance = spec.prune.max_accuracy_drop if spec.prune is not None else 0.0
    started = time.perf_counter()
    pipeline = Pipeline(model, spec, dataset, device)
    pipeline.baseline()
    pipeline.prune()
    pipeline.finish()
    output = args.workdir / f"{arch}-{dataset.name}-promise{reproduce.seed_note(seed)}.pqz"
    info = pipeline.package(output, architecture=arch, num_classes=dataset.num_classes)
    wall = time.perf_counter() - started
    metrics = info.metrics
    test, confirm = metrics["test"], metrics["confirm"]
    n, discordant = test["n"], test["lost"] + test["gained"]
    # The paired drop's standard error: sqrt(b + c - (b - c)^2 / n) / n.
    error = math.sqrt(max(discordant - (test["lost"] - test["gained"]) ** 2 / n, 0.0)) / n
    low, high = confirm["drop_ci95"]
    return {
        "model": arch,
        "data": dataset.name,
        "seed": seed,
        "compression_ratio": info.compression_ratio,
        "weight_sparsity": metrics["weight_sparsity"],
        "baseline_accuracy": test["baseline_accuracy"],
        "test_drop": test["drop"],
        "test_drop_ci95": test["drop_ci95"],
        "test_drop_se": error,
        "confirm_drop": confirm["drop"],
        "confirm_drop_ci95": confirm["drop_ci95"],
        "tolerance": tolerance,
        "tolerance_met": metrics.get("tolerance_met"),
        "kept_on_test": test["drop"] <= tolerance + 1e-12,
        "within_noise": test["drop"] <= tolerance + 1.96 * error + 1e-12,
        "confirm_covered_test": low <= test["drop"] <= high,
        "tries": len(metrics["promise"]["tries"]),
        "wall_s": round(wall, 1),
        "duration_s": metrics["duration_s"],
        "overrides": args.set,
    }


def table(runs: list[dict[str, Any]]) -> str:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for entry in runs:
        groups.setdefault((entry["model"], entry["data"]), []).append(entry)
    lines = [
        "| model | data | seeds | ratio: mean (lowest) | test drop: mean ± sd (points) | "
        "kept on test | within tol + 1.96 SE | confirm CI covers test | tries (mean) | "
        "wall (s, mean) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (model, data), group in groups.items():
        drops = [100 * entry["test_drop"] for entry in group]
        ratios = [entry["compression_ratio"] for entry in group]
        spread = statistics.stdev(drops) if len(drops) > 1 else 0.0
        count = len(group)
        lines.append(
            f"| {model} | {data} | {count} | {statistics.mean(ratios):.1f}x ({min(ratios):.1f}x) "
            f"| {statistics.mean(drops):.2f} ± {spread:.2f} "
            f"| {sum(e['kept_on_test'] for e in group)}/{count} "
            f"| {sum(e['within_noise'] for e in group)}/{count} "
            f"| {sum(e['confirm_covered_test'] for e in group)}/{count} "
            f"| {statistics.mean(e['tries'] for e in group):.1f} "
            f"| {statistics.mean(e['wall_s'] for e in group):.0f} |"
        )
    drops = [100 * entry["test_drop"] for entry in runs]
    lines.append(f"\nall {len(runs)} runs: mean test drop {statistics.mean(drops):.2f} points")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rows", default="lenet", help="lenet, or model:data pairs, comma-separated"
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], help="spec override: path=json")
    parser.add_argument("--workdir", type=Path, default=Path("var/promise"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = ROWS if args.rows == "lenet" else [tuple(r.split(":")) for r in args.rows.split(",")]
    print(
        f"# cpu capability {torch.backends.cpu.get_cpu_capability()}, {args.threads} threads, "
        f"device {args.device}",
        flush=True,
    )
    runs = []
    for arch, data in rows:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            runs.append(run(arch, data, seed, args))
            print(json.dumps(runs[-1]), flush=True)
    print(table(runs))


if __name__ == "__main__":
    main()
