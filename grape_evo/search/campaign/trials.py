"""One trial from ask to tell: claim it, decide its objective, reuse an earlier result, report
intermediate values, and store what its training produced."""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from grape_evo.objective import presets
from grape_evo.objective.behaviour import behaviour
from grape_evo.objective.expression.screen import formulas, screen
from grape_evo.search.campaign.ledger import (
    candidate_key,
    count_budget,
    find_completed,
    finite_or_none,
)
from grape_evo.search.campaign.storage import is_enqueued, planned_genome
from grape_evo.search.evaluator import CandidateResult, CandidateRun, Reporter, write_artifacts
from grape_evo.search.fitness import Fitness
from grape_evo.search.records import TrialRecord, record

if TYPE_CHECKING:
    from grape_evo.search.campaign import Campaign

Values = float | tuple[float, float]
"""A trial's objective values: the reward, or (reward, KL to the reference)."""


class Surplus(RuntimeError):
    """A sampled trial found the whole budget already claimed by other workers."""


class Rejected(RuntimeError):
    """A candidate whose formulas failed their cheap checks (stage one): it fails untrained."""


@dataclass(frozen=True, eq=False)
class Candidate:
    """A trial's objective to train (`CandidateRun`) and its key; ``trial`` is None for a
    re-evaluation."""

    run: CandidateRun
    key: str
    trial: optuna.Trial | None = None


def claim(campaign: Campaign, trial: optuna.Trial) -> bool:
    """Whether this process is the first to start ``trial`` on this campaign folder.

    On SQLite two workers can pop the same enqueued trial (SQLite ignores the row lock Optuna
    asks for). An exclusive-create file per trial number decides which one runs it. Workers
    on other hosts use a server database, whose row locks prevent the race.
    """
    folder = campaign.out_dir / ".claims"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(folder / f"{trial.number:05d}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def is_surplus(campaign: Campaign, trial: optuna.Trial) -> bool:
    """A sampled trial (not enqueued: baselines and retries are) whose earlier trials already
    claim the whole budget: another worker took the last slot first."""
    if campaign.budget is None or is_enqueued(trial):
        return False
    trials = trial.study.get_trials(deepcopy=False)
    return count_budget(trials, count_running=True, before=trial.number) >= campaign.budget


def prepare(campaign: Campaign, trial: optuna.Trial) -> Candidate | None:
    """Claim ``trial``, decide its objective and store it with the trial.

    Returns None when another process already runs it (see `claim`). Raises `Surplus` for a
    sampled trial the budget has no room for, and `Rejected` (after recording why) for one
    whose formulas fail their cheap checks (`grape_evo.objective.expression.screen`).
    """
    if not claim(campaign, trial):
        return None
    if is_surplus(campaign, trial):
        record(trial, surplus=True)
        raise Surplus(
            f"surplus: the budget of {campaign.budget} trials was claimed by other workers "
            "before this one started (not trained, not counted)"
        )
    record(trial, worker=f"{socket.gethostname()}:{os.getpid()}")
    space, baseline = campaign.space, TrialRecord.of(trial).baseline
    # A baseline outside the genome (e.g. DPO in a GRPO space) gets no genes: sampled genes
    # would credit its score to a genome it does not have.
    genes: dict[str, Any] = {}
    if not baseline or TrialRecord.of(trial).genome_complete:
        genes = space.suggest(trial, planned=planned_genome(trial))
    if baseline:
        spec, overrides = presets.get(baseline), {}
    else:
        spec, overrides = space.to_spec(genes)
        spec = spec.with_name(f"candidate-{trial.number}")
    key = candidate_key(spec, overrides)
    screening = screen(spec)
    record(
        trial,
        objective=spec.to_dict(),
        key=key,
        overrides=overrides,
        formula=spec.latex(),
        genes=genes or None,
        checks=screening.to_dict() if formulas(spec) else None,
    )
    if not screening.passed:
        failure = "cheap checks: " + "; ".join(screening.problems)
        record(trial, failure=failure, rejected=True)
        raise Rejected(failure)
    record(trial, behaviour=behaviour(spec))
    configs = [campaign.config(seed, overrides.get("lr")) for seed in range(space.budget.seeds)]
    folder = campaign.out_dir / "trials" / f"{trial.number:05d}"
    may_stop = prunable(campaign, trial)
    report = reporter(campaign, trial, may_stop)
    run = CandidateRun(spec, configs, folder, report, may_stop=may_stop)
    return Candidate(run, key, trial)


def reuse(candidate: Candidate) -> Values | None:
    """The values of an earlier completed trial with the same key (copied to this trial), or
    None when there is none."""
    trial = candidate.trial
    assert trial is not None
    mine = TrialRecord.of(trial)
    previous = find_completed(trial.study, candidate.key, mine.overrides, mine.behaviour)
    if previous is None:
        return None
    earlier = TrialRecord.of(previous)
    record(
        trial,
        reused_from=previous.number,
        runs=earlier.runs,
        reward=earlier.reward,
        accuracy=earlier.accuracy,
        kl_to_ref=earlier.kl_to_ref,
        artifacts=earlier.artifacts,
        trained_with=earlier.trained_with,
        fitness=earlier.fitness,
        rungs=earlier.rungs,
    )
    assert earlier.score is not None
    return values(trial.study, earlier.score, earlier.kl_to_ref)


def values(study: optuna.Study, score: float, kl: float | None) -> Values:
    """A trial's values: its score (fitness, or mean reward without a reference), or
    (score, KL; nan when unknown) in a two-objective study."""
    if len(study.directions) == 1:
        return score
    return score, float("nan") if kl is None else kl


def reporter(campaign: Campaign, trial: optuna.Trial, may_prune: bool) -> Reporter:
    """Reports intermediate values to ``trial`` (single-objective studies only: Optuna cannot
    prune the others) and, when ``may_prune`` (`prunable`), returns a stop reason when its
    pruner says so. A baseline reports but is never pruned: it is the yardstick every
    discovery is compared with on fresh seeds, and only completed trials are re-evaluated."""
    report_values = len(campaign.directions) == 1

    def report(step: int, value: float) -> str | None:
        if report_values:
            trial.report(value, step)
            if may_prune and trial.should_prune():
                return f"pruned at global step {step}: reward {value:.3f}"
        return None

    return report


def prunable(campaign: Campaign, trial: optuna.Trial) -> bool:
    """Whether its pruner may stop ``trial``: a single-objective study's trial that is not a
    baseline (a baseline's seeds may train together; see `reporter`)."""
    return len(campaign.directions) == 1 and not TrialRecord.of(trial).baseline


def conclude(
    candidate: Candidate, result: CandidateResult, fitness: Fitness | None
) -> tuple[Values | None, TrialState]:
    """Store a trained candidate's runs, checksums and fitness with its trial; what to tell
    it: PRUNED (with the reason) when its pruner or successive halving stopped it, FAIL when
    a run did not end ``ok``, else COMPLETE with its values."""
    trial = candidate.trial
    assert trial is not None
    record(
        trial,
        artifacts=write_artifacts(Path(candidate.run.folder), result),
        runs=result.runs,
        reward=finite_or_none(result.reward),
        accuracy=finite_or_none(result.accuracy),
        kl_to_ref=finite_or_none(result.kl_to_ref),
        trained_with=result.trained_with,
        fitness=None if fitness is None else fitness.to_dict(),
    )
    if result.stopped is not None:
        record(trial, failure=result.stopped)
        return None, TrialState.PRUNED
    if not result.ok:
        record(trial, failure=result.failure)
        return None, TrialState.FAIL
    score = result.reward if fitness is None else fitness.value
    if not math.isfinite(score):
        record(trial, failure="no paired reference run to score it against")
        return None, TrialState.FAIL
    return values(trial.study, score, result.kl_to_ref), TrialState.COMPLETE
