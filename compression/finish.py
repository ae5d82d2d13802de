"""The finish stage: quantize and fine-tune within the accuracy promise, then report.

`finish` runs the pipeline's quantize and fine-tune stages from the kept pruning states, most
compressed first, until a candidate keeps `max_accuracy_drop` (compression.promise), and
records the promise's tries, the confirm split's verdict and the test split's paired
comparison in the pipeline's metrics.
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING, Any

from torch import nn

from compression.config import MAX_CENTROIDS, QuantConfig, QuantRule
from compression.paired import compare
from compression.promise import Start, confirm_confidence, keep_promise
from compression.prune import clone_model, weight_sparsity

if TYPE_CHECKING:
    from compression.pipeline import Pipeline


def finish(pipeline: Pipeline) -> None:
    """Quantize and fine-tune `pipeline`'s model; with data and a tolerance, back off until
    the finished model keeps it; then the test split's paired comparison, only reported."""
    prune, dataset = pipeline.spec.prune, pipeline.dataset
    if dataset is None:
        pipeline.quantize()
        pipeline.finetune()
        return
    starts = pipeline.starts or [Start("the model as pruned", weight_sparsity(pipeline.model))]
    if prune is not None:  # the last resort: the least compressed state, quantized more finely
        least = starts[-1]
        finest = Start(f"{least.label}, finer quantization", least.sparsity, least.state, True)
        starts = [*starts, finest]
    pruned = clone_model(pipeline.model) if len(starts) > 1 else pipeline.model

    def finish_from(start: Start, index: int) -> nn.Module:
        if index:  # the first try goes on from the model as it stands
            pipeline.model = clone_model(pruned)
            if start.state is not None:
                pipeline.model.load_state_dict(start.state)
        if start.finer:
            quantize = finer(pipeline.spec.quantize, pipeline.metrics["quantize"]["layers"])
            pipeline.spec = dataclasses.replace(pipeline.spec, quantize=quantize)
        pipeline.quantize()
        pipeline.finetune()
        return pipeline.model

    if prune is None:  # no tolerance to hold: one try, its drop only reported
        finish_from(starts[0], 0)
        report(pipeline, None)
        return
    confirm = "confirm" if dataset.confirm is not None else "val"
    uncompressed = pipeline.uncompressed
    assert uncompressed is not None, "baseline() keeps the model as it came"
    outcome = keep_promise(
        starts,
        config=pipeline.spec.promise,
        tolerance=prune.max_accuracy_drop,
        finish=finish_from,
        search=lambda model: pipeline.correct(model, "val"),
        confirm=lambda model: pipeline.correct(model, confirm),
        baseline_search=pipeline.verdicts["val"],
        baseline_confirm=lambda: pipeline.correct(uncompressed, confirm),
        report=lambda message: pipeline.report("finetune")(1.0, message),
    )
    pipeline.model = outcome.model
    pipeline.metrics["promise"] = {
        "max_accuracy_drop": prune.max_accuracy_drop,
        "hold_on": pipeline.spec.promise.hold_on,
        "max_tries": pipeline.spec.promise.max_tries,
        "confirm_split": confirm,
        "confirm_confidence": round(confirm_confidence(pipeline.spec.promise), 6),
        "tolerance_met": outcome.tolerance_met,
        "looks": outcome.looks,
        "tries": outcome.tries,
        **({"reason": outcome.reason} if outcome.reason else {}),
    }
    if confirm == "val":
        pipeline.warn(
            "finetune",
            "the data set has no confirm split: the validation split that made the decisions "
            "judged the result too, so its drop is likely optimistic",
        )
    report(pipeline, outcome.tries[-1]["confirm"])
    if not outcome.tolerance_met:
        pipeline.warn("finetune", tolerance_warning(pipeline, outcome.reason))


def finer(config: QuantConfig, layers: list[dict[str, Any]]) -> QuantConfig:
    """`config` with a rule per layer that quantizes it more finely than `layers` (the last
    try's results) say it was: PQ with half the sub-vector size (d = 4 becomes 2, 9 becomes 4),
    scalar k-means with four times the levels (at most 256). Layers kept in float stay so."""
    rules: dict[str, QuantRule | None] = {}
    for layer in layers:
        pattern = re.escape(layer["name"].removesuffix(".weight"))
        if layer["encoding"] == "pq" and (layer["block_size"] or 1) > 1:
            rules[pattern] = QuantRule(method="pq", block_size=layer["block_size"] // 2)
        elif layer["encoding"] == "kmeans":
            levels = min(MAX_CENTROIDS, 4 * layer["n_centroids"])
            rules[pattern] = QuantRule(method="kmeans", n_centroids=levels)
    # The first matching pattern wins: the per-layer rules go before the user's own.
    kept = {pattern: rule for pattern, rule in config.modules.items() if pattern not in rules}
    return dataclasses.replace(config, modules={**rules, **kept})


def report(pipeline: Pipeline, confirmed: dict[str, Any] | None) -> None:
    """The finished model's paired comparisons with the baseline; the test split's only
    reported: no decision reads it."""
    val = compare(pipeline.verdicts["val"], pipeline.correct(pipeline.model, "val"))
    test = compare(pipeline.verdicts["test"], pipeline.correct(pipeline.model, "test"))
    metrics = pipeline.metrics
    metrics["final"] = {
        "val_accuracy": val.accuracy,
        "test_accuracy": test.accuracy,
        "test_samples": test.n,
    }
    metrics["test"] = test.to_dict()
    metrics["accuracy_drop"] = test.drop
    metrics["accuracy_drop_ci95"] = metrics["test"]["drop_ci95"]
    if confirmed is not None:
        metrics["confirm"] = confirmed
        metrics["tolerance_met"] = metrics["promise"]["tolerance_met"]


def tolerance_warning(pipeline: Pipeline, reason: str) -> str:
    """Said when even the least compressed candidate tried missed the tolerance."""
    prune, metrics = pipeline.spec.prune, pipeline.metrics
    assert prune is not None
    judged, promise = metrics["confirm"], metrics["promise"]
    low, high = judged["drop_ci95"]
    what = f"lost {100 * judged['drop']:.2f} points"
    interval = f"95% CI {100 * low:.2f} to {100 * high:.2f}"
    if promise["hold_on"] == "upper_bound":  # the interval that decided, not the 95% one
        low, high = judged["decision_interval"]
        what = f"may have lost up to {100 * high:.2f} points"
        interval = (
            f"lost {100 * judged['drop']:.2f}, {100 * judged['decision_confidence']:g}% CI "
            f"{100 * low:.2f} to {100 * high:.2f}"
        )
    pruned = metrics.get("prune", {})
    lost = metrics["baseline"]["val_accuracy"] - pruned.get("final_accuracy", 1.0)
    if prune.sparsity is not None or prune.threshold is not None:
        why = (
            "prune.sparsity and prune.threshold are applied as given, so there is no pruning "
            "state to back off to; without them the threshold scan prunes within the tolerance"
        )
    elif "fixed_accuracy" in pruned and lost > prune.max_accuracy_drop:
        why = (
            f"pruning lost {100 * lost:.2f}: the layers that prune.modules gives a sparsity or "
            f"threshold ({', '.join(pruned.get('fixed_layers', []))}) are pruned as given, and "
            "the scan pruned nothing more"
        )
    else:
        why = reason
    return (
        f"the finished model {what} on the {promise['confirm_split']} split ({interval}), more "
        f"than the {100 * prune.max_accuracy_drop:.2f} that max_accuracy_drop "
        f"{prune.max_accuracy_drop} allows ({why})"
    )
