"""The fresh-seed re-evaluation: the top-k candidates, every baseline and the reference re-run
on seeds no trial used; only these numbers are reported as discoveries
(``RUN/discoveries.json``).

Claims: each candidate's per-seed reward (the mean over tasks of its final held-out reward on
that seed) is paired with the reference's on the same seed; ``paired_effect`` is the mean
difference and ``[ci_low, ci_high]`` its Student-t interval, Bonferroni-corrected over the
objectives compared with the reference (each at level 1 - 0.05 / m). ``verdict`` is ``better``
when the interval lies above 0, ``worse`` below, else ``unresolved``."""

from __future__ import annotations

import json
import math
import os
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from grape_evo.analysis.stats import paired_interval, t_interval, verdict
from grape_evo.objective import ObjectiveSpec, presets
from grape_evo.objective.behaviour import same_behaviour
from grape_evo.search.campaign.ledger import finite_or_none, score_or_minus_inf
from grape_evo.search.campaign.scheduler import train_packed
from grape_evo.search.campaign.trials import Candidate
from grape_evo.search.evaluator import CandidateResult, CandidateRun
from grape_evo.search.records import TrialRecord

if TYPE_CHECKING:
    from grape_evo.search.campaign import Campaign

REEVAL_SEED_OFFSET = 1000
DISCOVERIES_FILE = "discoveries.json"


def chosen_trials(campaign: Campaign, study: optuna.Study) -> list[FrozenTrial]:
    """The ``top_k`` best completed candidates (one per key and behaviour), then every
    baseline."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    chosen: list[FrozenTrial] = []
    for t in sorted(complete, key=score_or_minus_inf, reverse=True):
        record = TrialRecord.of(t)
        if record.baseline or any(_alike(record, TrialRecord.of(c)) for c in chosen):
            continue
        chosen.append(t)
        if len(chosen) == campaign.space.budget.top_k:
            break
    for name in campaign.space.baselines:
        match = [t for t in complete if TrialRecord.of(t).baseline == name]
        if match:
            chosen.append(match[0])
    return chosen


def _alike(a: TrialRecord, b: TrialRecord) -> bool:
    """The same candidate key, or the same overrides and the same behaviour."""
    if a.key == b.key:
        return True
    both = a.behaviour is not None and b.behaviour is not None
    return both and a.overrides == b.overrides and same_behaviour(a.behaviour, b.behaviour)


def reevaluate(campaign: Campaign, study: optuna.Study) -> list[dict[str, Any]]:
    """Re-run `chosen_trials` on fresh seeds, rank them by mean reward and write
    ``RUN/discoveries.json``; runs already done (same objective key, status ok) are read
    back, so an interrupted re-evaluation resumes."""
    budget = campaign.space.budget
    seeds = range(REEVAL_SEED_OFFSET, REEVAL_SEED_OFFSET + budget.reeval_seeds)
    chosen = chosen_trials(campaign, study)
    candidates = []
    for t in chosen:
        record = TrialRecord.of(t)
        assert record.objective is not None and record.key is not None
        configs = [campaign.config(seed, record.overrides.get("lr")) for seed in seeds]
        folder = campaign.out_dir / "reeval" / record.label(t.number)
        run = CandidateRun(ObjectiveSpec.from_dict(record.objective), configs, folder)
        candidates.append(Candidate(run, record.key))
    reference = campaign.space.search.reference
    labels = [TrialRecord.of(t).label(t.number) for t in chosen]
    if reference is not None and reference not in labels:
        configs = [campaign.config(seed) for seed in seeds]
        folder = campaign.out_dir / "reeval" / reference
        spec = presets.get(reference)
        candidates.append(Candidate(CandidateRun(spec, configs, folder), spec.key()))
    trained = train_packed(campaign, candidates)
    results: dict[Candidate, CandidateResult] = dict(zip(candidates, trained, strict=True))
    reference_result = None
    if reference is not None:
        at = labels.index(reference) if reference in labels else len(candidates) - 1
        reference_result = results[candidates[at]]
    compared = len(chosen) - (1 if reference in labels else 0)
    rows = [
        _row(t, results[c], reference, reference_result, compared)
        for t, c in zip(chosen, candidates, strict=False)
    ]
    rows.sort(key=_rank, reverse=True)
    path = campaign.out_dir / DISCOVERIES_FILE
    tmp = path.with_suffix(".json.tmp")  # atomic: a kill never leaves half a file
    document = {"seeds": list(seeds), "reference": reference, "candidates": rows}
    if reference_result is not None:
        document["reference_rewards"] = per_seed(reference_result)
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(tmp, path)
    return rows


def _rank(row: dict[str, Any]) -> float:
    value = row["paired_effect"] if row.get("reference") else row["reward"]
    return value if value is not None else -math.inf


def per_seed(result: CandidateResult) -> list[float | None]:
    """The reward on each seed: the mean over tasks of the final held-out reward (None where
    a task's run has no final evaluation)."""
    by_seed: dict[int, list[float | None]] = {}
    for run in result.runs:
        value = run.final_eval["reward"] if run.final_eval else None
        by_seed.setdefault(run.seed, []).append(value)
    return [
        None if any(v is None for v in values) else sum(values) / len(values)  # type: ignore[misc]
        for _, values in sorted(by_seed.items())
    ]


def _row(
    trial: FrozenTrial,
    result: CandidateResult,
    reference: str | None,
    reference_result: CandidateResult | None,
    compared: int,
) -> dict[str, Any]:
    record = TrialRecord.of(trial)
    rewards = result.finals("reward")
    _, low, high, _ = t_interval(rewards)
    paired: dict[str, Any] = {"reference": reference, "n_seeds": len(per_seed(result))}
    if reference_result is not None and record.label(trial.number) != reference:
        mine, theirs = per_seed(result), per_seed(reference_result)
        n = min(len(mine), len(theirs))
        interval = paired_interval(mine[:n], theirs[:n], comparisons=max(1, compared))
        paired.update(
            n_seeds=interval.n,
            paired_effect=finite_or_none(interval.mean),
            ci_low=finite_or_none(interval.low),
            ci_high=finite_or_none(interval.high),
            verdict=verdict(interval),
        )
    else:
        paired.update(paired_effect=None, ci_low=None, ci_high=None, verdict=None)
    return {
        "label": record.label(trial.number),
        "trial": trial.number,
        "baseline": bool(record.baseline),
        "key": record.key,
        "objective": record.objective,
        "search_reward": record.reward,
        "reward": finite_or_none(result.reward),
        "reward_ci95": [finite_or_none(low), finite_or_none(high)],
        "accuracy": finite_or_none(result.accuracy),
        "kl_to_ref": finite_or_none(result.kl_to_ref),
        "rewards": rewards,
        "trained_with": result.trained_with,
        "status": "ok" if result.ok else result.failure,
        **paired,
    }
