"""A candidate's fitness: its paired improvement over the reference objective on the same seeds.

For seed index s every candidate and the reference share the warm start, the training prompt
stream, the evaluation set and the sampling streams (common random numbers), so the difference
``d_{t,s} = m(candidate, t, s) - m(reference, t, s)`` on task t cancels most of the seed noise.
``m`` is the final held-out reward (``final``) or the mean held-out reward over the run's
evaluations, the initial one included (``auc``, the area under the evaluation curve divided by
its length).

Per task: the mean paired difference over the seeds both have, divided by the reference's gain
over the warm start on that task, ``g_t = mean_s(final_ref - initial_ref)`` floored at
``GAIN_FLOOR`` (a reference that barely learns would blow the ratio up), and its standard
error ``sd(d_t) / sqrt(n) / g_t``. Fitness: the mean of the per-task effects, with a guard: a
candidate worse than the reference on some task by more than that task's standard error is
not preferred, its fitness is its worst task's effect. A fitness of 0.1 reads "10% more of the
reference's own improvement".
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from grape_evo.search.records import RunResult

__all__ = ["GAIN_FLOOR", "MEASURES", "Fitness", "TaskEffect", "measure_of", "paired_fitness"]

GAIN_FLOOR = 0.02
"""The smallest reference gain a task's effect is divided by (in reward units)."""
MEASURES = ("final", "auc")
"""Valid ``search.fitness`` values."""


@dataclass(frozen=True)
class TaskEffect:
    """One task's paired comparison: ``n`` seeds, the raw mean difference and its standard
    error (reward units), the reference's gain and the normalised ``effect`` and ``se``."""

    task: str
    n: int
    raw_effect: float
    raw_se: float
    gain: float
    effect: float
    se: float


@dataclass(frozen=True)
class Fitness:
    """The fitness ``value``, its per-task parts, whether the guard set it (``guarded``) and
    the number of paired seeds per task (the fewest over tasks)."""

    value: float
    tasks: tuple[TaskEffect, ...]
    guarded: bool
    n_seeds: int

    def to_dict(self) -> dict[str, object]:
        return {
            "value": self.value,
            "guarded": self.guarded,
            "n_seeds": self.n_seeds,
            "tasks": [asdict(t) for t in self.tasks],
        }


def measure_of(run: RunResult, measure: str) -> float | None:
    """``final``: the final held-out reward; ``auc``: the mean of the held-out rewards at
    step 0 and at every evaluation (None when the run has no final evaluation)."""
    if not run.final_eval:
        return None
    if measure == "final":
        return float(run.final_eval["reward"])
    points = [(0, float(run.initial_eval["reward"]))] if run.initial_eval else []
    points += [(int(s), float(v)) for s, v in run.curve if s > 0]
    if len(points) < 2:
        return float(run.final_eval["reward"])
    area = sum((b[0] - a[0]) * (a[1] + b[1]) / 2 for a, b in itertools.pairwise(points))
    return area / (points[-1][0] - points[0][0])


def _gain(reference: Sequence[RunResult]) -> float:
    gains = [
        float(r.final_eval["reward"]) - float(r.initial_eval["reward"])
        for r in reference
        if r.final_eval and r.initial_eval
    ]
    return max(statistics.fmean(gains), GAIN_FLOOR) if gains else GAIN_FLOOR


def paired_fitness(
    runs: Sequence[RunResult],
    reference: Mapping[tuple[str, int], RunResult],
    measure: str = "final",
) -> Fitness:
    """The fitness of a candidate's ``runs`` against the reference's runs keyed by (task,
    seed); only pairs where both have a value count. A task without pairs gives NaN."""
    by_task: dict[str, list[tuple[float, RunResult]]] = {}
    for run in runs:
        ref = reference.get((run.task, run.seed))
        mine = measure_of(run, measure)
        theirs = None if ref is None else measure_of(ref, measure)
        if mine is None or theirs is None or ref is None:
            continue
        by_task.setdefault(run.task, []).append((mine - theirs, ref))
    tasks_seen = list(dict.fromkeys(r.task for r in runs))
    effects = []
    for task in tasks_seen:
        pairs = by_task.get(task, [])
        diffs = [d for d, _ in pairs]
        n = len(diffs)
        gain = _gain([ref for _, ref in pairs])
        raw = statistics.fmean(diffs) if diffs else math.nan
        raw_se = statistics.stdev(diffs) / math.sqrt(n) if n >= 2 else math.inf
        effects.append(TaskEffect(task, n, raw, raw_se, gain, raw / gain, raw_se / gain))
    if not effects or any(e.n == 0 for e in effects):
        return Fitness(math.nan, tuple(effects), False, 0)
    worse = any(e.effect + e.se < 0 for e in effects)
    value = min(e.effect for e in effects) if worse else statistics.fmean(e.effect for e in effects)
    return Fitness(value, tuple(effects), worse and len(effects) > 1, min(e.n for e in effects))
