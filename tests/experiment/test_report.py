"""Experiment figures: learning curves of a task nothing learns are drawn flat; curves average
the seeds every objective finished."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from grape_evo.experiment import report
from grape_evo.experiment.grid import RunPlan, RunResult
from grape_evo.objective import presets
from grape_evo.training import TrainConfig


def result(tmp_path: Path, seed: int, curve: list[float], label: str = "grpo") -> RunResult:
    """A finished run of ``label`` (a preset) on sort whose eval reward is ``curve[0]`` at the
    start, then ``curve[k]`` at step 10k."""
    plan = RunPlan(label, "sort", presets.get(label), TrainConfig(seed=seed))
    folder = tmp_path / f"{label}-seed{seed}"
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


def test_curves_average_only_the_seeds_every_objective_finished(
    tmp_path: Path, saved: list[Any]
) -> None:
    # PPO lost seed 0 (it has no run there), whose warm start is far higher than seed 1's:
    # GRPO's line must be seed 1 alone, not the mean (0.6, 0.7) over both seeds.
    runs = [
        result(tmp_path, 0, [0.8, 0.9]),
        result(tmp_path, 1, [0.4, 0.5]),
        result(tmp_path, 1, [0.4, 0.3], label="ppo"),
    ]
    report.save_learning_curves(runs, "sort", tmp_path / "c.png", ["grpo", "ppo"])
    ax = saved[0].axes[0]
    lines = {line.get_label(): line.get_ydata() for line in ax.get_lines()}
    grpo = next(v for k, v in lines.items() if k.startswith("grpo"))
    assert list(grpo) == pytest.approx([0.4, 0.5])
    assert "(the 1 of 2 seeds every objective finished)" in ax.get_title()


def test_curves_of_objectives_with_the_same_seeds_keep_the_title(
    tmp_path: Path, saved: list[Any]
) -> None:
    runs = [result(tmp_path, s, [0.2, 0.3 + s / 10]) for s in (0, 1)]
    report.save_learning_curves(runs, "sort", tmp_path / "c.png", ["grpo"], title="T")
    ax = saved[0].axes[0]
    grpo = next(line for line in ax.get_lines() if line.get_label().startswith("grpo"))
    assert list(grpo.get_ydata()) == pytest.approx([0.2, 0.35])
    assert ax.get_title().startswith("T\nmean over 2 seeds")


def test_forest_plot_gives_each_of_six_tasks_its_own_colour() -> None:
    tasks = [f"task{i}" for i in range(6)]
    effects = pd.DataFrame(
        [
            {"task": t, "label": lab, "n": 5, "effect": 0.01, "low": -0.01, "high": 0.03}
            for t in tasks
            for lab in ("a", "b")
        ]
    )
    fig = report.effects_figure(effects, "T", "effect")
    colors = [tuple(c) for c in fig.axes[0].collections[0].get_color()]
    # one colour per task, the same for both rows of a task
    assert len(set(colors)) == 6 and colors[0] == colors[1] and colors[1] != colors[2]
