"""Experiment figures: learning curves of a task nothing learns are drawn flat."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from grape_evo.experiment import report
from grape_evo.experiment.grid import RunPlan, RunResult
from grape_evo.objective import presets
from grape_evo.training import TrainConfig


def result(tmp_path: Path, seed: int, curve: list[float]) -> RunResult:
    """A finished run of GRPO on sort whose eval reward is ``curve[0]`` at the start, then
    ``curve[k]`` at step 10k."""
    plan = RunPlan("grpo", "sort", presets.get("grpo"), TrainConfig(seed=seed))
    folder = tmp_path / f"seed{seed}"
    folder.mkdir()
    lines = [json.dumps({"step": 10 * k, "eval_reward": v}) for k, v in enumerate(curve) if k]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    summary = {"status": "ok", "initial_eval": {"reward": curve[0]}}
    return RunResult(plan, summary, folder)


@pytest.fixture
def saved(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The figures `save_learning_curves` would write, in order."""
    figures: list[Any] = []
    monkeypatch.setattr(report.figures, "save", lambda fig, path: figures.append(fig))
    return figures


@pytest.mark.parametrize(
    ("curve", "expected"),
    [
        # moves by 0.006: widened to 0.1 around its middle, kept inside [0, 1] (so from 0)
        ([0.027, 0.025, 0.031], (0.0, 0.1)),
        ([0.97, 0.99, 0.98], (0.9, 1.0)),
        # moves by 0.06: widened around its middle 0.5
        ([0.47, 0.5, 0.53], (0.45, 0.55)),
    ],
)
def test_flat_curves_are_not_zoomed(
    tmp_path: Path, saved: list[Any], curve: list[float], expected: tuple
) -> None:
    runs = [result(tmp_path, 0, curve), result(tmp_path, 1, curve)]
    report.save_learning_curves(runs, "sort", tmp_path / "c.png", ["grpo"])
    low, high = saved[0].axes[0].get_ylim()
    assert (low, high) == pytest.approx(expected)


def test_curves_that_move_keep_their_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved: list[Any] = []
    monkeypatch.setattr(report.figures, "save", lambda fig, path: saved.append(fig))
    runs = [result(tmp_path, 0, [0.2, 0.4, 0.6])]
    report.save_learning_curves(runs, "sort", tmp_path / "c.png", ["grpo"])
    low, high = saved[0].axes[0].get_ylim()
    assert low <= 0.2 and high >= 0.6 and high - low < 0.6  # matplotlib's own margins
