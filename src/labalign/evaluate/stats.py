"""Paired comparisons: mean delta with a bootstrap confidence interval, and win/tie/loss counts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from labalign.evaluate.results import PairedDelta


@dataclass(frozen=True)
class Delta:
    mean: float
    low: float
    high: float
    wins: int
    ties: int
    losses: int

    @property
    def significant(self) -> bool:
        """The interval excludes zero."""
        return self.low > 0 or self.high < 0

    def result(self) -> PairedDelta:
        return PairedDelta(
            mean=self.mean,
            ci_low=self.low,
            ci_high=self.high,
            wins=self.wins,
            ties=self.ties,
            losses=self.losses,
            significant=self.significant,
        )


def paired_delta(
    tuned: Sequence[float],
    base: Sequence[float],
    *,
    tie: float = 0.05,
    samples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Delta:
    """Mean of tuned - base over the same questions, with a percentile bootstrap interval."""
    diff = np.asarray(tuned, dtype=float) - np.asarray(base, dtype=float)
    if diff.size == 0:
        return Delta(0.0, 0.0, 0.0, 0, 0, 0)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(samples, diff.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return Delta(
        mean=float(diff.mean()),
        low=float(low),
        high=float(high),
        wins=int((diff > tie).sum()),
        ties=int((np.abs(diff) <= tie).sum()),
        losses=int((diff < -tie).sum()),
    )
