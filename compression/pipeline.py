"""The thesis pipeline as stages: baseline, prune (scan + retrain), quantize, fine-tune, package.

`compress_model` runs them in order for the `pqz compress` command; the service's worker drives
the same stages and turns the `progress` callback into job events. Every stage's accuracy,
sparsity and duration goes into the `.pqz` manifest.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from compression.config import CompressionSpec, TrainConfig
from compression.data import Dataset
from compression.finetune import finetune
from compression.pq import quantize_
from compression.pqz import PqzInfo, save_pqz
from compression.prune import get_mask, prunable_layers, prune_, weight_of
from compression.scan import prune_by_scan_
from compression.train import evaluate, train

STAGES = ("baseline", "prune", "quantize", "finetune", "package")
StageProgress = Callable[[str, float, str], None]  # (stage, fraction of the stage, message)


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of zeros over all Linear and Conv2d weights."""
    zeros = total = 0
    for _, module, _ in prunable_layers(model):
        weight = weight_of(module)
        zeros += int((weight == 0).sum())
        total += weight.numel()
    return zeros / max(total, 1)


def compress_model(
    model: nn.Module,
    spec: CompressionSpec,
    output: str | os.PathLike[str],
    *,
    architecture: str,
    num_classes: int,
    dataset: Dataset | None,
    device: torch.device,
    progress: StageProgress | None = None,
) -> PqzInfo:
    """Compress `model` in place by `spec` and write the `.pqz`; returns what was written."""

    def report(stage: str) -> Callable[[float, str], None]:
        return lambda fraction, message: progress(stage, fraction, message) if progress else None

    model.to(device).eval()
    metrics: dict[str, Any] = {
        "mode": "pipeline" if dataset is not None else "post-training",
        "device": str(device),
        "duration_s": {},
    }
    durations: dict[str, float] = metrics["duration_s"]
    teacher = None

    def timed(stage: str, started: float) -> None:
        durations[stage] = round(time.perf_counter() - started, 3)
        report(stage)(1.0, f"done in {durations[stage]:.1f} s")

    if dataset is not None:
        started = time.perf_counter()
        report("baseline")(0.0, "evaluating the uncompressed model")
        metrics["data"] = dataset.name
        metrics["baseline"] = _accuracies(model, dataset, device)
        if spec.finetune.distill:
            teacher = copy.deepcopy(model)
        timed("baseline", started)

    started = time.perf_counter()
    if spec.prune is not None:
        metrics["prune"] = _prune(model, spec, dataset, device, report("prune"))
    timed("prune", started)

    started = time.perf_counter()
    report("quantize")(0.0, f"{spec.quantize.method} on {len(prunable_layers(model))} layers")
    layers = quantize_(model, spec.quantize)
    metrics["quantize"] = {"layers": [dataclasses.asdict(layer) for layer in layers]}
    if dataset is not None:
        metrics["quantize"]["val_accuracy"] = evaluate(model, dataset, dataset.val, device=device)
    timed("quantize", started)

    if dataset is not None:
        started = time.perf_counter()
        losses = finetune(
            model,
            dataset,
            spec.finetune,
            device=device,
            seed=spec.seed,
            teacher=teacher,
            progress=report("finetune"),
        )
        metrics["finetune"] = {"epoch_loss": losses}
        metrics["final"] = _accuracies(model, dataset, device)
        metrics["accuracy_drop"] = (
            metrics["baseline"]["test_accuracy"] - metrics["final"]["test_accuracy"]
        )
        timed("finetune", started)

    metrics["weight_sparsity"] = weight_sparsity(model)
    started = time.perf_counter()
    report("package")(0.0, f"writing {output}")
    info = save_pqz(
        model,
        output,
        architecture=architecture,
        num_classes=num_classes,
        spec=spec.to_dict(),
        metrics=metrics,
    )
    timed("package", started)
    return info


def _accuracies(model: nn.Module, dataset: Dataset, device: torch.device) -> dict[str, float]:
    return {
        "val_accuracy": evaluate(model, dataset, dataset.val, device=device),
        "test_accuracy": evaluate(model, dataset, dataset.test, device=device),
        "test_samples": len(dataset.test),
    }


def _prune(
    model: nn.Module,
    spec: CompressionSpec,
    dataset: Dataset | None,
    device: torch.device,
    report: Callable[[float, str], None],
) -> dict[str, Any]:
    config = spec.prune
    assert config is not None
    retrain = TrainConfig(epochs=config.retrain_epochs, lr=config.retrain_lr)
    fixed = config.sparsity is not None or config.threshold is not None
    if dataset is None or fixed:
        report(0.0, "pruning by magnitude")
        layers = prune_(model, config)
        result: dict[str, Any] = {"layers": [dataclasses.asdict(layer) for layer in layers]}
        if dataset is not None and config.retrain_epochs > 0:
            train(model, dataset, retrain, device=device, seed=spec.seed, progress=report)
            result["val_accuracy"] = evaluate(model, dataset, dataset.val, device=device)
        result["sparsity"] = weight_sparsity(model)
        return result

    limit = config.scan_samples or None

    def scan_score(candidate: nn.Module) -> float:
        return evaluate(candidate, dataset, dataset.val, device=device, limit=limit)

    def val_score(candidate: nn.Module) -> float:
        return evaluate(candidate, dataset, dataset.val, device=device)

    def retrain_round(candidate: nn.Module, round_index: int) -> None:
        train(
            candidate,
            dataset,
            retrain,
            device=device,
            seed=spec.seed + round_index,
            progress=report,
        )

    scan = prune_by_scan_(
        model,
        config,
        scan_score=scan_score,
        val_score=val_score,
        retrain=retrain_round,
        report=report,
    )
    return {
        **scan.to_dict(),
        "sparsity": weight_sparsity(model),
        "layers": {
            name: 1.0 - float(mask.float().mean())
            for name, module, _ in prunable_layers(model)
            if (mask := get_mask(module)) is not None
        },
    }
