"""Evaluate candidate objectives: train each on every task of a space for every seed.

`run_candidates` trains any number of candidates in lockstep batches of the training engine:
one per (task, seed) holding every candidate still going (one candidate is the batch of one),
or, with a population size, the seeds of the candidates no pruner judges seed by seed packed
together. A candidate's value is the mean final held-out reward over (task, seed); its KL the
mean final KL to the reference. Intermediate values (held-out reward at each evaluation) are
reported through ``report(global_step, value)``, where the global step orders (task, seed,
step) the same way for every candidate, so a pruner compares like with like; a reporter that
returns a reason stops its candidate (pruning is a value, not an exception). With ``tracking``
(``--report-to``), every run trained is also logged to its own tracker run under its run
folder, the tracker called before the reporter and never stopping a run.
:func:`write_artifacts` records a sha256 of every run file in ``artifacts.json`` so a report
can tell a file that changed after the trial from the one the trial produced.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from grape_evo.objective import ObjectiveSpec
from grape_evo.policy import PolicyConfig
from grape_evo.search.records import RunResult
from grape_evo.training import Member, RunSummary, StepRecord, TrainConfig, read_metrics
from grape_evo.training import train_members as _train_members
from grape_evo.training.tracking import RunTracking, open_trackers, run_settings, with_tracker

Reporter = Callable[[int, float], str | None]
"""``report(global_step, value)``: a returned reason stops the candidate (e.g. pruned)."""


@dataclass(frozen=True, eq=False)
class CandidateRun:
    """A candidate to train: its spec, its TrainConfigs (one per seed; candidates trained
    together differ in ``lr`` only), its folder and its reporter. ``seeds`` (indices into
    ``configs``) limits a call to some of its seeds, e.g. one rung of successive halving;
    global steps stay those of the full list. ``may_stop``: whether its reporter may return
    a stop reason (a pruner); False for one that only records its values (a baseline)."""

    spec: ObjectiveSpec
    configs: Sequence[TrainConfig]
    folder: Path
    report: Reporter | None = None
    seeds: range | None = None
    may_stop: bool = True

    def seed_indices(self) -> range:
        return range(len(self.configs)) if self.seeds is None else self.seeds

    @property
    def seed_by_seed(self) -> bool:
        """Whether its seeds must train one after another: a pruner compares intermediate
        values seed by seed, so a reporter that may stop it sees seed s before seed s + 1."""
        return self.report is not None and self.may_stop


@dataclass
class CandidateResult:
    """What training one candidate produced (its runs in (task, seed) order), and the reason
    its reporter stopped it, if it did."""

    runs: list[RunResult] = field(default_factory=list)
    stopped: str | None = None

    @property
    def ok(self) -> bool:
        return bool(self.runs) and all(r.ok for r in self.runs)

    @property
    def going(self) -> bool:
        """Still to be trained on further runs: not stopped and no run failed."""
        return self.stopped is None and all(r.ok for r in self.runs)

    @property
    def failure(self) -> str:
        """The first non-ok run's status and reason ('' when every run is ok)."""
        for r in self.runs:
            if not r.ok:
                return f"{r.task} seed {r.seed}: {r.status}: {r.reason}"
        return ""

    @property
    def trained_with(self) -> int:
        """The most members any of its runs was trained with."""
        return max((r.trained_with for r in self.runs), default=1)

    def order_runs(self, slugs: Sequence[str]) -> None:
        """Sort its runs in (task, seed) order, tasks in the order of ``slugs``."""
        self.runs.sort(key=lambda run: (slugs.index(run.task), run.seed))

    def finals(self, key: str) -> list[float]:
        return [r.final_eval[key] for r in self.runs if r.final_eval]

    def _mean(self, key: str) -> float:
        values = self.finals(key)
        return statistics.fmean(values) if values else math.nan

    @property
    def reward(self) -> float:
        return self._mean("reward")

    @property
    def accuracy(self) -> float:
        return self._mean("accuracy")

    @property
    def kl_to_ref(self) -> float:
        return self._mean("kl_to_ref")


def run_candidates(
    candidates: Sequence[CandidateRun],
    tasks: Sequence[Any],
    policy_config: PolicyConfig,
    reuse_existing: bool = False,
    tracking: RunTracking | None = None,
    population: int | None = None,
) -> list[CandidateResult]:
    """Train every candidate on each task (a ``TaskRef``) with each of its TrainConfigs.

    Without ``population``, one engine per (task, seed) trains every candidate still going.
    With it, a task's (candidate, seed) runs of the candidates that need not train
    `CandidateRun.seed_by_seed`, candidate by candidate, are cut into engines of at most
    ``population`` members, so one candidate's seeds train together; then the others train
    in one engine per (task, seed), as without it.

    A candidate stops at its first run that does not end ``ok`` (a diverged candidate is not
    worth more seeds; runs already in the same engine finish) or when its reporter returns a
    reason. With ``reuse_existing``, a run folder whose summary is ``ok`` for the same
    objective key and seed is read back instead of trained again. With ``tracking``, each run
    trained (not one read back) is logged to a tracker of its own; a tracker that cannot start
    raises `TrackingError` before the batch trains. Each result's runs are in (task, seed)
    order.
    """
    results = [CandidateResult() for _ in candidates]
    seeds = len(candidates[0].configs) if candidates else 0
    steps = max((c.steps for cand in candidates for c in cand.configs), default=0)
    by_seed = {i for i, c in enumerate(candidates) if population is None or c.seed_by_seed}
    for t_index, task_ref in enumerate(tasks):
        task = task_ref.build()
        slots = [
            Slot(i, s_index, (t_index * seeds + s_index) * steps)
            for s_index in range(seeds)
            for i, candidate in enumerate(candidates)
            if s_index in candidate.seed_indices()
        ]
        if reuse_existing:  # before the engines are cut, so that they come out full
            slots = [s for s in slots if not _read_back(s, task_ref, candidates, results)]
        for engine in _engines(slots, population, by_seed):
            _train_slots(engine, task_ref, task, candidates, results, policy_config, tracking)
    slugs = [task_ref.slug for task_ref in tasks]
    for result in results:
        result.order_runs(slugs)
    return results


@dataclass(frozen=True)
class Slot:
    """One run of a candidate: its index, its seed's index and its first global step."""

    candidate: int
    seed_index: int
    offset: int


def _engines(slots: list[Slot], population: int | None, by_seed: set[int]) -> list[list[Slot]]:
    """A task's runs (in seed order) cut into engines: the runs of the other candidates,
    candidate by candidate, into engines of at most ``population``; then those of the
    candidates in ``by_seed``, one engine per seed."""
    packed = sorted((s for s in slots if s.candidate not in by_seed), key=lambda s: s.candidate)
    size = population or 1  # without a population every candidate is in by_seed
    engines = [packed[i : i + size] for i in range(0, len(packed), size)]
    seeded = [s for s in slots if s.candidate in by_seed]
    for seed in sorted({s.seed_index for s in seeded}):
        engines.append([s for s in seeded if s.seed_index == seed])
    return engines


def _run_of(
    slot: Slot, task_ref: Any, candidates: Sequence[CandidateRun]
) -> tuple[TrainConfig, Path]:
    """A slot's TrainConfig on the task and its run folder."""
    candidate = candidates[slot.candidate]
    config = task_ref.train_config(candidate.configs[slot.seed_index])
    return config, candidate.folder / task_ref.slug / f"seed{config.seed}"


def _read_back(
    slot: Slot, task_ref: Any, candidates: Sequence[CandidateRun], results: list[CandidateResult]
) -> bool:
    """Append the slot's run to its candidate's result when its folder holds it, finished
    ``ok`` for the same objective key and seed; whether it did."""
    config, run_dir = _run_of(slot, task_ref, candidates)
    done = _existing(run_dir, candidates[slot.candidate].spec, config.seed)
    if done is not None:
        run = RunResult.of(done, task_ref.slug, _curve(run_dir), str(run_dir))
        results[slot.candidate].runs.append(run)
    return done is not None


def _train_slots(
    slots: Sequence[Slot],
    task_ref: Any,
    task: Any,
    candidates: Sequence[CandidateRun],
    results: list[CandidateResult],
    policy_config: PolicyConfig,
    tracking: RunTracking | None,
) -> None:
    """Train the runs of ``slots`` whose candidates are still going in one engine and append
    each to its candidate's result."""
    members = [s for s in slots if results[s.candidate].going]
    if not members:
        return
    chosen = [candidates[m.candidate] for m in members]
    runs = [_run_of(m, task_ref, candidates) for m in members]
    configs, folders = [config for config, _ in runs], [folder for _, folder in runs]
    shared = _shared_config(configs)
    curves: list[list[tuple[int, float]]] = [[] for _ in members]
    hooks = [
        _hook(curve, c.report, results[m.candidate], m.offset)
        for m, c, curve in zip(members, chosen, curves, strict=True)
    ]
    settings = [
        (folder, run_settings(c.spec, task, cfg, policy_config))
        for c, cfg, folder in zip(chosen, configs, folders, strict=True)
    ]
    with open_trackers(tracking, settings) as trackers:
        summaries = _train_members(
            [Member(c.spec, cfg.lr, cfg.seed) for c, cfg in zip(chosen, configs, strict=True)],
            task,
            shared,
            policy_config,
            folders,
            progress=False,
            on_steps=[with_tracker(h, t) for h, t in zip(hooks, trackers, strict=True)],
        )
    for m, summary, curve, folder in zip(members, summaries, curves, folders, strict=True):
        results[m.candidate].runs.append(RunResult.of(summary, task_ref.slug, curve, str(folder)))


def _shared_config(configs: Sequence[TrainConfig]) -> TrainConfig:
    """The TrainConfig runs trained together share (each keeps its own ``lr`` and seed)."""
    base = configs[0]
    for config in configs[1:]:
        if replace(config, lr=base.lr, seed=base.seed) != base:
            raise ValueError("runs trained together must differ in lr and seed only")
    return base


def _hook(
    curve: list[tuple[int, float]], report: Reporter | None, result: CandidateResult, offset: int
) -> Callable[[StepRecord], str | None]:
    """A step hook that records each held-out evaluation in ``curve``, reports it at global
    step ``offset + step`` and keeps a returned stop reason in ``result.stopped``."""

    def on_step(record: StepRecord) -> str | None:
        value = record.eval_reward
        if value is None:
            return None
        curve.append((record.step, value))
        reason = None if report is None else report(offset + record.step, value)
        if reason:
            result.stopped = reason
        return reason

    return on_step


def _existing(run_dir: Path, spec: ObjectiveSpec, seed: int) -> RunSummary | None:
    """The run's summary when it finished ``ok`` for the same objective key and seed."""
    try:
        summary = RunSummary.read(run_dir / "summary.json")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    same = summary.objective_key == spec.key() and summary.seed == seed
    return summary if same and summary.ok else None


def _curve(run_dir: Path) -> list[tuple[int, float]]:
    return [
        (r["step"], r["eval_reward"])
        for r in read_metrics(run_dir / "metrics.jsonl")
        if r.get("eval_reward") is not None
    ]


ARTIFACTS_FILE = "artifacts.json"
RUN_FILES = ("summary.json", "metrics.jsonl")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_artifacts(out_dir: Path, result: CandidateResult) -> dict[str, str]:
    """Checksums of every run file of ``result``, keyed by path relative to ``out_dir``.

    Written atomically to ``OUT/artifacts.json`` and returned (the trial stores them too).
    A file a run did not write (a run that failed before its first step) is left out.
    """
    out_dir = Path(out_dir)
    sums: dict[str, str] = {}
    for run in result.runs:
        for name in RUN_FILES:
            path = Path(run.out_dir) / name
            if path.is_file():
                key = (
                    path.relative_to(out_dir).as_posix()
                    if path.is_relative_to(out_dir)
                    else str(path)
                )
                sums[key] = sha256_file(path)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / (ARTIFACTS_FILE + ".tmp")
    tmp.write_text(json.dumps({"sha256": sums}, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out_dir / ARTIFACTS_FILE)
    return sums


def verify_artifacts(out_dir: Path, expected: dict[str, str]) -> list[str]:
    """Problems with the files of one trial folder: missing, or a checksum that differs from
    ``expected`` (the trial's record) or from ``artifacts.json``. Empty when all match."""
    out_dir = Path(out_dir)
    problems: list[str] = []
    try:
        on_disk = json.loads((out_dir / ARTIFACTS_FILE).read_text()).get("sha256", {})
    except FileNotFoundError:
        on_disk = None
        problems.append(f"{ARTIFACTS_FILE} missing")
    except (OSError, ValueError, AttributeError) as err:
        on_disk = None
        problems.append(f"{ARTIFACTS_FILE} corrupt ({type(err).__name__})")
    if on_disk is not None and on_disk != expected:
        problems.append(f"{ARTIFACTS_FILE} differs from the checksums stored with the trial")
    for rel, digest in sorted(expected.items()):
        path = out_dir / rel
        if not path.is_file():
            problems.append(f"{rel}: missing (checksum recorded)")
        elif sha256_file(path) != digest:
            problems.append(f"{rel}: checksum mismatch (changed after the trial)")
    return problems
