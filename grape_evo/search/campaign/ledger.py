"""The campaign's ledger: what counts toward the budget, which results can be reused, and the
counts a progress display shows."""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from grape_evo.objective import ObjectiveSpec
from grape_evo.objective.behaviour import same_behaviour
from grape_evo.search.records import TrialRecord

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def candidate_key(spec: ObjectiveSpec, overrides: dict[str, Any]) -> str:
    """Canonical spec key plus the training overrides (e.g. a learning-rate gene)."""
    if not overrides:
        return spec.key()
    text = json.dumps({"spec": spec.key(), **overrides}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def budget_used(study: optuna.Study, count_running: bool = False) -> int:
    """Finished trials, not counting a failed trial that was retried (its retry counts) or a
    surplus one; with ``count_running``, trials running now (in any worker) count too."""
    return count_budget(study.get_trials(deepcopy=False), count_running)


FREE_REJECTIONS = 10
"""Candidates rejected by their cheap checks (never trained) that are free per counted trial;
rejections beyond that count, so a space whose sampler proposes nothing else still ends."""


def retried_numbers(trials: list[FrozenTrial]) -> set[int]:
    """The numbers of ``trials`` that failed and were retried (a later trial retries them)."""
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return retried | {t.system_attrs.get("failed_trial") for t in trials} - {None}


def count_budget(trials: list[FrozenTrial], count_running: bool, before: int | None = None) -> int:
    """Trials that count toward the budget (with ``before``: only those numbered below it):
    the budget counts trained candidates, so a candidate rejected by its cheap checks is free,
    up to `FREE_REJECTIONS` per counted trial (at least one counted)."""
    retried = retried_numbers(trials)
    counted = [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL]
    if count_running:
        counted.append(TrialState.RUNNING)
    records = [
        TrialRecord.of(t)
        for t in trials
        if t.state in counted and t.number not in retried and (before is None or t.number < before)
    ]
    kept = [r for r in records if not r.surplus]
    rejected = sum(r.rejected for r in kept)
    others = len(kept) - rejected
    return others + max(0, rejected - FREE_REJECTIONS * max(1, others))


def budget_claimed(study: optuna.Study) -> int:
    """Trials finished or running: a worker starts a new trial only below the budget."""
    return budget_used(study, count_running=True)


def waiting(study: optuna.Study) -> bool:
    """Whether the study holds enqueued trials no worker has started."""
    return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def find_completed(
    study: optuna.Study,
    key: str,
    overrides: dict[str, Any],
    behaviour: dict[str, Any] | None = None,
) -> FrozenTrial | None:
    """A completed trial with a reward that trains like this candidate: the same candidate
    key, or the same training overrides and the same `behaviour` (an objective spelled
    differently that gives the same gradients in its regime)."""
    for other in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        record = TrialRecord.of(other)
        if record.reward is None:
            continue
        if record.key == key:
            return other
        alike = behaviour is not None and record.behaviour is not None
        if alike and record.overrides == overrides and same_behaviour(record.behaviour, behaviour):
            return other
    return None


def score_or_minus_inf(trial: FrozenTrial) -> float:
    """The trial's score (`TrialRecord.score`: fitness, else mean reward), -inf when none."""
    score = TrialRecord.of(trial).score
    return -math.inf if score is None else score


def finite_or_none(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The completed trial with the best score (the first of equals; baselines included),
    None when no completed trial has one."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = max(complete, key=score_or_minus_inf, default=None)
    return None if best is None or TrialRecord.of(best).score is None else best


def summarize(study: optuna.Study) -> dict[str, Any]:
    """Counts and the best trial, for progress displays."""
    trials = study.get_trials(deepcopy=False)
    states = [t.state for t in trials]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = best_trial(study)
    rewards = [r for t in complete if (r := TrialRecord.of(t).reward) is not None]
    return {
        "complete": states.count(TrialState.COMPLETE),
        "pruned": states.count(TrialState.PRUNED),
        "failed": states.count(TrialState.FAIL),
        "running": states.count(TrialState.RUNNING),
        "best_reward": None if best is None else TrialRecord.of(best).reward,
        "best_score": None if best is None else TrialRecord.of(best).score,
        "best_label": None if best is None else TrialRecord.of(best).label(best.number),
        "mean_reward": statistics.fmean(rewards) if rewards else None,
    }
