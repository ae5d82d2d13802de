"""Threshold-scan pruning: per-layer sensitivity curves, then pruning rounds with retraining.

The sensitivity of a layer is validation accuracy as a function of its pruning threshold,
every other layer left as it is. A round prunes each layer to the largest threshold whose own
one-shot accuracy drop stays within a budget, retrains with the masks in force, and is kept
only if the validation accuracy stays within `max_accuracy_drop` of the baseline. A kept round
raises the budget by half; a round that goes too far is undone and retried with every layer's
step halved. Rounds stop when no layer can go further or `rounds` are spent.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from compression.config import PruneConfig, PruneRule, check_patterns, resolve_rule
from compression.prune import (
    block_scores,
    expand_blocks,
    get_mask,
    keep_largest,
    prunable_layers,
    prune_,
    weight_of,
)

LEVELS = (
    0.3,
    0.5,
    0.6,
    0.7,
    0.8,
    0.85,
    0.9,
    0.92,
    0.94,
    0.95,
    0.96,
    0.97,
    0.98,
    0.985,
    0.99,
    0.995,
)

_SCANNED = PruneRule(sparsity=0.0)  # marks "no override: scan this layer" (compared by identity)
Score = Callable[[nn.Module], float]  # model -> validation accuracy (0..1)
Step = Callable[[float], None]  # fraction of the retraining's steps done -> None
# (model, round, before each step or None) -> None, trains in place
Retrain = Callable[[nn.Module, int, Step | None], None]
Report = Callable[[float, str], None]
Keep = Callable[[int], None]  # round kept (0: before any scanned round), model in that state


@dataclass(frozen=True, slots=True)
class SensitivityCurve:
    """Validation accuracy of the model with one layer pruned at each threshold."""

    name: str
    sparsity: list[float]
    threshold: list[float]
    accuracy: list[float]


@dataclass(slots=True)
class ScanResult:
    """What the rounds did: their curves, chosen sparsities and accuracies, for the manifest."""

    baseline_accuracy: float
    final_accuracy: float = 0.0
    rounds: list[dict[str, Any]] = field(default_factory=list)
    # After the layers with fixed rules were pruned and retrained, before any scan.
    fixed_accuracy: float | None = None
    fixed_layers: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}


def sensitivity(
    model: nn.Module,
    layers: list[tuple[str, nn.Module]],
    score: Score,
    levels: tuple[float, ...] = LEVELS,
    block_sizes: Mapping[str, int] | None = None,
    stop: Callable[[float], bool] | None = None,
) -> list[SensitivityCurve]:
    """Scan each layer alone over the sparsity levels above its current one (pruning blocks of
    `block_sizes[name]` weights, single weights by default).

    With `stop` (accuracy -> bool), a layer's curve ends at the first level whose accuracy it
    holds true for: where only the levels before that point decide, the rest would be
    evaluated for nothing.
    """
    curves = []
    for name, module in layers:
        mask = get_mask(module)
        assert mask is not None, "layers are masked before the scan"
        saved = mask.clone()
        current = 1.0 - float(saved.float().mean())
        block_size = (block_sizes or {}).get(name, 1)
        scores = block_scores(weight_of(module), block_size)  # (n_blocks,)
        points: tuple[list[float], list[float], list[float]] = ([], [], [])
        for level in (level for level in levels if level > current + 1e-9):
            (keep_blocks,) = keep_largest([scores], level)
            keep = expand_blocks(keep_blocks, block_size, mask.shape)
            with torch.no_grad():
                mask &= keep
            points[0].append(level)
            pruned = scores[~keep_blocks]
            points[1].append(float(pruned.max()) if pruned.numel() else 0.0)
            points[2].append(score(model))
            with torch.no_grad():
                mask.copy_(saved)
            if stop is not None and stop(points[2][-1]):
                break
        curves.append(SensitivityCurve(name, *points))
    return curves


def choose(curves: list[SensitivityCurve], reference: float, budget: float) -> dict[str, float]:
    """Per layer, the highest level reached before the accuracy first drops more than `budget`."""
    chosen = {}
    for curve in curves:
        for level, accuracy in zip(curve.sparsity, curve.accuracy, strict=True):
            if _beyond(reference, accuracy, budget):
                break
            chosen[curve.name] = level
    return chosen


def prune_by_scan_(
    model: nn.Module,
    config: PruneConfig,
    *,
    scan_score: Score,
    val_score: Score,
    retrain: Retrain,
    report: Report | None = None,
    block_sizes: Mapping[str, int] | None = None,
    keep: Keep | None = None,
) -> ScanResult:
    """Prune `model` in place by threshold scans and retraining rounds (see module docstring).

    `block_sizes` (layer name -> size) prunes runs of consecutive weights together, as
    `prune_` does; layers it does not name are pruned weight by weight. `keep(round)` is called
    with the model in each state the rounds keep, the unscanned one (round 0) first: the
    states a caller can back off to.
    """
    candidates = prunable_layers(model)
    sizes = {name: (block_sizes or {}).get(name, 1) for name, _, _ in candidates}
    check_patterns(config.modules, list(sizes), "prune.modules")
    baseline = val_score(model)  # the unpruned model's: the tolerance is measured from it
    layers, fixed = [], []
    for name, module, type_name in candidates:
        rule = resolve_rule(name, type_name, _SCANNED, config.module_types, config.modules)
        if rule is None:
            continue
        if rule is not _SCANNED:  # a fixed rule for this layer: applied once, not scanned
            prune_(model, PruneConfig(modules={re.escape(name): rule}), block_sizes=sizes)
            fixed.append(name)
            continue
        layers.append((name, module))
    # Every scanned layer gets a mask (all kept) so that the scan can tighten it in place.
    prune_(
        model, PruneConfig(modules={re.escape(name): PruneRule(sparsity=0.0) for name, _ in layers})
    )
    result = ScanResult(baseline_accuracy=baseline, final_accuracy=baseline)
    if fixed:
        # Layers given a sparsity or threshold are pruned as given, then retrained once; the
        # scan prunes the others within what those left of the tolerance.
        if report is not None:
            report(0.0, f"{', '.join(fixed)} pruned as the spec fixes; retraining")
        retrain(model, 0, None)
        result.final_accuracy = result.fixed_accuracy = val_score(model)
        result.fixed_layers = fixed
        if baseline - result.final_accuracy > config.max_accuracy_drop:
            if report is not None:
                report(1.0, "the fixed rules alone lost more than the tolerance: no scan")
            return result
    # The budget is how much one-shot accuracy a layer may lose in the scan; retraining wins
    # most of it back, so it starts well above the tolerance and adapts to what retraining does.
    budget = max(5 * config.max_accuracy_drop, 0.01)
    accepted = copy.deepcopy(model.state_dict())
    if keep is not None:
        keep(0)
    attempts = 0
    while attempts < config.rounds:
        if report is not None:
            report(attempts / config.rounds, f"round {attempts + 1}: scanning {len(layers)} layers")
        reference = scan_score(model)
        # The first scan's curves are kept whole (the thesis's plot); later scans only steer,
        # and `choose` reads each curve only up to its first level beyond the budget.
        curves = sensitivity(
            model,
            layers,
            scan_score,
            block_sizes=sizes,
            stop=None
            if not result.rounds
            else functools.partial(_beyond, reference, budget=budget),
        )
        current = {name: _sparsity(module) for name, module in layers}
        targets = {
            name: level
            for name, level in choose(curves, reference, budget).items()
            if level > current[name] + 1e-6
        }
        if not targets:
            break
        while targets and attempts < config.rounds:
            rules = {re.escape(name): PruneRule(sparsity=level) for name, level in targets.items()}
            retrain(model, attempts, _ramp(model, current, targets, config.gradual, sizes))
            # The targets exactly, whatever steps the retraining took (none: no epochs).
            prune_(model, PruneConfig(modules=rules), block_sizes=sizes)
            accuracy = val_score(model)
            kept = baseline - accuracy <= config.max_accuracy_drop
            attempts += 1
            result.rounds.append(
                {
                    "round": attempts,
                    "budget": budget,
                    "target_sparsity": targets,
                    "val_accuracy": accuracy,
                    "kept": kept,
                    # The first scan's curves (the trained model's sensitivity, the thesis's
                    # plot) are kept; later ones only steer, and would weigh ~10% of a file.
                    **(
                        {}
                        if result.rounds
                        else {
                            "scan_reference": round(reference, 4),
                            "curves": [_rounded(c) for c in curves],
                        }
                    ),
                }
            )
            if report is not None:
                state = "kept" if kept else "undone"
                report(attempts / config.rounds, f"round {attempts} {state}: val {accuracy:.4f}")
            if kept:
                accepted = copy.deepcopy(model.state_dict())
                if keep is not None:
                    keep(attempts)
                result.final_accuracy = accuracy
                budget *= 1.5
                break
            # Too far: undo, and retry with each layer's step halved (no new scan needed).
            model.load_state_dict(accepted)
            budget /= 2
            targets = {
                name: round(current[name] + (level - current[name]) / 2, 4)
                for name, level in targets.items()
                if level - current[name] >= 0.02
            }
        else:
            break
    return result


def _ramp(
    model: nn.Module,
    start: Mapping[str, float],
    targets: Mapping[str, float],
    span: float,
    sizes: Mapping[str, int],
    steps: int = 16,
) -> Step:
    """Gradual pruning (Zhu & Gupta, 2017): over the first `span` of the retraining, each
    layer goes from its `start` sparsity to its target along a cubic, which cuts fast while
    many small weights are left and slowly near the target, in `steps` cuts; the rest of the
    retraining recovers with the final masks. With `span` 0 the first step makes the whole cut."""
    done = 0

    def step(fraction: float) -> None:
        nonlocal done
        index = steps if span == 0 else min(steps, int(fraction / span * steps) + 1)
        if index <= done:
            return
        done = index
        left = (1.0 - index / steps) ** 3
        rules = {
            re.escape(name): PruneRule(sparsity=target + (start[name] - target) * left)
            for name, target in targets.items()
        }
        prune_(model, PruneConfig(modules=rules), block_sizes=sizes)

    return step


def _beyond(reference: float, accuracy: float, budget: float) -> bool:
    return reference - accuracy > budget


def _sparsity(module: nn.Module) -> float:
    mask = get_mask(module)
    return 0.0 if mask is None else 1.0 - float(mask.float().mean())


def _rounded(curve: SensitivityCurve) -> dict[str, Any]:
    """The curve with 4 significant digits: it is kept in every .pqz manifest."""
    return {
        "name": curve.name,
        "sparsity": curve.sparsity,
        "threshold": [float(f"{value:.4g}") for value in curve.threshold],
        "accuracy": [round(value, 4) for value in curve.accuracy],
    }
