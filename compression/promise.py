"""The accuracy promise: the finished model within `max_accuracy_drop` of the baseline.

The pipeline finishes (quantizes and fine-tunes) from the last kept pruning state and compares
the result with the baseline image by image on the search (validation) split. A miss backs off
to the previous kept state and finishes again, at most `PromiseConfig.max_tries` times. A
candidate that holds on the search split is judged on the confirm split, which no decision has
seen, and the first that holds there is the result. Each judgement on the confirm split is a
look; with up to `max_tries` looks, an upper-bound judgement uses a Bonferroni-widened interval
(1 - 0.05 / max_tries), so the promise keeps its 95% however many candidates were judged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from compression.config import PromiseConfig
from compression.paired import PairedComparison, compare

Verdicts = Callable[[nn.Module], torch.Tensor]  # model -> (n,) bool, right or wrong per image


@dataclass(frozen=True, slots=True)
class Start:
    """A pruning state the pipeline can finish from (a kept round), most compressed first."""

    label: str  # "pruning round 3", "the unpruned model", ...
    sparsity: float  # of all prunable weights
    state: Mapping[str, torch.Tensor] | None = None  # None: the model as it stands now
    # Quantize more finely than the try before: half the sub-vector size, more scalar levels.
    finer: bool = False


@dataclass(slots=True)
class Outcome:
    """The chosen model and what the tries found, for the manifest."""

    model: nn.Module
    tolerance_met: bool
    reason: str
    tries: list[dict[str, Any]] = field(default_factory=list)
    looks: int = 0
    confirm: PairedComparison | None = None


def holds(comparison: PairedComparison, tolerance: float, hold_on: str, confidence: float) -> bool:
    """Whether a drop keeps within `tolerance`: its estimate, or its interval's upper end."""
    if hold_on == "estimate":
        return comparison.drop <= tolerance + 1e-12  # (lost - gained) / n, exact at the limit
    return comparison.interval(confidence)[1] <= tolerance + 1e-12


def confirm_confidence(config: PromiseConfig) -> float:
    """The confidence of each look at the confirm split (95% shared over `max_tries` looks)."""
    return 1.0 - 0.05 / config.max_tries


def keep_promise(
    starts: list[Start],
    *,
    config: PromiseConfig,
    tolerance: float,
    finish: Callable[[Start, int], nn.Module],
    search: Verdicts,
    confirm: Verdicts,
    baseline_search: torch.Tensor,
    baseline_confirm: Callable[[], torch.Tensor],
    report: Callable[[str], None],
) -> Outcome:
    """Finish from `starts` in order until a candidate holds on both splits (see module doc).

    `finish(start, index)` quantizes and fine-tunes a model from `start`; `search` and
    `confirm` score a model on those splits; `baseline_confirm` is called once, at the first
    look, so that nothing evaluates the confirm split before a candidate is judged.
    """
    assert starts, "there is always a state to finish from"
    confidence = confirm_confidence(config)
    tries: list[dict[str, Any]] = []
    looks = 0
    baseline_on_confirm: torch.Tensor | None = None
    planned = min(len(starts), config.max_tries)

    def look(candidate: nn.Module) -> PairedComparison:
        nonlocal looks, baseline_on_confirm
        looks += 1
        if baseline_on_confirm is None:
            baseline_on_confirm = baseline_confirm()
        return compare(baseline_on_confirm, confirm(candidate))

    for index, start in enumerate(starts[:planned]):
        if index:
            report(f"try {index + 1} of {planned}: finishing again from {start.label}")
        model = finish(start, index)
        on_search = compare(baseline_search, search(model))
        entry: dict[str, Any] = {
            "start": start.label,
            "sparsity": start.sparsity,
            "search": on_search.to_dict(),
            "kept": False,
        }
        tries.append(entry)
        if not holds(on_search, tolerance, config.hold_on, 0.95):
            report(f"{start.label}: {_lost(on_search)} on the search split, more than allowed")
            continue
        on_confirm = look(model)
        entry["confirm"] = _judged(on_confirm, confidence)
        if holds(on_confirm, tolerance, config.hold_on, confidence):
            entry["kept"] = True
            report(f"{start.label}: {_lost(on_confirm)} on the confirm split: kept")
            return Outcome(model, True, "", tries, looks, on_confirm)
        report(f"{start.label}: {_lost(on_confirm)} on the confirm split, more than allowed")
    # Every try missed: the last (least compressed) one is written, judged for the record.
    where, missed = ("confirm", on_confirm) if "confirm" in entry else ("search", on_search)
    if "confirm" not in entry:
        on_confirm = look(model)
        entry["confirm"] = _judged(on_confirm, confidence)
    untried = len(starts) - planned
    reason = (
        f"{planned} tr{'y' if planned == 1 else 'ies'} missed the tolerance of "
        f"{100 * tolerance:.2f} points; the last, from {start.label}, "
        f"{_lost(missed, confidence if where == 'confirm' else 0.95)} on the {where} split"
        + (
            f" (promise.max_tries {config.max_tries} left {untried} less compressed "
            f"state{'s' if untried != 1 else ''} untried)"
            if untried
            else " (no less compressed state is left to back off to)"
        )
    )
    return Outcome(model, False, reason, tries, looks, on_confirm)


def _judged(comparison: PairedComparison, confidence: float) -> dict[str, Any]:
    low, high = comparison.interval(confidence)
    return {
        **comparison.to_dict(),
        "decision_confidence": round(confidence, 6),
        "decision_interval": [low, high],
    }


def _lost(comparison: PairedComparison, confidence: float = 0.95) -> str:
    low, high = comparison.interval(confidence)
    return (
        f"lost {100 * comparison.drop:.2f} points ({100 * confidence:g}% CI {100 * low:.2f} to "
        f"{100 * high:.2f})"
    )
