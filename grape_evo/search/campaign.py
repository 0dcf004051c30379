"""An evolution campaign: one Optuna study per search space, resumable and shareable.

* Storage: ``sqlite:///RUN/study.db`` by default (SQLite with a 60 s busy timeout, so several
  local workers can share it), any SQLAlchemy URL (PostgreSQL for many hosts), or a journal
  file (``journal:PATH``). Workers send heartbeats; a trial whose worker died is failed after
  the grace period and retried by the next worker that starts a trial. See docs/reliability.md.
* Workers race for the last slot of the budget: a sampled trial that finds the budget already
  claimed by earlier trials is failed at once as ``surplus`` (never trained) and not counted.
* Each trial folder holds ``artifacts.json``: a sha256 of every run's ``summary.json`` and
  ``metrics.jsonl``; the trial stores the same checksums (``artifacts``) for ``grape report``.
* Baselines (presets) are enqueued first, with the same budget and seeds; where a baseline is a
  point of the genome its genes are set, so the evolution sampler can breed from it.
* A candidate whose key (canonical spec + training overrides) was already evaluated reuses that
  result instead of training again.
* After the budget, the top-k candidates and the baselines are re-run on fresh seeds; only those
  numbers are reported as discoveries (mean and bootstrap 95% CI).
* ``jobs``: a campaign (or worker) can run N trials at once on one machine. It starts N worker
  processes on the same storage, each with ``max(1, cores // N)`` torch threads (on CUDA they
  share the GPU), and stays the supervisor: it reports their finished trials and, once they
  have exited, runs whatever a dead worker left (its trial is retried on its stale heartbeat).
  Ctrl-C stops every worker (each records its trial as FAIL), and so does the death of the
  campaign's process.
* ``population``: each process asks up to P trials per round (Optuna's ask/tell, a heartbeat
  thread per trial) and trains the ones population mode supports together
  (`evaluator.run_population`, grouped by group size); the others train alone in the same
  round. Every trial keeps its own folder, reports, pruning and result.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import functools
import hashlib
import json
import math
import multiprocessing
import os
import signal
import socket
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.storages._heartbeat import get_heartbeat_thread
from optuna.trial import FrozenTrial, TrialState

from grape_evo.analysis.stats import bootstrap_ci
from grape_evo.objective import ObjectiveSpec, presets
from grape_evo.search.evaluator import (
    CandidateResult,
    Reporter,
    run_candidate,
    run_population,
    write_artifacts,
)
from grape_evo.search.sampler import EvolutionSampler, Gene
from grape_evo.search.space import SearchSpace, parse_space
from grape_evo.training import PopulationUnsupported, TrainConfig
from grape_evo.training.population import batch_rows, unsupported_reason

STUDY_FILE = "study.db"
optuna.logging.set_verbosity(optuna.logging.WARNING)
REEVAL_SEED_OFFSET = 1000
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
PROGRESS_SECONDS = 1.0
"""How often a campaign with ``jobs > 1`` looks for trials its worker processes finished, and
how often a process that waits for trials running elsewhere looks at the study."""
STOP_SECONDS = 30.0
"""After Ctrl-C, how long worker processes get to record their interrupted trials."""


Values = float | tuple[float, float]
"""A trial's objective values: the reward, or (reward, KL to the reference)."""


class CampaignError(ValueError):
    """A user-facing problem with a campaign's folder, storage or study."""


class DuplicateTrial(RuntimeError):
    """This process popped a trial that another worker already runs (see `Campaign._claim`)."""


class CandidateFailed(RuntimeError):
    """A candidate diverged or failed; the trial is recorded as FAIL with this reason."""


def default_storage_url(out_dir: Path) -> str:
    return f"sqlite:///{(out_dir / STUDY_FILE).resolve()}"


def make_storage(
    url: str, heartbeat_interval: int = 10, grace_period: int | None = None
) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url`` (SQLAlchemy URL or ``journal:PATH``)."""
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 60}
    heartbeat: dict[str, Any] = {
        "heartbeat_interval": heartbeat_interval,
        "grace_period": grace_period or 2 * heartbeat_interval,
    }
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):  # optuna >= 4.9
                retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)
                heartbeat["heartbeat_stale_trial_callback"] = retry
            else:
                retry = optuna.storages.RetryFailedTrialCallback(max_retry=3)
                heartbeat["failed_trial_callback"] = retry
            return RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat)
    except Exception as err:  # SQLAlchemy raises many types for a bad URL
        raise CampaignError(f"cannot open storage '{url}': {err}") from None


def fail_stale_trials(study: optuna.Study) -> None:
    """Optuna's stale-trial check, plus RUNNING trials that never sent a heartbeat.

    Optuna fails a trial only once its last heartbeat is older than the grace period; a worker
    killed between creating a trial and its first heartbeat leaves it RUNNING with none, and
    a campaign waiting for it would wait forever. Such a trial is failed (and retried like any
    stale trial) once its start is older than the grace period (hosts' clocks must agree).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    storage = study._storage
    backend = getattr(storage, "_backend", storage)  # a study wraps it in a cache
    if not isinstance(backend, RDBStorage) or backend.heartbeat_interval is None:
        return
    grace = backend.grace_period or 2 * backend.heartbeat_interval
    now = datetime.datetime.now()
    old = [
        t._trial_id
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if t.datetime_start is not None and (now - t.datetime_start).total_seconds() > grace
    ]
    if not old:
        return
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    with _create_scoped_session(backend.scoped_session) as session:
        query = session.query(models.TrialHeartbeatModel.trial_id)
        beating = {row[0] for row in query.filter(models.TrialHeartbeatModel.trial_id.in_(old))}
    get_callback = getattr(storage, "get_heartbeat_stale_trial_callback", None)
    get_callback = get_callback or storage.get_failed_trial_callback
    for trial_id in old:
        if trial_id in beating:
            continue
        try:
            if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker failed it first
        callback = get_callback()
        if callback is not None:
            callback(study, copy.deepcopy(storage.get_trial(trial_id)))


def make_sampler(space: SearchSpace, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """The space's sampler; a space without axes is a single point (nothing to sample)."""
    settings = space.search
    seed = settings.seed if seed is None else seed
    name = settings.sampler
    if not space.axes:
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "evolution":
        genes = [Gene(a.path, a.distribution(), a.when) for a in space.axes]
        return EvolutionSampler(genes, population_size=settings.population_size, seed=seed)
    if name == "tpe":
        with warnings.catch_warnings():  # `multivariate` and `group` are marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=settings.population_size, seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    raise CampaignError(f"unknown sampler '{name}'")


def make_pruner(space: SearchSpace) -> optuna.pruners.BasePruner:
    """The space's pruner. Reports are indexed by a global step over (task, seed, step), so a
    candidate always completes its first run (one task, one seed) before it can be pruned."""
    name = space.search.pruner
    run_steps = space.budget.steps
    total_steps = run_steps * space.budget.seeds * len(space.tasks)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=run_steps)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=run_steps, max_resource=total_steps)
    if name == "wilcoxon":
        evals_per_run = max(1, run_steps // space.budget.eval_every)
        return optuna.pruners.WilcoxonPruner(p_threshold=0.1, n_startup_steps=evals_per_run)
    return optuna.pruners.NopPruner()


def candidate_key(spec: ObjectiveSpec, overrides: dict[str, Any]) -> str:
    """Canonical spec key plus the training overrides (e.g. a learning-rate gene)."""
    if not overrides:
        return spec.key()
    text = json.dumps({"spec": spec.key(), **overrides}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def project_onto_axes(space: SearchSpace, spec: ObjectiveSpec) -> dict[str, Any]:
    """Genes of ``spec`` that lie in the space (used to seed the genome with baselines)."""
    flat = _flatten(spec.to_dict())
    params: dict[str, Any] = {}
    for axis in space.axes:
        if axis.path not in flat or not axis.is_active(params):
            continue
        value = flat[axis.path]
        if (axis.kind == "categorical" and value in (axis.choices or ())) or (
            axis.kind != "categorical"
            and isinstance(value, int | float)
            and axis.low <= value <= axis.high
        ):
            params[axis.path] = value
    return params


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, path + "."))
        else:
            out[path] = value
    return out


def budget_used(study: optuna.Study, count_running: bool = False) -> int:
    """Finished trials, not counting a failed trial that was retried (its retry counts) or a
    surplus one; with ``count_running``, trials running now (in any worker) count too."""
    return _count_budget(study.get_trials(deepcopy=False), count_running)


def _count_budget(trials: list[FrozenTrial], count_running: bool, before: int | None = None) -> int:
    """Trials that count toward the budget (with ``before``: only those numbered below it)."""
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    retried |= {t.system_attrs.get("failed_trial") for t in trials} - {None}
    counted = [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL]
    if count_running:
        counted.append(TrialState.RUNNING)
    return sum(
        1
        for t in trials
        if t.state in counted
        and t.number not in retried
        and not t.user_attrs.get("surplus")
        and (before is None or t.number < before)
    )


def budget_claimed(study: optuna.Study) -> int:
    """Trials finished or running: a worker starts a new trial only below the budget."""
    return budget_used(study, count_running=True)


@dataclass(frozen=True, eq=False)
class _Candidate:
    """An objective to train: its TrainConfigs (one per seed), its folder and, in the search,
    its claimed trial (None when re-evaluated)."""

    spec: ObjectiveSpec
    key: str
    configs: list[TrainConfig]
    folder: Path
    trial: optuna.Trial | None = None


@dataclass
class Campaign:
    """A search space bound to a run folder and a storage."""

    space: SearchSpace
    out_dir: Path
    storage_url: str | None = None
    device: str = "cpu"
    heartbeat_interval: int = 10
    grace_period: int | None = None
    jobs: int = 1
    population: int = 1

    def __post_init__(self) -> None:
        for name in ("jobs", "population"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CampaignError(f"{name} must be an integer >= 1, got {value!r}")
        self.out_dir = Path(self.out_dir)
        self.url = self.storage_url or default_storage_url(self.out_dir)
        self.budget: int | None = None  # set by optimize()

    # ---- study ------------------------------------------------------------------------
    @property
    def directions(self) -> list[str]:
        return [
            "minimize" if o == "kl_to_ref" else "maximize" for o in self.space.search.objectives
        ]

    def storage(self) -> optuna.storages.BaseStorage:
        return make_storage(self.url, self.heartbeat_interval, self.grace_period)

    def exists(self) -> bool:
        """Whether the storage already holds this campaign's study."""
        if self.url.startswith("sqlite:///") and not Path(self.url[10:]).exists():
            return False
        names = {s.study_name for s in optuna.get_all_study_summaries(self.storage())}
        return self.space.name in names

    def open(self, create: bool) -> optuna.Study:
        """Load the study (``create``: or create it, store the space, enqueue baselines)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        storage = self.storage()
        study = optuna.create_study(
            study_name=self.space.name,
            storage=storage,
            directions=self.directions,
            sampler=make_sampler(self.space),
            pruner=make_pruner(self.space),
            load_if_exists=True,
        )
        # A process that joins or resumes must not replay the random genomes of the first
        # process: its sampler's seed moves on with the study (and with the process id). So
        # must workers that join at the same time, before any trial exists.
        existing = len(study.get_trials(deepcopy=False))
        if existing or not create:
            seed = self.space.search.seed + 7919 * existing + (0 if create else os.getpid())
            study.sampler = make_sampler(self.space, seed % (2**31 - 1))
        if create and not study.user_attrs.get("baselines_enqueued"):
            study.set_user_attr("space", json.dumps(self.space.to_dict()))
            study.set_user_attr("out_dir", str(self.out_dir.resolve()))
            # A process killed while enqueueing left some baselines: enqueue only the others.
            have = {t.user_attrs.get("baseline") for t in study.get_trials(deepcopy=False)}
            for name in self.space.baselines:
                if name in have:
                    continue
                params = project_onto_axes(self.space, presets.get(name))
                complete = set(params) == {a.path for a in self.space.active_axes(params)}
                study.enqueue_trial(
                    params if complete else {},
                    user_attrs={"baseline": name, "genome_complete": complete},
                    skip_if_exists=False,
                )
            study.set_user_attr("baselines_enqueued", True)
        return study

    # ---- one trial --------------------------------------------------------------------
    def objective(self, trial: optuna.Trial) -> Values:
        candidate = self._prepare(trial)
        if candidate is None:
            self._wait_while_running(trial)
            raise DuplicateTrial(
                f"trial {trial.number} was also started by another worker; this copy did not run it"
            )
        reused = self._reuse(candidate)
        return (
            reused if reused is not None else self._settle(candidate, self._train_alone(candidate))
        )

    def _prepare(self, trial: optuna.Trial) -> _Candidate | None:
        """Claim ``trial``, decide its objective and store it with the trial.

        Returns None when another process already runs it (see `_claim`). Raises
        `CandidateFailed` for a surplus trial.
        """
        if not self._claim(trial):
            return None
        if self._is_surplus(trial):
            trial.set_user_attr("surplus", True)
            raise CandidateFailed(
                f"surplus: the budget of {self.budget} trials was claimed by other workers "
                "before this one started (not trained, not counted)"
            )
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        baseline = trial.user_attrs.get("baseline")
        # A baseline outside the genome (e.g. DPO in a GRPO space) gets no genes: sampled
        # genes would credit its score to a genome it does not have.
        if baseline and not trial.user_attrs.get("genome_complete"):
            params: dict[str, Any] = {}
        else:
            params = self.space.suggest(trial)
        if baseline:
            spec, overrides = presets.get(baseline), {}
        else:
            spec, overrides = self.space.to_spec(params)
            spec = spec.with_name(f"candidate-{trial.number}")
        key = candidate_key(spec, overrides)
        trial.set_user_attr("objective", spec.to_dict())
        trial.set_user_attr("key", key)
        trial.set_user_attr("overrides", overrides)
        trial.set_user_attr("formula", spec.latex())
        configs = [
            self.space.budget.train_config(seed, lr=overrides.get("lr"), device=self.device)
            for seed in range(self.space.budget.seeds)
        ]
        folder = self.out_dir / "trials" / f"{trial.number:05d}"
        return _Candidate(spec, key, configs, folder, trial)

    def _reuse(self, candidate: _Candidate) -> Values | None:
        """The values of an earlier completed trial with the same key (copied to this trial),
        or None when there is none."""
        trial = candidate.trial
        assert trial is not None  # only search candidates are reused
        previous = self._find_completed(trial, candidate.key)
        if previous is None:
            return None
        trial.set_user_attr("reused_from", previous.number)
        for name in ("runs", "reward", "accuracy", "kl_to_ref", "artifacts"):
            trial.set_user_attr(name, previous.user_attrs.get(name))
        return self._values(previous.user_attrs["reward"], previous.user_attrs["kl_to_ref"])

    def _reporter(self, trial: optuna.Trial | None) -> Reporter | None:
        """Reports intermediate values to ``trial`` and raises `optuna.TrialPruned` when its
        pruner says so (single-objective studies only: Optuna cannot prune the others); None
        without a trial. A baseline reports but is never pruned: it is the yardstick every
        discovery is compared with on fresh seeds, and only completed trials are re-evaluated.
        """
        if trial is None:
            return None
        report_values = len(self.directions) == 1
        prunable = report_values and not trial.user_attrs.get("baseline")

        def report(step: int, value: float) -> None:
            if report_values:
                trial.report(value, step)
                if prunable and trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at global step {step}: reward {value:.3f}")

        return report

    def _conclude(self, candidate: _Candidate, result: CandidateResult) -> Values:
        """Store a finished candidate's runs and checksums with its trial; its values, or
        `CandidateFailed` when a run did not end ``ok``."""
        trial = candidate.trial
        assert trial is not None  # only search candidates have a trial to store results in
        trial.set_user_attr("artifacts", write_artifacts(candidate.folder, result))
        self._store(trial, result)
        if not result.ok:
            trial.set_user_attr("failure", result.failure)
            raise CandidateFailed(result.failure)
        return self._values(result.reward, result.kl_to_ref)

    def _values(self, reward: float, kl: float) -> Values:
        if len(self.directions) == 1:
            return reward
        return reward, kl

    @staticmethod
    def _store(trial: optuna.Trial, result: CandidateResult) -> None:
        trial.set_user_attr("runs", result.attrs()["runs"])
        trial.set_user_attr("reward", _finite_or_none(result.reward))
        trial.set_user_attr("accuracy", _finite_or_none(result.accuracy))
        trial.set_user_attr("kl_to_ref", _finite_or_none(result.kl_to_ref))

    def _claim(self, trial: optuna.Trial) -> bool:
        """Whether this process is the first to start ``trial`` on this campaign folder.

        On SQLite two workers can pop the same enqueued trial (SQLite ignores the row lock
        Optuna asks for). An exclusive-create file per trial number decides which one runs it.
        Workers on other hosts use a server database, whose row locks prevent the race.
        """
        folder = self.out_dir / ".claims"
        folder.mkdir(parents=True, exist_ok=True)
        try:
            os.close(os.open(folder / f"{trial.number:05d}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True

    def _wait_while_running(self, trial: optuna.Trial) -> None:
        """Block until the worker that runs ``trial`` has finished it (or it was failed as stale),
        so that this copy's failed tell cannot overwrite its result."""
        storage = trial.study._storage
        while storage.get_trial(trial._trial_id).state == TrialState.RUNNING:
            time.sleep(min(1.0, self.heartbeat_interval))

    def _is_surplus(self, trial: optuna.Trial) -> bool:
        """A sampled trial (not enqueued: baselines and retries are) whose earlier trials
        already claim the whole budget: another worker took the last slot first."""
        if self.budget is None:
            return False
        attrs = trial.study._storage.get_trial_system_attrs(trial._trial_id)
        if "fixed_params" in attrs or "failed_trial" in attrs:
            return False
        trials = trial.study.get_trials(deepcopy=False)
        return _count_budget(trials, count_running=True, before=trial.number) >= self.budget

    @staticmethod
    def _find_completed(trial: optuna.Trial, key: str) -> FrozenTrial | None:
        study = trial.study
        for other in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if other.user_attrs.get("key") == key and other.user_attrs.get("reward") is not None:
                return other
        return None

    # ---- the campaign loop ------------------------------------------------------------
    def optimize(
        self,
        study: optuna.Study,
        budget: int,
        on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None,
        wait_for_running: bool = False,
    ) -> None:
        """Run trials in this process until the study has ``budget`` finished trials.

        Trials left RUNNING by a dead worker are failed once their heartbeat is stale and
        retried (a retry is a new trial; the failed one no longer counts toward the budget).
        With ``wait_for_running`` this returns only when no trial is RUNNING any more, so a
        campaign re-evaluates only after every trial, retries included, has finished.

        With ``jobs > 1`` the trials run in ``jobs`` worker processes (``on_trial`` is called
        here, within about a second of each finished trial); this process then runs whatever
        the workers left, e.g. the retry of a trial whose worker was killed.
        """

        self.budget = budget
        if self.jobs > 1:
            self._run_worker_processes(study, budget, on_trial)

        def stop_at_budget(study: optuna.Study, trial: FrozenTrial) -> None:
            if on_trial is not None:
                on_trial(study, trial)
            if budget_claimed(study) >= budget and not _waiting(study):
                study.stop()

        while True:
            fail_stale_trials(study)
            if _waiting(study) or budget_claimed(study) < budget:
                if self.population > 1:
                    self._population_round(study, budget, on_trial)
                    continue
                try:
                    study.optimize(
                        self.objective,
                        n_trials=None,
                        catch=(CandidateFailed,),
                        callbacks=[stop_at_budget],
                        gc_after_trial=False,
                    )
                except ValueError as err:
                    # A DuplicateTrial's tell fails: the trial's first worker has recorded it.
                    if not str(err).startswith("Cannot tell a "):
                        raise
                continue
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if not running or not wait_for_running:
                return
            time.sleep(min(self.heartbeat_interval, PROGRESS_SECONDS))

    # ---- population mode --------------------------------------------------------------
    def _population_round(
        self,
        study: optuna.Study,
        budget: int,
        on_trial: Callable[[optuna.Study, FrozenTrial], None] | None,
    ) -> None:
        """Ask up to ``population`` trials and train them at once; tell each its result.

        Candidates that population mode can train together (`unsupported_reason` is None, a
        policy without LoRA) and that share a group size form one `run_population`; any other
        trains alone, as in `objective`. Each trial keeps its own folder, reports and pruning
        (a pruned member leaves the population, the others go on). Trials are told as their
        group finishes. On Ctrl-C (or any error) every trial not yet told is recorded as FAIL,
        as `study.optimize` records its trial.
        """
        untold: dict[int, optuna.Trial] = {}

        def tell(trial: optuna.Trial, values: Values | None, state: TrialState) -> None:
            frozen = study.tell(trial, values, state=state)
            del untold[trial.number]
            if on_trial is not None:
                on_trial(study, frozen)

        with contextlib.ExitStack() as heartbeats:
            try:
                candidates: list[_Candidate] = []
                while len(candidates) < self.population and (
                    _waiting(study) or budget_claimed(study) < budget
                ):
                    with warnings.catch_warnings():  # heartbeats: sent below, per trial
                        warnings.filterwarnings("ignore", "Heartbeat of storage is supposed")
                        trial = study.ask()
                    untold[trial.number] = trial
                    try:
                        candidate = self._prepare(trial)
                    except CandidateFailed:  # surplus
                        tell(trial, None, TrialState.FAIL)
                        continue
                    if candidate is None:  # another worker runs it and tells it
                        del untold[trial.number]
                        continue
                    heartbeats.enter_context(get_heartbeat_thread(trial._trial_id, study._storage))
                    reused = self._reuse(candidate)
                    if reused is not None:
                        tell(trial, reused, TrialState.COMPLETE)
                        continue
                    candidates.append(candidate)
                for group in self._groups(candidates):
                    for candidate, result in zip(group, self._train_group(group), strict=True):
                        settle = functools.partial(self._settle, candidate, result)
                        tell(candidate.trial, *_outcome(settle))
            except BaseException:
                for trial in untold.values():
                    study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                raise

    def _groups(self, candidates: list[_Candidate]) -> list[list[_Candidate]]:
        """Candidates to train together: with ``population > 1``, those population mode
        supports, by data (on-policy: by group size; offline pairs), in chunks of at most
        ``population``; every other alone.

        Population mode can mix group sizes (`batch_rows` equal), but then every member's
        forward runs as many prompts as the member with the most (group size 1: one prompt
        per row). Measured on the quickstart space (CPU, no pruner): PPO (group size 1) with
        the GRPO candidates made the search 31% slower than PPO alone beside them.
        """
        together: dict[tuple[str | int, ...], list[_Candidate]] = {}
        alone: list[list[_Candidate]] = []
        for candidate in candidates:
            spec = candidate.spec.canonical()
            if (
                self.population == 1
                or self.space.policy.use_lora
                or unsupported_reason(spec) is not None
            ):
                alone.append([candidate])
            else:
                rows = batch_rows(candidate.configs[0], spec)
                key = (
                    (spec.data, rows, spec.group_size) if spec.data == "on_policy" else (spec.data,)
                )
                together.setdefault(key, []).append(candidate)
        size = self.population
        chunks = [g[i : i + size] for g in together.values() for i in range(0, len(g), size)]
        return [*chunks, *alone]

    def _train_group(
        self, group: list[_Candidate], reuse_existing: bool = False
    ) -> list[CandidateResult]:
        """Train a group: one `run_population` when it has several members (one by one if
        population mode rejects them), else `run_candidate`. A pruner's signal is kept in a
        result's ``stopped_by``."""
        if len(group) > 1:
            try:
                return run_population(
                    [c.spec for c in group],
                    self.space.tasks,
                    [c.configs for c in group],
                    self.space.policy,
                    [c.folder for c in group],
                    [self._reporter(c.trial) for c in group],
                    reuse_existing=reuse_existing,
                )
            except PopulationUnsupported as err:
                warnings.warn(
                    f"population mode cannot train these candidates ({err}); "
                    "training them one by one",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return [self._train_alone(c, reuse_existing) for c in group]

    def _train_alone(self, candidate: _Candidate, reuse_existing: bool = False) -> CandidateResult:
        try:
            return run_candidate(
                candidate.spec,
                self.space.tasks,
                candidate.configs,
                self.space.policy,
                candidate.folder,
                report=self._reporter(candidate.trial),
                reuse_existing=reuse_existing,
            )
        except optuna.TrialPruned as err:
            return CandidateResult(stopped_by=err)

    def _settle(self, candidate: _Candidate, result: CandidateResult) -> Values:
        """A trained candidate's values, or the pruner's signal its reporter raised."""
        if result.stopped_by is not None:
            raise result.stopped_by
        return self._conclude(candidate, result)

    def _run_worker_processes(
        self,
        study: optuna.Study,
        budget: int,
        on_trial: Callable[[optuna.Study, FrozenTrial], None] | None,
    ) -> None:
        """Run ``jobs`` worker processes to the budget; report their trials as they finish.

        Processes are spawned (not forked: CUDA cannot be forked). On Ctrl-C (or any error
        here) the workers are interrupted, get :data:`STOP_SECONDS` to record their trials as
        FAIL (a resumed campaign goes on from there), and are killed after that; a killed
        worker's RUNNING trial is retried on its stale heartbeat.
        """
        threads = max(1, usable_cores() // self.jobs)
        context = multiprocessing.get_context("spawn")
        worker = replace(self, jobs=1)
        processes = [
            context.Process(
                target=_worker_process,
                args=(worker, budget, threads),
                name=f"grape-worker-{i}",
            )
            for i in range(self.jobs)
        ]
        reported = {t.number for t in study.get_trials(deepcopy=False, states=FINISHED)}

        def report_finished() -> None:
            for t in study.get_trials(deepcopy=False, states=FINISHED):
                if t.number not in reported:
                    reported.add(t.number)
                    if on_trial is not None:
                        on_trial(study, t)

        try:
            for process in processes:
                process.start()
            while any(p.is_alive() for p in processes):
                wait([p.sentinel for p in processes if p.is_alive()], timeout=PROGRESS_SECONDS)
                report_finished()
        except BaseException:
            _stop(processes)
            raise
        failed = [f"{p.name} (pid {p.pid}): {p.exitcode}" for p in processes if p.exitcode]
        if failed:
            warnings.warn(
                f"worker processes exited with an error status: {', '.join(failed)}; "
                "their unfinished trials are retried",
                RuntimeWarning,
                stacklevel=3,
            )

    # ---- fresh-seed re-evaluation -----------------------------------------------------
    def reevaluate(self, study: optuna.Study) -> list[dict[str, Any]]:
        """Re-run the top-k candidates and every baseline on fresh seeds; rank them.

        Results are written to ``RUN/discoveries.json``; runs already done (same objective key,
        status ok) are read back, so an interrupted re-evaluation resumes.
        """
        budget = self.space.budget
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        ranked = sorted(complete, key=_reward_or_minus_inf, reverse=True)
        chosen: list[FrozenTrial] = []
        seen: set[str] = set()
        for t in ranked:
            key = t.user_attrs.get("key")
            if key in seen or t.user_attrs.get("baseline"):
                continue
            seen.add(key)
            chosen.append(t)
            if len(chosen) == budget.top_k:
                break
        for name in self.space.baselines:
            match = [t for t in complete if t.user_attrs.get("baseline") == name]
            if match:
                chosen.append(match[0])
        seeds = range(REEVAL_SEED_OFFSET, REEVAL_SEED_OFFSET + budget.reeval_seeds)
        candidates = []
        for t in chosen:
            overrides = t.user_attrs.get("overrides") or {}
            configs = [
                budget.train_config(seed, lr=overrides.get("lr"), device=self.device)
                for seed in seeds
            ]
            label = t.user_attrs.get("baseline") or f"trial-{t.number}"
            spec = ObjectiveSpec.from_dict(t.user_attrs["objective"])
            candidates.append(
                _Candidate(spec, t.user_attrs.get("key"), configs, self.out_dir / "reeval" / label)
            )
        results: dict[_Candidate, CandidateResult] = {}
        for group in self._groups(candidates):
            results.update(zip(group, self._train_group(group, reuse_existing=True), strict=True))
        rows = []
        for t, candidate in zip(chosen, candidates, strict=True):
            result = results[candidate]
            label = candidate.folder.name
            rewards = result.finals("reward")
            low, high = bootstrap_ci(rewards)
            rows.append(
                {
                    "label": label,
                    "trial": t.number,
                    "baseline": bool(t.user_attrs.get("baseline")),
                    "key": t.user_attrs.get("key"),
                    "objective": t.user_attrs["objective"],
                    "search_reward": t.user_attrs.get("reward"),
                    "reward": _finite_or_none(result.reward),
                    "reward_ci95": [_finite_or_none(low), _finite_or_none(high)],
                    "accuracy": _finite_or_none(result.accuracy),
                    "kl_to_ref": _finite_or_none(result.kl_to_ref),
                    "rewards": rewards,
                    "status": "ok" if result.ok else result.failure,
                }
            )
        rows.sort(key=lambda r: r["reward"] if r["reward"] is not None else -math.inf, reverse=True)
        path = self.out_dir / "discoveries.json"
        tmp = path.with_suffix(".json.tmp")  # atomic: a kill never leaves half a file
        tmp.write_text(json.dumps({"seeds": list(seeds), "candidates": rows}, indent=2) + "\n")
        os.replace(tmp, path)
        return rows


def _waiting(study: optuna.Study) -> bool:
    """Whether the study holds enqueued trials no worker has started."""
    return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def _outcome(train: Callable[[], Values]) -> tuple[Values | None, TrialState]:
    """Run ``train`` and map its result to what a trial is told, as `study.optimize` does:
    values and COMPLETE, PRUNED on `optuna.TrialPruned`, FAIL on `CandidateFailed`."""
    try:
        return train(), TrialState.COMPLETE
    except optuna.TrialPruned:
        return None, TrialState.PRUNED
    except CandidateFailed:
        return None, TrialState.FAIL


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _worker_process(campaign: Campaign, budget: int, threads: int) -> None:
    """One worker process of a campaign with ``jobs > 1``: trials until the budget is done.

    SIGTERM stops it as Ctrl-C does (whatever SIGINT's inherited disposition). When the
    campaign's process dies (even by SIGKILL) it sends itself one, and exits anyway
    :data:`STOP_SECONDS` later (Python drops an interrupt that lands in a finalizer), so a
    killed campaign leaves no orphaned workers training on.
    """
    import torch

    torch.set_num_threads(threads)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    parent = multiprocessing.parent_process()
    if parent is not None:

        def stop_when_orphaned() -> None:
            wait([parent.sentinel])
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(STOP_SECONDS)
            os._exit(128 + signal.SIGTERM)  # its RUNNING trial is retried once stale

        threading.Thread(target=stop_when_orphaned, daemon=True).start()
    try:
        campaign.optimize(campaign.open(create=False), budget, wait_for_running=True)
    except KeyboardInterrupt:  # Optuna has recorded the trial as FAIL: exit without a traceback
        sys.exit(128 + signal.SIGINT)


def _raise_keyboard_interrupt(signum: int, _frame: Any) -> None:
    """A signal handler that stops the process as Ctrl-C does."""
    raise KeyboardInterrupt(f"signal {signum}")


def _stop(processes: list[multiprocessing.process.BaseProcess]) -> None:
    """Stop worker processes: those that did not get the terminal's Ctrl-C themselves get a
    SIGTERM (which they handle as Ctrl-C); any still running after :data:`STOP_SECONDS` is
    killed."""
    started = [p for p in processes if p.pid is not None]
    _join_all(started, 2.0)  # a Ctrl-C typed in the terminal reached every worker too
    for process in started:
        if process.is_alive():
            process.terminate()
    _join_all(started, STOP_SECONDS)
    for process in started:
        if process.is_alive():
            process.kill()
            process.join()


def _join_all(processes: list[multiprocessing.process.BaseProcess], seconds: float) -> None:
    """Wait until every process has exited, or ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    while (alive := [p.sentinel for p in processes if p.is_alive()]) and (
        left := deadline - time.monotonic()
    ) > 0:
        wait(alive, timeout=left)


def _reward_or_minus_inf(trial: FrozenTrial) -> float:
    reward = trial.user_attrs.get("reward")
    return -math.inf if reward is None else reward


def _finite_or_none(x: float) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def load_campaign_from_storage(
    url: str, study_name: str, out_dir: Path | None, **kw: Any
) -> Campaign:
    """The campaign of an existing study (for ``grape worker``): its space is stored with it."""
    storage = make_storage(url, kw.get("heartbeat_interval", 10), kw.get("grace_period"))
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise CampaignError(f"no study '{study_name}' in {url}; studies there: {names}") from None
    text = study.user_attrs.get("space")
    if text is None:
        raise CampaignError(f"study '{study_name}' was not created by `grape evolve`")
    space = parse_space(json.loads(text), source=f"study '{study_name}'")
    folder = out_dir or Path(study.user_attrs.get("out_dir", "."))
    return Campaign(space, folder, storage_url=url, **kw)


def summarize(study: optuna.Study) -> dict[str, Any]:
    """Counts and the best trial, for progress displays."""
    trials = study.get_trials(deepcopy=False)
    states = [t.state for t in trials]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = max(complete, key=_reward_or_minus_inf, default=None)
    return {
        "complete": states.count(TrialState.COMPLETE),
        "pruned": states.count(TrialState.PRUNED),
        "failed": states.count(TrialState.FAIL),
        "running": states.count(TrialState.RUNNING),
        "best_reward": None if best is None else best.user_attrs.get("reward"),
        "best_label": None
        if best is None
        else best.user_attrs.get("baseline") or f"trial-{best.number}",
        "mean_reward": statistics.fmean(
            [t.user_attrs["reward"] for t in complete if t.user_attrs.get("reward") is not None]
        )
        if complete
        else None,
    }
