"""Paired comparisons: counts from verdicts, and Newcombe's interval against known cases."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from compression import InvalidConfigError
from compression.paired import METHOD, PairedComparison, compare


def test_counts_come_from_the_same_images() -> None:
    baseline = torch.tensor([1, 1, 1, 0, 0, 1], dtype=torch.bool)
    candidate = torch.tensor([1, 0, 0, 1, 0, 1], dtype=torch.bool)
    comparison = compare(baseline, candidate)
    assert (comparison.n, comparison.lost, comparison.gained) == (6, 2, 1)
    assert comparison.baseline_accuracy == pytest.approx(4 / 6)
    assert comparison.accuracy == pytest.approx(3 / 6)
    assert comparison.drop == pytest.approx(1 / 6)


def test_newcombe_example_has_its_known_bounds() -> None:
    """Newcombe (1998), table II: a=36, b=12, c=2, d=0. By hand: the Wilson intervals of 48/50
    and 38/50 are (0.8654, 0.9890) and (0.6259, 0.8570), phi = -24 / sqrt(48*2*38*12); the
    hybrid interval of the difference 0.2 is (0.0569, 0.3404)."""
    comparison = PairedComparison(n=50, baseline_correct=48, lost=12, gained=2)
    low, high = comparison.interval()
    assert comparison.drop == pytest.approx(0.2)
    assert low == pytest.approx(0.0569, abs=1e-4)
    assert high == pytest.approx(0.3404, abs=1e-4)


def test_altman_worked_example_has_its_known_bounds() -> None:
    """Altman et al. (2000), table 6.2: [[14, 5], [0, 22]], a difference of 5/41 = 0.122 with
    the interval (0.011, 0.226)."""
    low, high = PairedComparison(n=41, baseline_correct=19, lost=5, gained=0).interval()
    assert (round(low, 3), round(high, 3)) == (0.011, 0.226)


def test_all_predictions_agreeing_give_a_zero_drop_and_a_narrow_interval() -> None:
    """Agreement on every image leaves the drop at zero; its interval is centred on zero and
    spans under 4 images each way (Newcombe's interval keeps that width on purpose: 6,000
    agreeing images do not prove that two models agree everywhere; a bootstrap's zero width
    would claim they do)."""
    verdicts = torch.arange(6000) % 10 != 0  # 90% right, the same images for both
    comparison = compare(verdicts, verdicts.clone())
    low, high = comparison.interval()
    assert comparison.drop == 0.0
    assert low == pytest.approx(-high)
    assert 0 < high < 4 / 6000


def test_more_discordant_images_widen_the_interval() -> None:
    few = PairedComparison(n=6000, baseline_correct=5400, lost=15, gained=5).interval()
    many = PairedComparison(n=6000, baseline_correct=5400, lost=110, gained=100).interval()
    assert few[1] - few[0] < many[1] - many[0]


def test_a_wider_confidence_gives_a_wider_interval() -> None:
    comparison = PairedComparison(n=6000, baseline_correct=5400, lost=60, gained=40)
    low95, high95 = comparison.interval(0.95)
    low99, high99 = comparison.interval(0.9875)
    assert low99 < low95 < comparison.drop < high95 < high99


@given(
    n=st.integers(1, 3000),
    data=st.data(),
)
def test_the_interval_holds_the_estimate_within_minus_one_to_one(
    n: int, data: st.DataObject
) -> None:
    baseline_correct = data.draw(st.integers(0, n))
    lost = data.draw(st.integers(0, baseline_correct))
    gained = data.draw(st.integers(0, n - baseline_correct))
    comparison = PairedComparison(n=n, baseline_correct=baseline_correct, lost=lost, gained=gained)
    low, high = comparison.interval()
    assert -1.0 <= low <= comparison.drop + 1e-12
    assert comparison.drop - 1e-12 <= high <= 1.0


def test_the_report_names_its_method_and_counts() -> None:
    report = PairedComparison(n=1000, baseline_correct=900, lost=3, gained=1).to_dict()
    assert report["method"] == METHOD
    assert report["drop"] == pytest.approx(0.002)
    assert (report["n"], report["lost"], report["gained"]) == (1000, 3, 1)
    low, high = report["drop_ci95"]
    assert low < 0.002 < high


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        ({"n": 0, "baseline_correct": 0, "lost": 0, "gained": 0}, "at least one image"),
        ({"n": 10, "baseline_correct": 5, "lost": 6, "gained": 0}, "lost=6 is outside"),
        ({"n": 10, "baseline_correct": 5, "lost": 0, "gained": 6}, "gained=6 is outside"),
    ],
)
def test_impossible_counts_are_refused(counts: dict[str, int], message: str) -> None:
    with pytest.raises(InvalidConfigError, match=message):
        PairedComparison(**counts)


def test_verdicts_of_different_images_are_refused() -> None:
    with pytest.raises(InvalidConfigError, match="one length"):
        compare(torch.ones(3, dtype=torch.bool), torch.ones(4, dtype=torch.bool))
