"""The summary's words for the promise: the interval that decided, the looks, the source."""

from __future__ import annotations

from typing import Any

import pytest

from cli.output import print_pipeline, print_promise


def _metrics(hold_on: str, looks: int, tries: int, met: bool = True) -> dict[str, Any]:
    confirm = {
        "n": 6000,
        "drop": 0.0012,
        "drop_ci95": [-0.0005, 0.0029],
        "decision_confidence": 0.9875,
        "decision_interval": [-0.0011, 0.0035],
    }
    starts = ["pruning round 6", "pruning round 5", "pruning round 4"][:tries]
    return {
        "promise": {
            "max_accuracy_drop": 0.003,
            "hold_on": hold_on,
            "confirm_split": "confirm",
            "tolerance_met": met,
            "looks": looks,
            "tries": [{"start": s, "sparsity": 0.9 - 0.05 * i} for i, s in enumerate(starts)],
        },
        "confirm": confirm,
    }


def test_the_estimate_is_stated_with_its_95_interval_and_one_look(
    capsys: pytest.CaptureFixture[str],
) -> None:
    print_promise(_metrics("estimate", looks=1, tries=1))
    said = " ".join(capsys.readouterr().out.split())  # as one line, however wrapped
    assert said == (
        "tolerance 0.30 points kept on its estimate: the confirm split (6000 images held out "
        "from every search, one candidate judged on it) lost 0.12 points (95% CI -0.05 to "
        "0.29), from pruning round 6 (90.0% of the weights pruned)"
    )


def test_the_upper_bound_is_stated_with_the_interval_that_decided_and_the_looks(
    capsys: pytest.CaptureFixture[str],
) -> None:
    print_promise(_metrics("upper_bound", looks=2, tries=3, met=False))
    said = " ".join(capsys.readouterr().out.split())  # as one line, however wrapped
    assert "missed on its interval's upper bound" in said
    assert "2 candidates judged on it" in said
    assert "(98.75% CI -0.11 to 0.35)" in said  # not the 95% one
    assert said.endswith("after 3 tries, from pruning round 4 (80.0% of the weights pruned)")


def test_a_gain_is_a_negative_drop_beside_its_interval(capsys: pytest.CaptureFixture[str]) -> None:
    metrics = {
        "baseline": {"test_accuracy": 0.90},
        "final": {"test_accuracy": 0.9028, "test_samples": 10000},
        "accuracy_drop": -0.0028,
        "test": {"drop_ci95": [-0.0179, 0.0115]},
        "weight_sparsity": 0.5,
    }
    print_pipeline(metrics, {})
    said = " ".join(capsys.readouterr().out.split())  # as one line, however wrapped
    assert "(drop -0.28 points, 95% CI -1.79 to 1.15: a gain)" in said


def test_the_pruning_line_says_when_the_finish_backed_off_from_the_scan(
    capsys: pytest.CaptureFixture[str],
) -> None:
    metrics = _metrics("estimate", looks=1, tries=3)
    metrics["prune"] = {"rounds": [{"kept": True}, {"kept": False}], "sparsity": 0.895}
    print_pipeline(metrics, {"prune": {"max_accuracy_drop": 0.003}})
    said = " ".join(capsys.readouterr().out.split())
    assert "pruning: 1 of 2 rounds kept, 89.5% of the weights (a round is undone" in said
    assert "the finish backed off from there (the tolerance line says to where)" in said
    assert "after 3 tries, from pruning round 4 (80.0% of the weights pruned)" in said
