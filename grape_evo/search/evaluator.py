"""Evaluate one candidate objective: train it on every task of a space for every seed.

The value of a candidate is the mean final held-out reward over (task, seed); its KL is the
mean final KL to the reference. Per-run summaries and curves are kept so the search layer can
store them with the trial; :func:`write_artifacts` records a sha256 of every run file
(``summary.json``, ``metrics.jsonl``) in ``artifacts.json`` so a report can tell a file that
changed after the trial from the one the trial produced. Intermediate values (held-out reward
at each evaluation) are reported through ``report(global_step, value)``, where the global step
orders (task, seed, step) the same way for every candidate, so a pruner compares like with like.

`run_population` trains several candidates at once (`train_population`, one pass per
(task, seed) for all of them) with the same run folders, reports and results as
`run_candidate` gives each.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from grape_evo.objective import ObjectiveSpec
from grape_evo.training import read_metrics, train, train_population

Reporter = Callable[[int, float], None]


@dataclass
class CandidateResult:
    """What training one candidate produced (all runs, in (task, seed) order)."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    stopped_by: Exception | None = None
    """What a ``report`` raised (a pruner's signal) in `run_population`; None otherwise."""

    @property
    def ok(self) -> bool:
        return bool(self.runs) and all(r["status"] == "ok" for r in self.runs)

    @property
    def failure(self) -> str:
        """The first non-ok run's status and reason ('' when every run is ok)."""
        for r in self.runs:
            if r["status"] != "ok":
                return f"{r['task']} seed {r['seed']}: {r['status']}: {r['reason']}"
        return ""

    def finals(self, key: str) -> list[float]:
        return [r["final_eval"][key] for r in self.runs if r.get("final_eval")]

    @property
    def reward(self) -> float:
        values = self.finals("reward")
        return statistics.fmean(values) if values else math.nan

    @property
    def accuracy(self) -> float:
        values = self.finals("accuracy")
        return statistics.fmean(values) if values else math.nan

    @property
    def kl_to_ref(self) -> float:
        values = self.finals("kl_to_ref")
        return statistics.fmean(values) if values else math.nan

    def attrs(self) -> dict[str, Any]:
        """Compact per-run records for storage with a trial (JSON-serialisable)."""
        return {
            "runs": [
                {
                    "task": r["task"],
                    "seed": r["seed"],
                    "status": r["status"],
                    "reason": r["reason"],
                    "final_eval": r["final_eval"],
                    "initial_eval": r["initial_eval"],
                    "curve": r["curve"],
                    "wall_seconds": r["wall_seconds"],
                    "out_dir": r["out_dir"],
                }
                for r in self.runs
            ]
        }


def run_candidate(
    spec: ObjectiveSpec,
    tasks: Sequence[Any],
    train_configs: Sequence[Any],
    policy_config: Any,
    out_dir: Path,
    report: Reporter | None = None,
    reuse_existing: bool = False,
) -> CandidateResult:
    """Train ``spec`` on each task (``TaskRef``) with each TrainConfig (one per seed).

    Stops at the first run that does not end ``ok`` (a diverged candidate is not worth more
    seeds). An exception raised by ``report`` (a pruner's signal) propagates. With
    ``reuse_existing``, a run folder whose summary is ``ok`` for the same objective key and
    seed is read back instead of trained again.
    """
    result = CandidateResult()
    for task_ref, task, index in _runs(tasks, train_configs):
        config = train_configs[index.seed]
        run_dir, summary = _run_folder(out_dir, task_ref, spec, config.seed, reuse_existing)
        if summary is None:
            curve: list[tuple[int, float]] = []
            trained = train(
                spec,
                task,
                config,
                policy_config,
                out_dir=run_dir,
                progress=False,
                step_callback=_on_step(curve, report, index.offset),
            )
            summary = _labelled(trained, task_ref, curve, run_dir)
        result.runs.append(summary)
        if summary["status"] != "ok":
            return result
    return result


def run_population(
    specs: Sequence[ObjectiveSpec],
    tasks: Sequence[Any],
    train_configs: Sequence[Sequence[Any]],
    policy_config: Any,
    out_dirs: Sequence[Path],
    reports: Sequence[Reporter | None],
    reuse_existing: bool = False,
) -> list[CandidateResult]:
    """`run_candidate` for P candidates at once: one `train_population` pass per (task, seed).

    ``train_configs[i]`` are candidate i's TrainConfigs (one per seed; candidates differ in
    ``lr`` only), ``out_dirs[i]`` its folder and ``reports[i]`` its reporter, called with the
    same global steps as in `run_candidate`. A candidate leaves the population at its first run
    that does not end ``ok``; an exception its reporter raises (a pruner's signal) ends its
    runs and is kept in its result's ``stopped_by`` instead of propagating. With
    ``reuse_existing``, a candidate's run folder that `run_candidate` would read back is read
    back, and that candidate sits out the pass.

    Raises:
        PopulationUnsupported: before anything was trained, when these candidates or this
            policy cannot be trained as a population (train them with `run_candidate`).
    """
    results = [CandidateResult() for _ in specs]
    for task_ref, task, index in _runs(tasks, train_configs[0]):
        members: list[int] = []
        run_dirs: list[Path] = []
        for i, result in enumerate(results):
            if result.stopped_by is not None or not _all_ok(result):
                continue
            seed = train_configs[i][index.seed].seed
            run_dir, summary = _run_folder(out_dirs[i], task_ref, specs[i], seed, reuse_existing)
            if summary is None:
                members.append(i)
                run_dirs.append(run_dir)
            else:
                result.runs.append(summary)
        if not members:
            continue
        curves: list[list[tuple[int, float]]] = [[] for _ in members]
        callbacks = [
            _on_step(curve, _keeping(results[i], reports[i]), index.offset)
            for i, curve in zip(members, curves, strict=True)
        ]
        summaries = train_population(
            [specs[i] for i in members],
            task,
            [train_configs[i][index.seed] for i in members],
            policy_config,
            out_dirs=run_dirs,
            progress=False,
            step_callbacks=callbacks,
        )
        for i, summary, curve, run_dir in zip(members, summaries, curves, run_dirs, strict=True):
            results[i].runs.append(_labelled(summary, task_ref, curve, run_dir))
    return results


class _RunIndex(NamedTuple):
    """Which seed (index into the TrainConfigs) a run is, and its first global step."""

    seed: int
    offset: int


def _runs(
    tasks: Sequence[Any], train_configs: Sequence[Any]
) -> Iterator[tuple[Any, Any, _RunIndex]]:
    """(task ref, built task, index) of every run in (task, seed) order; a run's global steps
    start after all earlier runs' (``max(steps)`` each)."""
    steps = max(c.steps for c in train_configs)
    for t_index, task_ref in enumerate(tasks):
        task = task_ref.build()
        for s_index in range(len(train_configs)):
            yield (
                task_ref,
                task,
                _RunIndex(s_index, (t_index * len(train_configs) + s_index) * steps),
            )


def _on_step(
    curve: list[tuple[int, float]], report: Reporter | None, offset: int
) -> Callable[[int, dict[str, Any]], None]:
    """A step callback that records each held-out evaluation in ``curve`` and reports it at
    global step ``offset + step``."""

    def on_step(step: int, record: dict[str, Any]) -> None:
        if record.get("eval_reward") is not None:
            curve.append((step, record["eval_reward"]))
            if report is not None:
                report(offset + step, record["eval_reward"])

    return on_step


def _keeping(result: CandidateResult, report: Reporter | None) -> Reporter | None:
    """``report``, keeping what it raises in ``result.stopped_by`` (and raising it on)."""
    if report is None:
        return None

    def keep(step: int, value: float) -> None:
        try:
            report(step, value)
        except Exception as err:
            result.stopped_by = err
            raise

    return keep


def _run_folder(
    out_dir: Path, task_ref: Any, spec: ObjectiveSpec, seed: int, reuse_existing: bool
) -> tuple[Path, dict[str, Any] | None]:
    """A run's folder, and (with ``reuse_existing``) its labelled summary and curve read back
    when it finished ``ok`` for the same objective and seed; None when it must be trained."""
    run_dir = out_dir / _task_label(task_ref) / f"seed{seed}"
    summary = _existing(run_dir, spec, seed) if reuse_existing else None
    if summary is None:
        return run_dir, None
    return run_dir, _labelled(summary, task_ref, _curve(run_dir), run_dir)


def _all_ok(result: CandidateResult) -> bool:
    return all(r["status"] == "ok" for r in result.runs)


def _labelled(
    summary: dict[str, Any], task_ref: Any, curve: list[tuple[int, float]], run_dir: Path
) -> dict[str, Any]:
    """A run's summary with what the search layer stores: task label, curve and folder."""
    summary["task"] = _task_label(task_ref)
    summary["curve"] = curve
    summary["out_dir"] = str(run_dir)
    return summary


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
        run_dir = Path(run["out_dir"])
        for name in RUN_FILES:
            path = run_dir / name
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


def _existing(run_dir: Path, spec: ObjectiveSpec, seed: int) -> dict[str, Any] | None:
    path = run_dir / "summary.json"
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    same = summary.get("objective_key") == spec.key() and summary.get("seed") == seed
    return summary if same and summary.get("status") == "ok" else None


def _curve(run_dir: Path) -> list[tuple[int, float]]:
    return [
        (r["step"], r["eval_reward"])
        for r in read_metrics(run_dir / "metrics.jsonl")
        if r.get("eval_reward") is not None
    ]


def _task_label(task_ref: Any) -> str:
    if not task_ref.kwargs:
        return task_ref.name
    return task_ref.name + "-" + "-".join(f"{k}{v}" for k, v in sorted(task_ref.kwargs.items()))
