"""An evolution campaign: one Optuna study per search space, resumable and shareable.

* Storage (`storage`): ``sqlite:///RUN/study.db`` by default, any SQLAlchemy URL (PostgreSQL
  for many hosts) or a journal file (``journal:PATH``). Workers send heartbeats; a trial whose
  worker died is failed after the grace period and retried by the next worker that starts a
  trial. See docs/reliability.md.
* Trials (`trials`, `ledger`): a sampled trial that finds the budget already claimed is failed
  at once as ``surplus`` (never trained, not counted); a candidate whose key (canonical spec +
  training overrides) was already evaluated reuses that result; each trial folder holds
  ``artifacts.json``, a sha256 of every run file, stored with the trial too.
* Baselines (presets) are enqueued first, with the same budget and seeds; where a baseline is a
  point of the genome its genes are set, so the evolution sampler can breed from it.
* Scheduling (`scheduler`): rounds of up to ``population`` trials trained in lockstep by the
  training engine; ``jobs`` worker processes on one machine, each with
  ``max(1, cores // jobs)`` torch threads; Ctrl-C or the death of the campaign stops them all.
* The learning rate (`tuning`): outside the genome, tuned once on the reference before the
  search; every run of the campaign uses it.
* Fitness (`rungs`, `grape_evo.search.fitness`): the paired improvement over the reference on
  the same seeds, rung by rung of successive halving over seeds.
* Re-evaluation (`reevaluation`): after the budget, the top-k candidates, the baselines and the
  reference are re-run on fresh seeds; paired effects with Bonferroni-corrected t-intervals
  and verdicts are the discoveries.
* Tracking (``report_to``, `grape_evo.training.tracking`): every run trained is also logged to
  TensorBoard, wandb, MLflow or Trackio under its run folder. A setting of this process only
  (its worker processes inherit it), stored nowhere: a campaign resumes, or a worker joins,
  with any ``report_to``.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from grape_evo.objective import presets
from grape_evo.search.campaign.ledger import budget_claimed, budget_used, summarize
from grape_evo.search.campaign.reevaluation import DISCOVERIES_FILE, REEVAL_SEED_OFFSET
from grape_evo.search.campaign.reevaluation import reevaluate as _reevaluate
from grape_evo.search.campaign.scheduler import OnTrial, run_to_budget, usable_cores
from grape_evo.search.campaign.storage import (
    STUDY_FILE,
    CampaignError,
    default_storage_url,
    fail_stale_trials,
    load_run_study,
    make_storage,
    record_storage,
)
from grape_evo.search.campaign.tuning import tune_learning_rate
from grape_evo.search.evaluator import CandidateResult, CandidateRun, run_candidates
from grape_evo.search.records import TrialRecord
from grape_evo.search.samplers import make_pruner, make_sampler
from grape_evo.search.space import SearchSpace, parse_space
from grape_evo.training.config import TrainConfig
from grape_evo.training.tracking import RunTracking, check_report_to

optuna.logging.set_verbosity(optuna.logging.WARNING)

__all__ = [
    "DISCOVERIES_FILE",
    "REEVAL_SEED_OFFSET",
    "STUDY_FILE",
    "Campaign",
    "CampaignError",
    "budget_claimed",
    "budget_used",
    "default_storage_url",
    "fail_stale_trials",
    "load_campaign_from_storage",
    "load_run_study",
    "make_storage",
    "summarize",
    "usable_cores",
]


@dataclass
class Campaign:
    """A search space bound to a run folder and a storage; ``jobs`` worker processes,
    lockstep batches of up to ``population`` trials, and the ``--report-to`` tracker of every
    run trained (checked here: an unknown name or a missing package raises `TrackingError`)."""

    space: SearchSpace
    out_dir: Path
    storage_url: str | None = None
    device: str = "cpu"
    heartbeat_interval: int = 10
    grace_period: int | None = None
    jobs: int = 1
    population: int = 1
    report_to: str = "none"

    def __post_init__(self) -> None:
        for name in ("jobs", "population"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CampaignError(f"{name} must be an integer >= 1, got {value!r}")
        check_report_to(self.report_to)
        self.out_dir = Path(self.out_dir)
        self.url = self.storage_url or default_storage_url(self.out_dir)
        self.budget: int | None = None  # set by optimize()
        self.lr = self.space.budget.lr  # the tuned rate once optimize() has tuned it

    def config(self, seed: int, lr: float | None = None) -> TrainConfig:
        """The TrainConfig of a run with ``seed``: the budget's, at the campaign's (tuned)
        learning rate unless ``lr`` (a genome's rate) is given."""
        return self.space.budget.train_config(
            seed, lr=self.lr if lr is None else lr, device=self.device
        )

    def train_runs(self, runs: Sequence[CandidateRun]) -> list[CandidateResult]:
        """`run_candidates` of ``runs`` on the space's tasks: finished run folders read back,
        every run trained logged to ``--report-to``; the runs of candidates no pruner judges
        (the lr tuning, the reference, the baselines, the re-evaluation) cut, candidate by
        candidate, into engines of at most ``population`` members, so a candidate's seeds
        train together; a round's prunable trials train one engine per (task, seed). Every
        part of a campaign trains through here."""
        return run_candidates(
            runs,
            self.space.tasks,
            self.space.policy,
            reuse_existing=True,
            tracking=self.tracking,
            population=self.population,
        )

    @property
    def tracking(self) -> RunTracking:
        """Where its runs are tracked: each run folder under ``out_dir`` is a tracker run
        named ``<study>/<folder under out_dir>``."""
        return RunTracking(self.report_to, self.out_dir, self.space.name)

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
        """Load the study (``create``: or create it, store the space, enqueue baselines); name
        its metrics (`SearchSettings.metric_names`) for optuna-dashboard."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        study = optuna.create_study(
            study_name=self.space.name,
            storage=self.storage(),
            directions=self.directions,
            sampler=make_sampler(self.space),
            pruner=make_pruner(self.space),
            load_if_exists=True,
        )
        names = self.space.search.metric_names
        if study.metric_names != names:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(names)
        # A process that joins or resumes must not replay the random genomes of the first
        # process: its sampler's seed moves on with the study (and with the process id). So
        # must workers that join at the same time, before any trial exists.
        existing = len(study.get_trials(deepcopy=False))
        if existing or not create:
            seed = self.space.search.seed + 7919 * existing + (0 if create else os.getpid())
            study.sampler = make_sampler(self.space, seed % (2**31 - 1))
        if create:
            record_storage(self.out_dir, self.url, self.space.name)
        if create and not study.user_attrs.get("baselines_enqueued"):
            study.set_user_attr("space", json.dumps(self.space.to_dict()))
            study.set_user_attr("out_dir", str(self.out_dir.resolve()))
            # A process killed while enqueueing left some baselines: enqueue only the others.
            have = {TrialRecord.of(t).baseline for t in study.get_trials(deepcopy=False)}
            for name in self.space.baselines:
                if name in have:
                    continue
                genes = self.space.project(presets.get(name))
                complete = set(genes) == {a.path for a in self.space.active_axes(genes)}
                study.enqueue_trial(
                    genes if complete else {},
                    user_attrs={"baseline": name, "genome_complete": complete},
                    skip_if_exists=False,
                )
            study.set_user_attr("baselines_enqueued", True)
        return study

    def optimize(
        self,
        study: optuna.Study,
        budget: int,
        on_trial: OnTrial | None = None,
        wait_for_running: bool = False,
    ) -> None:
        """Run trials until the study has ``budget`` finished trials.

        Trials left RUNNING by a dead worker are failed once their heartbeat is stale and
        retried (a retry is a new trial; the failed one no longer counts toward the budget).
        With ``wait_for_running`` this returns only when no trial is RUNNING any more, so a
        campaign re-evaluates only after every trial, retries included, has finished. With
        ``jobs > 1`` the trials run in ``jobs`` worker processes (``on_trial`` is called here,
        within about a second of each finished trial); this process then runs whatever the
        workers left, e.g. the retry of a trial whose worker was killed.
        """
        tune_learning_rate(self, study)
        run_to_budget(self, study, budget, on_trial, wait_for_running)

    def reevaluate(self, study: optuna.Study) -> list[dict[str, Any]]:
        """Re-run the top-k candidates and every baseline on fresh seeds; rank them (see
        `grape_evo.search.campaign.reevaluation`)."""
        tune_learning_rate(self, study)  # reads the rate the search used
        return _reevaluate(self, study)


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
