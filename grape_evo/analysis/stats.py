"""Confidence intervals of means and of paired differences, and the verdicts drawn from them
(Student's t through ``scipy.stats``).

Seeds are few (3 to 30), so intervals are t-intervals, never percentile bootstraps (which are
too narrow at these sizes). Paired intervals take the differences seed by seed; with several
comparisons the level is Bonferroni-corrected (each interval at ``1 - (1 - level) / k``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import stats


class Interval(NamedTuple):
    """A mean over ``n`` values and its confidence interval (NaN bounds when n < 2)."""

    mean: float
    low: float
    high: float
    n: int


def _finite(values: Sequence[float | None]) -> np.ndarray:
    return np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)


def t_interval(
    values: Sequence[float | None], level: float = 0.95, comparisons: int = 1
) -> Interval:
    """The mean of the finite ``values`` and its t-interval: mean ± t_{q, n-1} s / √n with
    q = 1 - (1 - level) / (2 comparisons) and s the sample standard deviation (ddof 1).
    Constant values give a zero-width interval; fewer than 2 values NaN bounds."""
    data = _finite(values)
    n = int(data.size)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(data.mean())
    if n == 1:
        return Interval(mean, math.nan, math.nan, 1)
    quantile = stats.t.ppf(1.0 - (1.0 - level) / (2.0 * comparisons), n - 1)
    half = float(quantile * data.std(ddof=1) / math.sqrt(n))
    return Interval(mean, mean - half, mean + half, n)


def paired_interval(
    values: Sequence[float | None],
    reference: Sequence[float | None],
    level: float = 0.95,
    comparisons: int = 1,
) -> Interval:
    """`t_interval` of the differences ``values[i] - reference[i]`` over the pairs where both
    are finite (the same seed index: the same warm start, prompts and random streams)."""
    if len(values) != len(reference):
        raise ValueError(f"{len(values)} values paired with {len(reference)} references")
    diffs = [
        v - r
        for v, r in zip(values, reference, strict=True)
        if v is not None and r is not None and math.isfinite(v) and math.isfinite(r)
    ]
    return t_interval(diffs, level, comparisons)


def verdict(interval: Interval) -> str:
    """``better`` / ``worse`` when the interval excludes 0 above / below, else ``unresolved``
    (also when it is undefined)."""
    if not (math.isfinite(interval.low) and math.isfinite(interval.high)):
        return "unresolved"
    if interval.low > 0:
        return "better"
    if interval.high < 0:
        return "worse"
    return "unresolved"
