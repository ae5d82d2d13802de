"""The thesis pipeline as stages: baseline, prune (scan + retrain), finish, package.

`Pipeline` holds one model through its stages, each a method that a caller can drive on its
own (the service's worker records a job event per stage through `progress`);
`compress_model` runs them all for `pqz compress`. `finish` quantizes and fine-tunes, backing
off to earlier pruning states until the finished model keeps `max_accuracy_drop`
(compression.promise). Every stage's accuracy, sparsity and duration goes into the `.pqz`
manifest, and every accuracy drop comes with its paired 95% interval (compression.paired).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compression.config import CompressionSpec, Normalize, TrainConfig, check_patterns
from compression.data import Dataset, normalized
from compression.finetune import finetune
from compression.finish import finish as finish_stage
from compression.pq import LayerQuantization, default_block_size, quantize_
from compression.pqz import PqzInfo, save_pqz
from compression.preprocessing import Preprocessing
from compression.promise import Start
from compression.prune import (
    clone_model,
    get_mask,
    prunable_layers,
    prune_,
    stored_weight,
    weight_sparsity,
)
from compression.scan import Step, prune_by_scan_
from compression.train import evaluate, predictions_correct, train
from compression.zoo import get_architecture

StageProgress = Callable[[str, float, str], None]  # (stage, fraction of the stage, message)


def _mean(verdicts: torch.Tensor) -> float:
    return int(verdicts.sum()) / max(verdicts.numel(), 1)  # as `evaluate` counts


def declared_input(architecture: str, normalize: Normalize | None) -> Preprocessing | None:
    """What a file compressed without data records of its input: the architecture's image
    shape and the spec's `normalize`, the one thing about the input its user told pqz. None
    where there is no `normalize` or the architecture takes no images."""
    if normalize is None:
        return None
    shape = get_architecture(architecture).input_shape
    if len(shape) != 3:
        return None
    mean, std = normalize.for_channels(shape[0])
    return Preprocessing((shape[0], shape[1], shape[2]), mean, std)


def prune_block_sizes(model: nn.Module, spec: CompressionSpec) -> dict[str, int]:
    """Per layer, how many consecutive weights are pruned together: the quantizer's sub-vector
    size, so that a sub-vector is kept or pruned whole and the mask costs a quarter as much with
    d = 4 (1 for scalar k-means and for layers the quantizer skips)."""
    sizes = {}
    for name, module, type_name in prunable_layers(model):
        rule = spec.quantize.rule_for(name, type_name)
        if rule is None or rule.method == "kmeans":
            sizes[name] = 1
        else:
            sizes[name] = rule.block_size or default_block_size(module)
    return sizes


@dataclasses.dataclass(slots=True)
class Pipeline:
    """One model on its way to a `.pqz`; `metrics` fills up stage by stage."""

    model: nn.Module
    spec: CompressionSpec
    dataset: Dataset | None
    device: torch.device
    progress: StageProgress | None = None
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    teacher: nn.Module | None = None
    # The kept pruning states, most compressed first: what `finish` backs off to.
    starts: list[Start] = dataclasses.field(default_factory=list)
    # The baseline's verdict on each image of a split ("val", "test"), for paired comparisons.
    verdicts: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    # The model as it came, kept by `baseline`: the teacher of distillation, and the baseline
    # that the confirm split judges against (only then, so nothing sees that split earlier).
    uncompressed: nn.Module | None = None

    def __post_init__(self) -> None:
        # Layer patterns that match nothing are refused now, not after hours of pruning.
        names = [name for name, _, _ in prunable_layers(self.model)]
        if self.spec.prune is not None:
            check_patterns(self.spec.prune.modules, names, "prune.modules")
        check_patterns(self.spec.quantize.modules, names, "quantize.modules")
        if self.dataset is not None:
            self.dataset = normalized(self.dataset, self.spec.normalize)
        elif self.spec.arch is not None:
            declared_input(self.spec.arch, self.spec.normalize)  # a bad channel count fails now
        self.model.to(self.device).eval()
        self.metrics.setdefault("mode", "pipeline" if self.dataset is not None else "post-training")
        self.metrics.setdefault("device", str(self.device))
        self.metrics.setdefault("duration_s", {})

    def fork(self, spec: CompressionSpec) -> Pipeline:
        """A copy of this pipeline's model and metrics that goes on with another spec."""
        return Pipeline(
            clone_model(self.model),
            spec,
            self.dataset,
            self.device,
            self.progress,
            copy.deepcopy(self.metrics),
            self.teacher,
            list(self.starts),
            dict(self.verdicts),
            self.uncompressed,
        )

    def report(self, stage: str) -> Callable[[float, str], None]:
        def send(fraction: float, message: str) -> None:
            if self.progress is not None:
                self.progress(stage, fraction, message)

        return send

    def _done(self, stage: str, started: float) -> None:
        self.metrics["duration_s"][stage] = round(time.perf_counter() - started, 3)
        self.report(stage)(1.0, f"done in {self.metrics['duration_s'][stage]:.1f} s")

    def baseline(self) -> None:
        if self.dataset is None:
            return
        started = time.perf_counter()
        self.report("baseline")(0.0, "evaluating the uncompressed model")
        self.metrics["data"] = self.dataset.name
        for split in ("val", "test"):
            self.verdicts[split] = self.correct(self.model, split)
        self.metrics["baseline"] = {
            "val_accuracy": _mean(self.verdicts["val"]),
            "test_accuracy": _mean(self.verdicts["test"]),
            "test_samples": len(self.dataset.test),
        }
        prune = self.spec.prune
        splits = {"validation": len(self.dataset.val)}
        if self.dataset.confirm is not None:
            splits["confirm"] = len(self.dataset.confirm)
        for split, images in splits.items():
            if prune is not None and images and 1 / images > prune.max_accuracy_drop:
                self.warn(
                    "baseline",
                    f"the {split} split has {images} image{'s' if images != 1 else ''}, so one "
                    f"image is {100 / images:.2f} points, more than the "
                    f"{100 * prune.max_accuracy_drop:.2f} that max_accuracy_drop "
                    f"{prune.max_accuracy_drop} allows: one image lost there misses the "
                    "tolerance, so the decisions made on it are coarse (more data, or a larger "
                    "max_accuracy_drop)",
                )
        self.uncompressed = clone_model(self.model).eval()
        if self.spec.finetune.distill or (prune is not None and prune.distill):
            self.teacher = self.uncompressed
        self._done("baseline", started)

    def prune(self) -> None:
        started = time.perf_counter()
        if self.spec.prune is not None:
            self.metrics["prune"] = self._prune()
        self._done("prune", started)

    def quantize(self) -> None:
        started = time.perf_counter()
        if self.dataset is not None and self.spec.finetune.layerwise_epochs > 0:
            results = self._quantize_layerwise()
        else:
            layers = prunable_layers(self.model)
            self.report("quantize")(0.0, f"{self.spec.quantize.method} on {len(layers)} layers")
            results = quantize_(self.model, self.spec.quantize)
        self.metrics["quantize"] = {"layers": [dataclasses.asdict(layer) for layer in results]}
        for layer in results:
            if layer.note:  # why a layer is not plain PQ, as an event a service user sees too
                self.report("quantize")(1.0, f"{layer.name}: {layer.note}")
        if self.dataset is not None:
            accuracy = evaluate(self.model, self.dataset, self.dataset.val, device=self.device)
            self.metrics["quantize"]["val_accuracy"] = accuracy
        self._done("quantize", started)

    def finetune(self) -> None:
        if self.dataset is None:
            return
        started = time.perf_counter()
        losses = finetune(
            self.model,
            self.dataset,
            self.spec.finetune,
            device=self.device,
            seed=self.spec.seed,
            teacher=self.teacher,
            progress=self.report("finetune"),
            augment=self.spec.augment,
        )
        self.metrics["finetune"] = {"epoch_loss": losses}
        self._done("finetune", started)

    def finish(self) -> None:
        """Quantize and fine-tune; with data and a tolerance, back off to earlier pruning
        states until the finished model keeps it (see compression.finish)."""
        finish_stage(self)

    def warn(self, stage: str, warning: str) -> None:
        """Kept in the manifest's metrics, and said as an event (the CLI prints it)."""
        self.metrics.setdefault("warnings", []).append(warning)
        self.report(stage)(1.0, f"warning: {warning}")

    def package(
        self, output: str | os.PathLike[str], *, architecture: str, num_classes: int
    ) -> PqzInfo:
        started = time.perf_counter()
        self.report("package")(0.0, f"writing {Path(output).name}")
        self.metrics["weight_sparsity"] = weight_sparsity(self.model)
        info = save_pqz(
            self.model,
            output,
            architecture=architecture,
            num_classes=num_classes,
            spec=self.spec.to_dict(),
            metrics=self.metrics,
            preprocessing=declared_input(architecture, self.spec.normalize)
            if self.dataset is None
            else self.dataset.preprocessing,
        )
        self._done("package", started)
        return info

    def _quantize_layerwise(self) -> list[LayerQuantization]:
        """One layer at a time, input side first, with training between (FinetuneConfig)."""
        assert self.dataset is not None
        report = self.report("quantize")
        modules = {name: module for name, module, _ in prunable_layers(self.model)}
        names = list(modules)
        results: list[LayerQuantization] = []
        # A layer kept in float is final once reached (it was rounded to what the file stores).
        settled: list[torch.Tensor] = []
        try:
            for index, name in enumerate(names):
                report(index / len(names), f"{self.spec.quantize.method} on {name}")
                layer = quantize_(self.model, self.spec.quantize, names={name})
                results += layer
                if layer[0].encoding not in ("pq", "kmeans"):
                    weight = stored_weight(modules[name])
                    if weight.requires_grad:
                        weight.requires_grad_(False)
                        settled.append(weight)
                    continue
                if index < len(names) - 1:  # the last layer's error is left to fine-tuning
                    self._train_between(names, index, report)
        finally:
            for weight in settled:
                weight.requires_grad_(True)
        return results

    def _train_between(
        self, names: list[str], index: int, report: Callable[[float, str], None]
    ) -> None:
        assert self.dataset is not None
        # Every parameter trains between steps: the float layers are the ones that compensate.
        between = dataclasses.replace(
            self.spec.finetune, epochs=self.spec.finetune.layerwise_epochs, scope="all"
        )

        def within_step(fraction: float, message: str) -> None:
            report((index + fraction) / len(names), f"{message} (after {names[index]})")

        epochs = f"{between.epochs:g} epoch{'' if between.epochs == 1 else 's'}"
        report(index / len(names), f"{names[index]} quantized; training for {epochs}")
        finetune(
            self.model,
            self.dataset,
            between,
            device=self.device,
            seed=self.spec.seed + index,
            teacher=self.teacher,
            progress=within_step,
            augment=self.spec.augment,
        )

    def correct(self, model: nn.Module, split: str) -> torch.Tensor:
        """Per image of the data set's `split` ("val", "confirm", "test"), whether `model` is
        right: (n,) bool."""
        assert self.dataset is not None
        part = getattr(self.dataset, split)
        return predictions_correct(model, self.dataset, part, device=self.device)

    def _prune(self) -> dict[str, Any]:
        config, dataset, device, model = self.spec.prune, self.dataset, self.device, self.model
        assert config is not None
        report = self.report("prune")
        retrain = TrainConfig(
            epochs=config.retrain_epochs, lr=config.retrain_lr, augment=self.spec.augment
        )
        teacher = self.teacher if config.distill else None
        block_sizes = prune_block_sizes(model, self.spec)
        if dataset is None or config.sparsity is not None or config.threshold is not None:
            report(0.0, "pruning by magnitude")
            layers = prune_(model, config, block_sizes=block_sizes)
            result: dict[str, Any] = {"layers": [dataclasses.asdict(layer) for layer in layers]}
            if dataset is not None and config.retrain_epochs > 0:
                train(
                    model,
                    dataset,
                    retrain,
                    device=device,
                    seed=self.spec.seed,
                    teacher=teacher,
                    progress=report,
                )
                result["val_accuracy"] = evaluate(model, dataset, dataset.val, device=device)
            result["sparsity"] = weight_sparsity(model)
            return result

        limit = config.scan_samples or None

        def scan_score(candidate: nn.Module) -> float:
            return evaluate(candidate, dataset, dataset.val, device=device, limit=limit)

        def val_score(candidate: nn.Module) -> float:
            return evaluate(candidate, dataset, dataset.val, device=device)

        def retrain_round(candidate: nn.Module, round_index: int, before_step: Step | None) -> None:
            def within_round(fraction: float, message: str) -> None:
                # The stage's progress runs over the rounds: retraining is a slice of one.
                report(
                    (round_index + fraction) / config.rounds, f"{message} (round {round_index + 1})"
                )

            train(
                candidate,
                dataset,
                retrain,
                device=device,
                seed=self.spec.seed + round_index,
                teacher=teacher,
                progress=within_round,
                before_step=before_step,
            )

        def keep(round_kept: int) -> None:
            sparsity = weight_sparsity(model)
            label = f"pruning round {round_kept}" if round_kept else "the unscanned model"
            if not round_kept and sparsity == 0:
                label = "the unpruned model"
            state = {key: value.detach().cpu().clone() for key, value in model.state_dict().items()}
            self.starts.insert(0, Start(label, sparsity, state))

        scan = prune_by_scan_(
            model,
            config,
            scan_score=scan_score,
            val_score=val_score,
            retrain=retrain_round,
            report=report,
            block_sizes=block_sizes,
            keep=keep,
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
    """Compress `model` in place by `spec`, every stage in order, and write the `.pqz`."""
    pipeline = Pipeline(model, spec, dataset, device, progress)
    pipeline.baseline()
    pipeline.prune()
    pipeline.finish()
    return pipeline.package(output, architecture=architecture, num_classes=num_classes)
