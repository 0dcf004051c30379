"""Writing an experiment's results: the README block, CSV tables and small figures."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from grape_evo.analysis import figures
from grape_evo.analysis.summaries import curve_summary
from grape_evo.experiment.grid import RunResult

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def write_results_block(readme: Path, text: str) -> None:
    """Replace the text between the results markers of ``readme`` (append them if missing)."""
    block = f"{BEGIN}\n{text.rstrip()}\n{END}"
    old = readme.read_text() if readme.is_file() else ""
    if BEGIN in old and END in old:
        new = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: block, old, flags=re.S)
    else:
        new = (old.rstrip() + "\n\n" if old else "") + block + "\n"
    readme.parent.mkdir(parents=True, exist_ok=True)
    readme.write_text(new)


def curves_frame(results: Sequence[RunResult], metric: str = "eval_reward") -> pd.DataFrame:
    """Long frame (label, task, seed, step, value) of every run's eval curve."""
    rows = [
        {"label": r.plan.label, "task": r.plan.task, "seed": r.plan.seed, "step": s, metric: v}
        for r in results
        if r.status == "ok"
        for s, v in r.curve(metric)
    ]
    return pd.DataFrame(rows, columns=["label", "task", "seed", "step", metric])


def shared_seeds(curves: pd.DataFrame) -> set[int]:
    """The seeds every label of a :func:`curves_frame` has a curve on."""
    per_label = [set(part["seed"]) for _, part in curves.groupby("label")]
    return set.intersection(*per_label) if per_label else set()


MIN_CURVE_SPAN = 0.1


def save_learning_curves(
    results: Sequence[RunResult],
    task: str,
    path: Path,
    labels: Sequence[str],
    highlight: Sequence[str] = (),
    title: str = "",
) -> None:
    """Mean eval reward over seeds per label for one task, as a PNG (CIs are in the tables).

    The means are over the seeds every drawn label finished, so a label that lost a seed
    (diverged, failed) does not start from another warm start than the others; the title
    says so when seeds were left out. ``highlight`` labels (the reference objectives) are
    drawn thick and black. The y axis spans at least `MIN_CURVE_SPAN` inside [0, 1], so
    curves of a task nothing learns are drawn flat, not zoomed until rounding noise looks
    like a trend.
    """
    frame = curves_frame([r for r in results if r.plan.task == task and r.plan.label in labels])
    seeds = shared_seeds(frame)
    title = title or f"{task}: held-out reward"
    if seeds < set(frame["seed"]):
        title += f"\n(the {len(seeds)} of {frame['seed'].nunique()} seeds every objective finished)"
    fig = figures.learning_curves_figure(
        curve_summary(frame[frame["seed"].isin(seeds)]),
        labels=labels,
        baselines=highlight,
        title=title,
        comparison=True,
    )
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    if high - low < MIN_CURVE_SPAN:
        low = min(max((low + high - MIN_CURVE_SPAN) / 2, 0.0), 1.0 - MIN_CURVE_SPAN)
        ax.set_ylim(low, low + MIN_CURVE_SPAN)
    figures.save(fig, path)


def effects_figure(effects: pd.DataFrame, title: str, xlabel: str) -> Figure:
    """Forest plot: one row per (task, label), the paired effect and its t 95% CI.

    ``effects`` is a :func:`~grape_evo.experiment.tables.paired_effects` frame with a ``task``
    column. A vertical line marks 0 (no effect).
    """
    data = effects.reset_index(drop=True)
    tasks = list(dict.fromkeys(data["task"]))
    fig = figures.new_figure((7.5, max(3.0, 1.0 + 0.32 * len(data))))
    ax = fig.add_subplot()
    y = np.arange(len(data))[::-1].astype(float)
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    colors = [palette[tasks.index(t) % len(palette)] for t in data["task"]]
    ax.hlines(y, data["low"], data["high"], colors=colors, linewidth=2.5, alpha=0.8)
    ax.scatter(data["effect"], y, c=colors, s=40, zorder=3)
    ax.axvline(0.0, color="#444444", linestyle=":", linewidth=1.2)
    ax.set_yticks(y, [f"{t}: {lab} (n={n})" for t, lab, n in data[["task", "label", "n"]].values])
    ax.set_xlabel(xlabel)
    ax.set_title(f"{title}\nmean paired difference over seeds, t 95% CI")
    finite = [v for v in [*data["low"], *data["high"]] if math.isfinite(v)]
    if finite:
        span = max(finite) - min(finite) or 1.0
        ax.set_xlim(min(finite) - 0.05 * span, max(finite) + 0.05 * span)
    return fig
