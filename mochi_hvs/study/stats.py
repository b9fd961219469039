"""Statistics of a seeded comparison: per-arm mean and spread, paired differences to the baseline, verdicts."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy import stats as scipy_stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation (0 for a single value) of one arm's per-seed values."""

    mean: float
    std: float
    count: int


@dataclass(frozen=True)
class PairedDifference:
    """arm - baseline over the seeds both have: mean, its 95% interval (paired t) and the verdict."""

    mean: float
    low: float
    high: float
    count: int

    @property
    def verdict(self) -> str:
        """'better' / 'worse' when the interval excludes 0, else 'not distinguishable'."""
        if self.count < 2:
            return "not distinguishable (one seed)"
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return "not distinguishable"


def summarize(values: list[float]) -> Summary:
    """Mean and sample standard deviation of the values."""
    if not values:
        raise ValueError("no values to summarise")
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return Summary(statistics.fmean(values), std, len(values))


def mean_interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Student-t interval of the mean of the values ((-inf, inf) for fewer than two)."""
    if len(values) < 2:
        return -math.inf, math.inf
    mean = statistics.fmean(values)
    half = scipy_stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean - half, mean + half


def paired_difference(arm: dict[int, float], baseline: dict[int, float],
                      confidence: float = CONFIDENCE) -> PairedDifference:
    """Paired-t interval of arm[seed] - baseline[seed] over the seeds present in both."""
    seeds = sorted(set(arm) & set(baseline))
    if not seeds:
        raise ValueError("arm and baseline share no seed")
    diffs = [arm[s] - baseline[s] for s in seeds]
    return PairedDifference(statistics.fmean(diffs), *mean_interval(diffs, confidence), len(diffs))
