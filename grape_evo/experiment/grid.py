"""A resumable grid of training runs: plan them, run the missing ones in parallel, read them back.

An experiment is a list of :class:`RunPlan` (objective x task x seed x learning rate x policy).
Each plan has its own folder under the experiment's root, named after its label, task, seed
and a short hash of everything that decides its result; a folder whose ``summary.json`` records
a finished run (``ok``, ``diverged``, or a failure that was not an interruption) is not run
again, so an interrupted experiment resumes where it stopped, and a changed setting gives a new
folder instead of silently reusing an old result.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from grape_evo.objective import ObjectiveSpec
from grape_evo.policy import PolicyConfig, resolve_device
from grape_evo.tasks import Task, build_task, get_task
from grape_evo.training import Member, TrainConfig, train_members, warm_start_policy
from grape_evo.training.records import read_metrics

FINISHED_STATUSES = ("ok", "diverged")


@dataclass(frozen=True)
class RunPlan:
    """One training run of an experiment.

    Attributes:
        label: the objective's name in tables (a preset name or an ablation variant).
        task: a registered task name, or the label of the variant ``task_ref`` builds.
        spec: the objective.
        train: budget, seed, learning rate and warm start.
        policy: the policy architecture.
        stage: a sub-folder grouping runs of one purpose (``tune``, ``eval``, ...).
        task_ref: ``()``, or the sorted items of ``{name: REGISTERED, **arguments}`` (a task
            variant; see :class:`~grape_evo.experiment.config.TaskEntry`).
    """

    label: str
    task: str
    spec: ObjectiveSpec
    train: TrainConfig
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    stage: str = "eval"
    task_ref: tuple[tuple[str, Any], ...] = ()

    def build_task(self) -> Task:
        """The task this plan trains on."""
        return build_task(dict(self.task_ref)) if self.task_ref else get_task(self.task)

    @property
    def seed(self) -> int:
        return self.train.seed

    def key(self) -> str:
        """12 hex digits of sha256 over the objective, task, train and policy configs."""
        blob = {
            "objective": self.spec.key(),
            "task": self.task,
            "train": self.train.to_dict(),
            "policy": self.policy.to_dict(),
        }
        if self.task_ref:  # only variants carry it, so earlier runs keep their folders
            blob["task_ref"] = dict(self.task_ref)
        text = json.dumps(blob, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def folder(self, root: Path) -> Path:
        name = f"{self.label}-lr{self.train.lr:g}-s{self.seed}-{self.key()}"
        return Path(root) / self.stage / self.task / name

    def batch_key(self) -> str:
        """What runs trained together in one lockstep batch must share: everything but the
        objective and the learning rate."""
        blob = {
            "task": self.task,
            "train": {**self.train.to_dict(), "lr": None},
            "policy": self.policy.to_dict(),
        }
        return json.dumps(blob, sort_keys=True)

    def warm_start_key(self) -> tuple[str, str, int, int, float, int]:
        """What decides this run's warm start (runs that share it share the cache)."""
        t = self.train
        return (
            self.task,
            self.policy.preset,
            t.seed,
            t.warm_start_steps,
            t.warm_start_lr,
            t.batch_size,
        )


def finished_summary(folder: Path) -> dict[str, Any] | None:
    """The run's summary if it finished (a result worth keeping), else None."""
    path = folder / "summary.json"
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    status = summary.get("status")
    if status in FINISHED_STATUSES:
        return summary
    if status == "failed" and summary.get("reason") != "interrupted":
        return summary
    return None


@dataclass(frozen=True)
class RunResult:
    """A plan with its summary and its eval curve [(step, eval metrics)]."""

    plan: RunPlan
    summary: dict[str, Any]
    folder: Path

    @property
    def status(self) -> str:
        return str(self.summary.get("status"))

    def final(self, metric: str) -> float:
        """``final_eval[metric]`` (reward, accuracy, kl_to_ref); NaN when the run did not end ok."""
        final = self.summary.get("final_eval") or {}
        value = final.get(metric) if self.status == "ok" else None
        return float("nan") if value is None else float(value)

    def initial(self, metric: str) -> float:
        value = (self.summary.get("initial_eval") or {}).get(metric)
        return float("nan") if value is None else float(value)

    def curve(self, metric: str = "eval_reward") -> list[tuple[int, float]]:
        """(step, value) at every evaluation, starting with the initial one at step 0."""
        points = [(0, self.initial(metric.removeprefix("eval_")))]
        records = read_metrics(self.folder / "metrics.jsonl")
        points += [(int(r["step"]), float(r[metric])) for r in records if r.get(metric) is not None]
        return points


def _build_warm_start(plan: RunPlan, cache_dir: Path | None, threads: int) -> float:
    torch.set_num_threads(threads)
    start = time.perf_counter()
    warm_start_policy(
        plan.build_task(), plan.policy, plan.train, resolve_device(plan.train.device), cache_dir
    )
    return time.perf_counter() - start


def _run_batch(plans: list[RunPlan], root: Path, cache_dir: Path | None, threads: int) -> float:
    """Train ``plans`` (which share `RunPlan.batch_key`) in one lockstep batch; its seconds."""
    torch.set_num_threads(threads)
    first = plans[0]
    summaries = train_members(
        [Member(p.spec, p.train.lr) for p in plans],
        first.build_task(),
        first.train,
        first.policy,
        out_dirs=[p.folder(root) for p in plans],
        progress=False,
        cache_dir=cache_dir,
    )
    return summaries[0].wall_seconds


@dataclass
class Compute:
    """Seconds of run time: the runs' own ``wall_seconds`` and this invocation's wall clock."""

    run_seconds: float = 0.0
    warm_start_seconds: float = 0.0
    wall_seconds: float = 0.0
    runs_done_now: int = 0
    runs_reused: int = 0
    jobs: int = 1

    def describe(self) -> str:
        return (
            f"compute: {self.run_seconds / 60:.1f} run-minutes over all runs "
            f"({self.runs_done_now} run now, {self.runs_reused} reused from earlier), "
            f"{self.warm_start_seconds / 60:.1f} min of warm starts built now; "
            f"this invocation took {self.wall_seconds / 60:.1f} min wall clock with "
            f"{self.jobs} worker process(es)"
        )


def execute(
    plans: Sequence[RunPlan],
    root: Path,
    jobs: int = 1,
    threads_per_job: int = 1,
    cache_dir: Path | None = None,
    progress: bool = True,
    description: str = "runs",
    population: int = 1,
) -> tuple[list[RunResult], Compute]:
    """Run every plan that has no finished run folder yet; return all results in plan order.

    Warm starts are built first (once per distinct warm start, in parallel), then the runs:
    plans that share a `RunPlan.batch_key` (the same task, seed, budget and policy) train
    together, up to ``population`` at a time in one lockstep batch of the training engine (each
    with its own run folder, the result it would get alone), ``jobs`` batches at a time in
    spawned processes with ``threads_per_job`` torch threads each. A run that ends without a
    finished summary (e.g. killed) is run again next time.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    root = Path(root)
    start = time.perf_counter()
    compute = Compute(jobs=jobs)
    todo = [p for p in plans if finished_summary(p.folder(root)) is None]
    compute.runs_reused = len(plans) - len(todo)
    warm = list({p.warm_start_key(): p for p in todo}.values())
    with _bar(progress) as bar:
        if warm:
            task_id = bar.add_task(f"{description}: warm starts", total=len(warm))
            seconds = _pool_map(
                _build_warm_start, warm, (cache_dir, threads_per_job), jobs, bar, task_id
            )
            compute.warm_start_seconds = sum(seconds)
        groups: dict[str, list[RunPlan]] = {}
        for plan in todo:
            groups.setdefault(plan.batch_key(), []).append(plan)
        batches = [
            g[i : i + population] for g in groups.values() for i in range(0, len(g), population)
        ]
        task_id = bar.add_task(description, total=len(batches))
        _pool_map(_run_batch, batches, (root, cache_dir, threads_per_job), jobs, bar, task_id)
    compute.runs_done_now = len(todo)
    results = []
    for plan in plans:
        summary = finished_summary(plan.folder(root))
        if summary is None:
            raise RuntimeError(f"run {plan.folder(root)} did not finish; run the experiment again")
        results.append(RunResult(plan, summary, plan.folder(root)))
        # A batch's wall time is every member's: count each member's share of it.
        share = float(summary.get("wall_seconds") or 0.0) / int(summary.get("trained_with") or 1)
        compute.run_seconds += share
    compute.wall_seconds = time.perf_counter() - start
    return results, compute


def _pool_map(
    fn: Callable[..., float],
    items: Sequence[Any],
    extra: tuple[Any, ...],
    jobs: int,
    bar: Progress,
    task_id: Any,
) -> list[float]:
    """``fn(item, *extra)`` for every item, ``jobs`` spawned processes at a time (inline for 1).

    On any exit other than success (an error, Ctrl-C, or SIGTERM, turned into ``SystemExit``)
    the worker processes are terminated, so a killed experiment leaves no orphan runs.
    """
    if jobs == 1:
        out = []
        for item in items:
            out.append(fn(item, *extra))
            bar.advance(task_id)
        return out
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        with multiprocessing.get_context("spawn").Pool(jobs) as pool:  # exit: terminate()
            out = []
            for value in pool.imap_unordered(_apply, [(fn, item, extra) for item in items]):
                out.append(value)
                bar.advance(task_id)
            return out
    finally:
        signal.signal(signal.SIGTERM, previous)


def _apply(call: tuple[Callable[..., float], Any, tuple[Any, ...]]) -> float:
    fn, item, extra = call
    return fn(item, *extra)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )
