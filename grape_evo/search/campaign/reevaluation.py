"""The fresh-seed re-evaluation: the top-k candidates and every baseline re-run on seeds no
trial used; only these numbers are reported as discoveries (``RUN/discoveries.json``)."""

from __future__ import annotations

import json
import math
import os
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from grape_evo.analysis.stats import t_interval
from grape_evo.objective import ObjectiveSpec
from grape_evo.objective.behaviour import same_behaviour
from grape_evo.search.campaign.ledger import finite_or_none, reward_or_minus_inf
from grape_evo.search.campaign.scheduler import batches, train
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
    for t in sorted(complete, key=reward_or_minus_inf, reverse=True):
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
        configs = [
            budget.train_config(seed, lr=record.overrides.get("lr"), device=campaign.device)
            for seed in seeds
        ]
        folder = campaign.out_dir / "reeval" / record.label(t.number)
        run = CandidateRun(ObjectiveSpec.from_dict(record.objective), configs, folder)
        candidates.append(Candidate(run, record.key))
    results: dict[Candidate, CandidateResult] = {}
    for batch in batches(candidates, campaign.population):
        results.update(zip(batch, train(campaign, batch, reuse_existing=True), strict=True))
    rows = [_row(t, results[c]) for t, c in zip(chosen, candidates, strict=True)]
    rows.sort(key=lambda r: r["reward"] if r["reward"] is not None else -math.inf, reverse=True)
    path = campaign.out_dir / DISCOVERIES_FILE
    tmp = path.with_suffix(".json.tmp")  # atomic: a kill never leaves half a file
    tmp.write_text(json.dumps({"seeds": list(seeds), "candidates": rows}, indent=2) + "\n")
    os.replace(tmp, path)
    return rows


def _row(trial: FrozenTrial, result: CandidateResult) -> dict[str, Any]:
    record = TrialRecord.of(trial)
    rewards = result.finals("reward")
    _, low, high, _ = t_interval(rewards)
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
    }
