"""Inference speed of compressed models: the decoded dense fp32 model against the runtime.

    python bench/inference.py                          # every row, CPU, 2 threads
    python bench/inference.py --rows vgg16-cifar --batches 1 --threads 1
    python bench/inference.py --device cuda

Each model is pruned to 90% (magnitude, per layer) and product-quantized with pqz's defaults,
saved as `.pqz`, then measured by `compression.runtime.benchmark` (the code behind
`pqz bench-infer`): dense and compressed latency interleaved in one run, peak memory, and the
top-1 agreement of the two on real test images (CIFAR-10 JPEG copy; resized to 224x224 for
torchvision's AlexNet). The runtime calibrates on 64 training images. Weights are the
architecture's initialisation unless --checkpoints holds `<arch>.pt` state dicts (the table
says which): timing does not depend on training, agreement is harder on untrained logits.
Targets (issue 5): >= 3x at batch 1 and >= 1.5x at batch 64 for the AlexNets and VGG-16, no
model slower than dense, top-1 agreement >= 99.5%.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import datasets

from compression import PruneConfig, QuantConfig, build_model, prune_, quantize_, save_pqz
from compression.checkpoint import load_checkpoint
from compression.data import Dataset, Split, batches, fit_to, load_dataset
from compression.runtime.benchmark import benchmark_inference

ROWS = {
    "alexnet": 1000,  # torchvision's ImageNet AlexNet, the model of Q-CNN's 3.03x
    "alexnet-cifar": 10,
    "vgg16-cifar": 10,
    "lenet-300-100": 10,  # tiny layers: the runtime must stay dense, not get slower
}
TARGETED = {"alexnet", "alexnet-cifar", "vgg16-cifar"}
CALIBRATION_ROWS = 64


def data_for(arch: str, dataset: Dataset, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(64 training images, `samples` test images), normalised and sized for `arch`."""
    small = dataclasses.replace(
        dataset,
        train=Split(dataset.train.x[:CALIBRATION_ROWS], dataset.train.y[:CALIBRATION_ROWS]),
        val=Split(dataset.val.x[:1], dataset.val.y[:1]),
        test=Split(dataset.test.x[:samples], dataset.test.y[:samples]),
    )
    if arch == "lenet-300-100":  # 28x28 grey: CIFAR in grey, resized as LeNets document
        grey = dataclasses.replace(
            small,
            train=_grey(small.train),
            val=_grey(small.val),
            test=_grey(small.test),
            mean=(sum(small.mean) / 3,),
            std=(sum(small.std) / 3,),
        )
        small = fit_to(grey, (1, 28, 28), True, arch)
    elif arch == "alexnet":
        small = fit_to(small, (3, 224, 224), True, arch)
    cpu = torch.device("cpu")
    calibration = next(batches(small, small.train, batch_size=CALIBRATION_ROWS, device=cpu))[0]
    test = next(batches(small, small.test, batch_size=samples, device=cpu))[0]
    return calibration, test


def _grey(split: Split) -> Split:
    return Split(split.x.float().mean(dim=1, keepdim=True).round().to(torch.uint8), split.y)


def compressed_file(
    arch: str, classes: int, workdir: Path, checkpoints: Path | None
) -> tuple[Path, str]:
    source = "initialisation"
    checkpoint = checkpoints / f"{arch}.pt" if checkpoints else None
    if checkpoint is not None and checkpoint.is_file():
        model = load_checkpoint(checkpoint, arch, classes)
        source = f"trained ({checkpoint.name})"
    else:
        torch.manual_seed(0)
        model = build_model(arch, classes)
    path = workdir / f"{arch}-p90-pq.pqz"
    model.eval()
    prune_(model, PruneConfig(sparsity=0.9))
    quantize_(model, QuantConfig())
    save_pqz(model, path, architecture=arch, num_classes=classes)
    return path, source


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated architectures")
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--samples", type=int, default=1000, help="test images for agreement")
    parser.add_argument("--workdir", type=Path, default=Path("var/inference"))
    parser.add_argument("--checkpoints", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)
    cifar = load_dataset(str(datasets.cifar10_folder(Path("var/data"))), seed=0)
    sizes = tuple(int(size) for size in args.batches.split(","))
    table = []
    for arch in args.rows.split(","):
        started = time.perf_counter()
        path, source = compressed_file(arch, ROWS[arch], args.workdir, args.checkpoints)
        calibration, test = data_for(arch, cifar, args.samples)
        results = benchmark_inference(
            path,
            batches=sizes,
            device=args.device,
            example_inputs=calibration,
            eval_inputs=test,
            cache_path=args.workdir / "autotune.json",
        )
        for result in results:
            row = {"arch": arch, "weights": source, **result.to_dict()}
            row["wall_s"] = time.perf_counter() - started
            table.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    print_table(table, args.device, args.threads)
    if args.json:
        args.json.write_text(json.dumps(table, indent=2))


def print_table(table: list[dict[str, object]], device: str, threads: int) -> None:
    where = f"{device}, {threads} thread{'s' if threads > 1 else ''}" if device == "cpu" else device
    print(f"\nInference, dense fp32 against the pqz runtime ({where}), 90% pruned + PQ\n")
    print(
        "| model | weights | batch | dense ms | compressed ms | speed-up | target | "
        "dense peak MiB | compressed peak MiB | top-1 agreement | kernels |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in table:
        arch, batch = row["arch"], row["batch"]
        target = "-"
        if arch in TARGETED:
            target = ">= 3x" if batch == 1 else ">= 1.5x"
        else:
            target = ">= 1x (not slower)"
        kernels = ", ".join(f"{k} {v}" for k, v in sorted(row["kernels"].items()))  # type: ignore[attr-defined]
        agreement = row["agreement"]
        agreed = "-" if agreement is None else f"{agreement:.2%} of {row['agreement_n']}"
        print(
            f"| {arch} | {row['weights']} | {batch} | {row['dense_ms']:.3f} | "
            f"{row['compressed_ms']:.3f} | {row['speedup']:.2f}x | {target} | "
            f"{_mib(row['dense_peak_bytes'])} | {_mib(row['compressed_peak_bytes'])} | "
            f"{agreed} | "
            f"{kernels} |"
        )


def _mib(value: object) -> str:
    return "-" if not isinstance(value, int) else f"{value / 2**20:.1f}"


if __name__ == "__main__":
    main()
