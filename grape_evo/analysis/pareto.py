"""Pareto front of (reward, KL to reference): maximise reward, minimise KL."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def pareto_mask(reward: Sequence[float], kl: Sequence[float]) -> np.ndarray:
    """Which points are on the front (not dominated), as a boolean array.

    Point ``a`` dominates ``b`` when ``reward_a >= reward_b`` and ``kl_a <= kl_b`` with at
    least one strict inequality. Identical points do not dominate each other (both stay on the
    front). A point with a missing (NaN / None) coordinate is never on the front and never
    dominates another.
    """
    r = np.array([math.nan if v is None else float(v) for v in reward], dtype=float)
    k = np.array([math.nan if v is None else float(v) for v in kl], dtype=float)
    if r.shape != k.shape:
        raise ValueError(f"reward and kl differ in length: {r.size} vs {k.size}")
    valid = np.isfinite(r) & np.isfinite(k)
    mask = valid.copy()
    for i in np.flatnonzero(valid):
        others = valid.copy()
        others[i] = False
        weakly = (r >= r[i]) & (k <= k[i])
        strictly = (r > r[i]) | (k < k[i])
        if np.any(others & weakly & strictly):
            mask[i] = False
    return mask
