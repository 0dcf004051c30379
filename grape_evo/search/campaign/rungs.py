"""Training a lockstep batch of candidates rung by rung, paired with the reference.

Common random numbers: a candidate's seed index s is the reference's seed index s (the same
warm start, prompt stream, evaluation set and sampling streams), so the reference is trained
on every (task, seed) a candidate uses, as one more member of the batch (unless a member is the
reference itself, its baseline), once per campaign: its runs live in ``RUN/reference/`` (read
back when done) and in the study's user attributes ``reference:<task>:<seed>`` (the first
stored is the one every worker pairs with).

Successive halving over seeds: the budget's ``rungs`` (e.g. 3, 9, 27 seeds). After each rung a
candidate's fitness on the seeds so far (`grape_evo.search.fitness`) is stored with its trial
(``rungs``: seeds -> fitness); it earns the next rung's seeds while it is among the best
``keep`` fraction of the candidates that reached this rung (asynchronously, as ASHA: with
fewer than ``1 / keep`` of them it is promoted). Baselines always go on. A candidate that
stops early is PRUNED with the reason; its runs and fitness stay with its trial.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import optuna

from grape_evo.objective import presets
from grape_evo.search.campaign.trials import Candidate
from grape_evo.search.evaluator import CandidateResult, CandidateRun
from grape_evo.search.fitness import Fitness, paired_fitness
from grape_evo.search.records import RunResult, TrialRecord, record

if TYPE_CHECKING:
    from grape_evo.search.campaign import Campaign

__all__ = ["REFERENCE_FOLDER", "Outcome", "reference_runs", "store_reference", "train_rungs"]

REFERENCE_FOLDER = "reference"
_ATTR = "reference:"

Outcome = tuple[CandidateResult, Fitness | None]
"""A candidate's training and its fitness (None without a reference)."""


def reference_runs(study: optuna.Study) -> dict[tuple[str, int], RunResult]:
    """The reference's stored runs by (task slug, seed)."""
    out = {}
    for name, value in study.user_attrs.items():
        if name.startswith(_ATTR):
            run = RunResult.from_dict(json.loads(value))
            out[(run.task, run.seed)] = run
    return out


def store_reference(study: optuna.Study, result: CandidateResult) -> None:
    have = reference_runs(study)
    for run in result.runs:
        if run.ok and (run.task, run.seed) not in have:
            study.set_user_attr(f"{_ATTR}{run.task}:{run.seed}", json.dumps(run.to_dict()))


def _reference_candidate(
    campaign: Campaign, study: optuna.Study, seeds: range
) -> CandidateRun | None:
    """The reference on the seed indices ``seeds``, or None when there is no reference or
    its runs on those seeds are already stored."""
    name = campaign.space.search.reference
    if name is None:
        return None
    budget = campaign.space.budget
    have = reference_runs(study)
    needed = {
        (task.slug, budget.train_config(s).seed) for task in campaign.space.tasks for s in seeds
    }
    if needed <= set(have):
        return None
    configs = [campaign.config(s) for s in range(budget.seeds)]
    folder = campaign.out_dir / REFERENCE_FOLDER
    return CandidateRun(presets.get(name), configs, folder, None, seeds)


def fitness_of(campaign: Campaign, study: optuna.Study, result: CandidateResult) -> Fitness | None:
    """The candidate's paired fitness against the stored reference runs (None without a
    reference)."""
    if campaign.space.search.reference is None:
        return None
    return paired_fitness(result.runs, reference_runs(study), campaign.space.search.fitness)


def score(result: CandidateResult, fitness: Fitness | None) -> float:
    """What ranks candidates: the fitness value, or the mean reward without a reference."""
    return result.reward if fitness is None else fitness.value


def _promoted(
    campaign: Campaign, study: optuna.Study, candidate: Candidate, rung: int, value: float
) -> bool:
    """Whether ``value`` at ``rung`` seeds is among the best ``keep`` of every candidate that
    reached this rung (baselines excluded). With fewer than ``1 / keep`` of them, only the best
    so far is promoted (as Optuna's SuccessiveHalvingPruner: a stopped trial is never resumed,
    so promoting every early trial would give the first ones all the seeds)."""
    keep = campaign.space.search.keep
    peers = [value]
    for t in study.get_trials(deepcopy=False):
        other = TrialRecord.of(t)
        if candidate.trial is not None and t.number == candidate.trial.number:
            continue
        value_there = (other.rungs or {}).get(str(rung))
        if not other.baseline and value_there is not None:
            peers.append(value_there)
    finite = sorted((p for p in peers if math.isfinite(p)), reverse=True)
    cut = finite[max(1, math.floor(keep * len(finite))) - 1] if finite else math.inf
    return math.isfinite(value) and value >= cut


def train_rungs(
    campaign: Campaign, study: optuna.Study, batch: Sequence[Candidate]
) -> list[Outcome]:
    """Train ``batch`` (one lockstep batch) rung by rung with the reference as an extra
    member; returns each candidate's result and fitness, in order."""
    rungs = campaign.space.budget.rungs
    results = [CandidateResult() for _ in batch]
    fitness: list[Fitness | None] = [None for _ in batch]
    start = 0
    for rung in rungs:
        seeds = range(start, rung)
        going = [i for i, r in enumerate(results) if r.going]
        if not going:
            break
        runs = [replace(batch[i].run, seeds=seeds) for i in going]
        reference = _reference_candidate(campaign, study, seeds)
        # A member that is the reference (its baseline) serves as the reference's runs.
        itself = [
            j
            for j, run in enumerate(runs)
            if reference is not None
            and run.spec.key() == reference.spec.key()
            and list(run.configs) == list(reference.configs)
        ]
        members = runs + ([reference] if reference is not None and not itself else [])
        trained = campaign.train_runs(members)
        if reference is not None:
            store_reference(study, trained[itself[0]] if itself else trained[-1])
        for i, part in zip(going, trained, strict=False):
            results[i].runs.extend(part.runs)
            results[i].stopped = part.stopped
        ranked = []  # every member's value is recorded before any is judged against the rest
        for i in going:
            candidate, result = batch[i], results[i]
            fitness[i] = fitness_of(campaign, study, result)
            if not result.going or candidate.trial is None:
                continue
            value = score(result, fitness[i])
            rungs_so_far = dict(TrialRecord.of(candidate.trial).rungs or {})
            rungs_so_far[str(rung)] = value if math.isfinite(value) else None
            record(candidate.trial, rungs=rungs_so_far)
            ranked.append((i, value))
        for i, value in ranked:
            candidate, result = batch[i], results[i]
            last = rung == rungs[-1]
            is_baseline = TrialRecord.of(candidate.trial).baseline is not None
            if not (last or is_baseline or _promoted(campaign, study, candidate, rung, value)):
                result.stopped = (
                    f"successive halving: fitness {value:.4g} at {rung} seeds is not among "
                    f"the best {campaign.space.search.keep:.2g} of the candidates there"
                )
        start = rung
    return list(zip(results, fitness, strict=True))
