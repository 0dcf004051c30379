"""Evaluate one candidate objective: train it on every task of a space for every seed.

The value of a candidate is the mean final held-out reward over (task, seed); its KL is the
mean final KL to the reference. Per-run summaries and curves are kept so the search layer can
store them with the trial. Intermediate values (held-out reward at each evaluation) are
reported through ``report(global_step, value)``, where the global step orders (task, seed,
step) the same way for every candidate, so a pruner compares like with like.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grape_evo.objective import ObjectiveSpec
from grape_evo.training import read_metrics, train

Reporter = Callable[[int, float], None]


@dataclass
class CandidateResult:
    """What training one candidate produced (all runs, in (task, seed) order)."""

    runs: list[dict[str, Any]] = field(default_factory=list)

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
    steps = max(c.steps for c in train_configs)
    for t_index, task_ref in enumerate(tasks):
        task = task_ref.build()
        for s_index, config in enumerate(train_configs):
            offset = (t_index * len(train_configs) + s_index) * steps
            curve: list[tuple[int, float]] = []

            def on_step(
                step: int,
                record: dict[str, Any],
                offset: int = offset,
                curve: list[tuple[int, float]] = curve,
            ) -> None:
                if record.get("eval_reward") is not None:
                    curve.append((step, record["eval_reward"]))
                    if report is not None:
                        report(offset + step, record["eval_reward"])

            run_dir = out_dir / _task_label(task_ref) / f"seed{config.seed}"
            summary = _existing(run_dir, spec, config.seed) if reuse_existing else None
            if summary is not None:
                curve = _curve(run_dir)
            else:
                summary = train(
                    spec,
                    task,
                    config,
                    policy_config,
                    out_dir=run_dir,
                    progress=False,
                    step_callback=on_step,
                )
            summary["task"] = _task_label(task_ref)
            summary["curve"] = curve
            summary["out_dir"] = str(run_dir)
            result.runs.append(summary)
            if summary["status"] != "ok":
                return result
    return result


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
