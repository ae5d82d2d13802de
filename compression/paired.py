"""Paired comparison of two classifiers on the same images: the accuracy drop and its interval.

Two models scored on the same n images form a 2x2 table: `both` right, `lost` (the baseline
right, the candidate wrong), `gained` (the reverse), and both wrong. The drop is
(lost - gained) / n. Its interval is Newcombe's hybrid score interval for paired proportions
(Newcombe 1998, "Improved confidence intervals for the difference between binomial proportions
based on paired data", method 10): the two accuracies' Wilson intervals, combined with a
correction for their correlation. Pairing is what makes a 0.3-point tolerance measurable: on
6,000 images two unpaired accuracies each carry about +-0.75 points, while a paired drop with
100 discordant images carries about +-0.17.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from scipy.stats import binomtest, norm

from compression.errors import InvalidConfigError

METHOD = "newcombe-paired"  # named in every report of an interval


@dataclass(frozen=True, slots=True)
class PairedComparison:
    """Counts of a candidate model's predictions against a baseline's on the same n images.

    `lost = 3, gained = 1, n = 1000` is a drop of 0.002 (0.2 points).
    """

    n: int
    baseline_correct: int
    lost: int  # the baseline right, the candidate wrong
    gained: int  # the baseline wrong, the candidate right

    def __post_init__(self) -> None:
        if self.n < 1:
            raise InvalidConfigError(
                f"a paired comparison needs at least one image, got n={self.n}"
            )
        if not (0 <= self.lost <= self.baseline_correct <= self.n):
            raise InvalidConfigError(
                f"lost={self.lost} is outside [0, baseline_correct={self.baseline_correct}] or "
                f"baseline_correct outside [0, n={self.n}]"
            )
        if not 0 <= self.gained <= self.n - self.baseline_correct:
            raise InvalidConfigError(
                f"gained={self.gained} is outside [0, {self.n - self.baseline_correct}] "
                f"(the images the baseline got wrong)"
            )

    @property
    def baseline_accuracy(self) -> float:
        return self.baseline_correct / self.n

    @property
    def accuracy(self) -> float:
        return (self.baseline_correct - self.lost + self.gained) / self.n

    @property
    def drop(self) -> float:
        return (self.lost - self.gained) / self.n

    def interval(self, confidence: float = 0.95) -> tuple[float, float]:
        """Newcombe's method 10 for the drop (baseline accuracy minus candidate accuracy)."""
        if not 0.0 < confidence < 1.0:
            raise InvalidConfigError(f"confidence {confidence!r} is outside (0, 1)")
        n, lost, gained = self.n, self.lost, self.gained
        both = self.baseline_correct - lost
        neither = n - both - lost - gained
        p1, p2 = self.baseline_accuracy, self.accuracy
        l1, u1 = _wilson(self.baseline_correct, n, confidence)
        l2, u2 = _wilson(both + gained, n, confidence)
        # The correlation of the two verdicts, with Newcombe's continuity correction of its
        # numerator (phi* in the paper); 0 where a margin is empty.
        margins = (both + lost) * (gained + neither) * (both + gained) * (lost + neither)
        cross = both * neither - lost * gained
        corrected = cross - n / 2 if cross > n / 2 else (cross if cross < 0 else 0.0)
        phi = corrected / math.sqrt(margins) if margins > 0 else 0.0
        low_gap = (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2
        high_gap = (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2
        low = self.drop - math.sqrt(max(low_gap, 0.0))
        high = self.drop + math.sqrt(max(high_gap, 0.0))
        return max(-1.0, low), min(1.0, high)

    def to_dict(self) -> dict[str, Any]:
        """What every report of a comparison carries (accuracy units 0..1)."""
        low, high = self.interval()
        return {
            "accuracy": self.accuracy,
            "baseline_accuracy": self.baseline_accuracy,
            "drop": self.drop,
            "drop_ci95": [low, high],
            "n": self.n,
            "lost": self.lost,
            "gained": self.gained,
            "method": METHOD,
        }


def compare(baseline: torch.Tensor, candidate: torch.Tensor) -> PairedComparison:
    """The paired table of two per-image correctness vectors (n,) of the same images."""
    if baseline.shape != candidate.shape or baseline.ndim != 1:
        raise InvalidConfigError(
            f"paired verdicts must be two vectors of one length, got {tuple(baseline.shape)} "
            f"and {tuple(candidate.shape)}"
        )
    baseline, candidate = baseline.bool(), candidate.bool()
    return PairedComparison(
        n=int(baseline.numel()),
        baseline_correct=int(baseline.sum()),
        lost=int((baseline & ~candidate).sum()),
        gained=int((~baseline & candidate).sum()),
    )


def _wilson(successes: int, n: int, confidence: float) -> tuple[float, float]:
    interval = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(interval.low), float(interval.high)


def z_value(confidence: float) -> float:
    """The two-sided normal quantile of `confidence` (1.96 at 0.95)."""
    return float(norm.ppf(0.5 + confidence / 2))
