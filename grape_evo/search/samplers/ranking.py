"""Ranking of complete trials, best first: by value, or by Pareto front and crowding."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

if TYPE_CHECKING:
    from optuna.study import Study

__all__ = ["rank_trials"]


def _nondomination_rank(loss: np.ndarray) -> np.ndarray:
    try:
        from optuna.study._multi_objective import _fast_non_domination_rank
    except ImportError:  # pragma: no cover - private API moved
        n = len(loss)
        ranks = np.full(n, -1, dtype=int)
        remaining = set(range(n))
        rank = 0
        while remaining:
            front = [
                i
                for i in remaining
                if not any(
                    np.all(loss[j] <= loss[i]) and np.any(loss[j] < loss[i])
                    for j in remaining
                    if j != i
                )
            ]
            for i in front:
                ranks[i] = rank
            remaining -= set(front)
            rank += 1
        return ranks
    return _fast_non_domination_rank(loss)


def _crowding_distance(loss: np.ndarray) -> np.ndarray:
    n, m = loss.shape
    dist = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for k in range(m):
        order = np.argsort(loss[:, k], kind="stable")
        col = loss[order, k]
        dist[order[0]] = dist[order[-1]] = np.inf
        span = col[-1] - col[0]
        if span == 0 or not np.isfinite(span):
            continue
        dist[order[1:-1]] += (col[2:] - col[:-2]) / span
    return dist


def rank_trials(study: Study, trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """Complete trials sorted best first.

    Single objective: by value in the study's direction. Multi-objective: by non-domination rank,
    then by crowding distance (larger first). Ties go to the earlier trial.
    """
    trials = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None]
    if not trials:
        return []
    signs = np.array([-1.0 if d == StudyDirection.MAXIMIZE else 1.0 for d in study.directions])
    loss = np.array([t.values for t in trials], dtype=float) * signs
    loss = np.nan_to_num(loss, nan=np.inf)
    if loss.shape[1] == 1:
        keys = [(float(loss[i, 0]), 0.0, t.number) for i, t in enumerate(trials)]
    else:
        ranks = _nondomination_rank(loss)
        crowd = np.zeros(len(trials))
        for r in np.unique(ranks):
            idx = np.flatnonzero(ranks == r)
            crowd[idx] = _crowding_distance(loss[idx])
        keys = [(float(ranks[i]), -float(crowd[i]), t.number) for i, t in enumerate(trials)]
    order = sorted(range(len(trials)), key=lambda i: keys[i])
    return [trials[i] for i in order]
