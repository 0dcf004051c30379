"""Small, dependency-free statistics used by reports and campaign tables."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence


def bootstrap_ci(
    values: Sequence[float], level: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean.

    Resamples ``values`` with replacement ``resamples`` times and returns the
    ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the resampled means (nearest-rank on
    the sorted means). One value gives a zero-width interval; none gives (nan, nan).
    """
    data = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not data:
        return math.nan, math.nan
    if len(data) == 1:
        return data[0], data[0]
    rng = random.Random(seed)
    n = len(data)
    means = sorted(statistics.fmean(rng.choices(data, k=n)) for _ in range(resamples))
    low_index = math.floor((1.0 - level) / 2.0 * resamples)
    high_index = min(resamples - 1, math.ceil((1.0 + level) / 2.0 * resamples) - 1)
    return means[low_index], means[high_index]
