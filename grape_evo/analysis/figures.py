"""Matplotlib figures drawn only from the frames of :mod:`grape_evo.analysis.frames`.

Every function returns a :class:`matplotlib.figure.Figure` on an Agg canvas (no pyplot, no
global figure state), sized for reading at 100% zoom: (7, 4.5) inches at 120 dpi, fonts of at
least 10 pt, a title, labelled axes with units and a legend.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from grape_evo.analysis.pareto import pareto_mask

FIGSIZE = (7.0, 4.5)
DPI = 120
REWARD_LABEL = "held-out gold reward (0-1)"
KL_LABEL = "KL to reference (nats / sequence)"
STEP_LABEL = "training step"
TRIAL_LABEL = "trial number"
_STYLE = {
    "font.size": 10,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
_CANDIDATE_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf")
_BASELINE_COLORS = ("#444444", "#d62728", "#7f7f7f", "#bcbd22", "#000000")
_COMPARISON_COLORS = (*_CANDIDATE_COLORS, "#d62728", "#bcbd22", "#7f7f7f")


@contextmanager
def _style() -> Iterator[None]:
    with matplotlib.rc_context(_STYLE):
        yield


def new_figure(figsize: tuple[float, float] = FIGSIZE, dpi: int = DPI) -> Figure:
    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path) -> None:
    fig.savefig(path, dpi=fig.dpi)


def colors_for(labels: Sequence[str], baselines: Sequence[str]) -> dict[str, str]:
    """A stable colour per label: candidates from one palette, baselines from another."""
    out, c, b = {}, 0, 0
    for label in labels:
        if label in baselines:
            out[label] = _BASELINE_COLORS[b % len(_BASELINE_COLORS)]
            b += 1
        else:
            out[label] = _CANDIDATE_COLORS[c % len(_CANDIDATE_COLORS)]
            c += 1
    return out


# ---- learning curves ----------------------------------------------------------------------
def learning_curves_figure(
    curves: pd.DataFrame,
    labels: Sequence[str] | None = None,
    baselines: Sequence[str] = (),
    title: str = "Learning curves",
    ylabel: str = REWARD_LABEL,
    value_range: tuple[float, float] | None = (0.0, 1.0),
    comparison: bool = False,
) -> Figure:
    """One line (mean over seeds) and one shaded 95% CI band per label.

    ``curves`` is a :func:`~grape_evo.analysis.summaries.curve_summary` frame (columns ``label``,
    ``step``, ``n``, ``mean``, ``ci_low``, ``ci_high``) for one task. Baselines are dashed.
    Bands are cut to ``value_range`` (rewards are in [0, 1]; a t interval over
    few seeds can reach past them). ``comparison`` draws many objectives side by side (an
    experiment's table holds their CIs): no bands, no baseline/discovered wording, the legend
    outside the axes, and the line style changing each time the palette repeats; baselines
    are black, each in its own line style.
    """
    with _style():
        present = list(dict.fromkeys(curves["label"])) if not curves.empty else []
        order = [lab for lab in (labels or present) if lab in present]
        fig = new_figure((FIGSIZE[0] + 3.0, FIGSIZE[1]) if comparison else FIGSIZE)
        ax = fig.add_subplot()
        colors = colors_for(order, baselines)
        drawn: dict[tuple, str] = {}  # identical curves hide each other: say so in the legend
        references = [lab for lab in order if lab in baselines]
        for index, label in enumerate(order):
            part = curves[curves["label"] == label].sort_values("step")
            n = int(part["n"].max())
            kind = "baseline" if label in baselines else "discovered"
            signature = tuple(np.round(part[["step", "mean"]].to_numpy(float), 9).ravel())
            same = f"same curve as {drawn[signature]}" if signature in drawn else ""
            drawn.setdefault(signature, label)
            if comparison:
                notes = [x for x in ("reference" if label in baselines else "", same) if x]
                text = f"{label} ({', '.join(notes)})" if notes else label
                style = ("-", "--", ":")[index // len(_COMPARISON_COLORS) % 3]
                if label in baselines:  # all black: told apart by their line style
                    style = ("-", "--", ":", "-.")[references.index(label) % 4]
                color = _COMPARISON_COLORS[index % len(_COMPARISON_COLORS)]
            else:
                text = f"{label} ({', '.join(x for x in (kind, same) if x)}, n={n})"
                style = "--" if label in baselines else "-"
                color = colors[label]
            ax.plot(
                part["step"],
                part["mean"],
                color="#000000" if comparison and label in baselines else color,
                linestyle=style,
                marker="o",
                markersize=4 if not comparison else 3,
                linewidth=2.6 if comparison and label in baselines else 1.8,
                label=text,
            )
            if comparison:
                continue
            low = part["ci_low"].to_numpy(dtype=float)
            high = part["ci_high"].to_numpy(dtype=float)
            if value_range is not None:
                low, high = np.clip(low, *value_range), np.clip(high, *value_range)
            ax.fill_between(
                part["step"].to_numpy(dtype=float),
                low,
                high,
                color=colors[label],
                alpha=0.08,
                linewidth=0,
            )
        seeds = "mean over seeds"
        if order:
            most, fewest = int(curves["n"].max()), int(curves["n"].min())
            seeds = f"mean over {most} seeds" + (
                f" ({fewest} where runs stopped early)" if fewest < most else ""
            )
        band = "CIs in the table" if comparison else "shaded: 95% CI (t-based)"
        ax.set_title(f"{title}\n{seeds}, {band}")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel(STEP_LABEL)
        ax.set_ylabel(ylabel)
        if order and comparison:
            ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize=9)
        elif order:
            ax.legend(loc="best", frameon=False)
        else:
            _empty_note(ax, "no learning-curve data")
    return fig


# ---- final scores -------------------------------------------------------------------------
def final_scores_figure(
    discoveries: pd.DataFrame, title: str = "Final held-out reward on fresh seeds"
) -> Figure:
    """Mean final reward per objective (dots), t 95% CI (whiskers), per-seed finals; beside
    it, when the re-evaluation has a reference, each objective's paired effect on it with its
    Bonferroni-corrected t-interval, coloured by verdict.

    ``discoveries`` is a :func:`~grape_evo.analysis.frames.discoveries_frame`; the best is at
    the top. Artists of ``axes[0]``: ``collections[0]`` the CI segments, ``[1]`` the means,
    ``[2]`` the per-(task, seed) finals; a dashed vertical line marks the best baseline's
    mean. ``axes[1]`` (paired effects): ``collections[0]`` the intervals, ``[1]`` the effects;
    a vertical line at 0.
    """
    with _style():
        data = discoveries.reset_index(drop=True)
        paired = "paired_effect" in data and data["paired_effect"].notna().any()
        height = max(FIGSIZE[1], 1.2 + 0.45 * len(data))
        fig = new_figure((FIGSIZE[0] * (1.8 if paired else 1.0), height))
        ax = fig.add_subplot(1, 2 if paired else 1, 1)
        y = np.arange(len(data))[::-1].astype(float)
        colors = ["#444444" if b else "#1f77b4" for b in data.get("baseline", [])]
        ax.hlines(y, data["ci_low"], data["ci_high"], colors=colors, linewidth=2.5, alpha=0.8)
        ax.scatter(data["reward"], y, c=colors, s=50, zorder=3)
        seed_x = [v for rewards in data["rewards"] for v in rewards]
        seed_y = [yy for yy, rewards in zip(y, data["rewards"], strict=True) for _ in rewards]
        ax.scatter(seed_x, seed_y, facecolors="none", edgecolors="#888888", s=18, zorder=2)
        base = data[data["baseline"]] if "baseline" in data else data.iloc[0:0]
        if not base.empty and base["reward"].notna().any():
            best = base.loc[base["reward"].idxmax()]
            ax.axvline(best["reward"], color="#444444", linestyle=":", linewidth=1.2)
        ax.set_yticks(
            y, [f"{lab} (n={n})" for lab, n in zip(data["label"], data["n"], strict=True)]
        )
        ax.set_xlabel(REWARD_LABEL)
        ax.set_ylabel("objective")
        ax.set_title(f"{title}\nmean, t 95% CI of the mean, per-seed finals")
        from matplotlib.lines import Line2D

        handles = [
            Line2D([], [], color="#1f77b4", marker="o", linewidth=2.5, label="discovered"),
            Line2D([], [], color="#444444", marker="o", linewidth=2.5, label="baseline"),
            Line2D(
                [],
                [],
                color="#888888",
                marker="o",
                markerfacecolor="none",
                linestyle="",
                label="one (task, seed)",
            ),
        ]
        if not base.empty:
            handles.append(
                Line2D([], [], color="#444444", linestyle=":", label="best baseline mean")
            )
        # below the panel: the rows span the whole width, so no corner inside is free
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=4,
                  frameon=False)  # fmt: skip
        _pad_x(ax, [*data["ci_low"], *data["ci_high"], *seed_x])
        if data.empty:
            _empty_note(ax, "no re-evaluated candidates")
        if paired:
            _paired_effects(fig.add_subplot(1, 2, 2, sharey=ax), data, y)
    return fig


_VERDICT_COLORS = {"better": "#2ca02c", "worse": "#d62728", "unresolved": "#7f7f7f"}


def _paired_effects(ax: Axes, data: pd.DataFrame, y: np.ndarray) -> None:
    """The paired effect of each objective on the reference, with its interval."""
    colors = [_VERDICT_COLORS.get(v, "#bbbbbb") for v in data["verdict"].fillna("")]
    ax.hlines(y, data["effect_low"], data["effect_high"], colors=colors, linewidth=2.5)
    ax.scatter(data["paired_effect"], y, c=colors, s=50, zorder=3)
    ax.axvline(0.0, color="#444444", linewidth=1.0)
    reference = next((r for r in data["reference"] if isinstance(r, str)), "the reference")
    ax.set_xlabel(f"objective - {reference}, paired by seed (final held-out reward)")
    seeds = int(data["n_seeds"].max()) if data["n_seeds"].notna().any() else 0
    ax.set_title(
        f"difference to {reference} on the same {seeds} seeds\n"
        "t-interval, Bonferroni over the objectives compared"
    )
    ax.tick_params(labelleft=False)
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color=c, marker="o", linewidth=2.5, label=v)
        for v, c in _VERDICT_COLORS.items()
    ]
    ax.legend(
        handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, frameon=False
    )
    _pad_x(ax, [0.0, *data["effect_low"], *data["effect_high"]])


# ---- reward vs KL -------------------------------------------------------------------------
def pareto_figure(
    points: pd.DataFrame,
    title: str = "Reward vs KL to reference",
    annotate: int = 3,
) -> Figure:
    """Each objective as a point (``kl_to_ref``, ``reward``); the Pareto front (maximise
    reward, minimise KL) highlighted and joined by a step line.

    ``points`` needs ``label``, ``reward``, ``kl_to_ref`` and optionally ``baseline`` (str or
    bool). Artists: ``collections[0]`` dominated points, ``[1]`` front points, ``[2]``
    baselines (ringed, only when there are any); ``lines[0]`` the front. Baselines and the
    ``annotate`` best front points are labelled.
    """
    with _style():
        fig = new_figure()
        ax = fig.add_subplot()
        data = points[points["reward"].notna() & points["kl_to_ref"].notna()]
        data = data.reset_index(drop=True)
        on_front = pareto_mask(data["reward"], data["kl_to_ref"])
        is_base = _baseline_flags(data)
        dom, front = data[~on_front], data[on_front]
        ax.scatter(
            dom["kl_to_ref"],
            dom["reward"],
            color="#9e9e9e",
            s=30,
            alpha=0.8,
            label=f"dominated ({len(dom)})" if len(dom) else "_dominated",
        )
        ax.scatter(
            front["kl_to_ref"],
            front["reward"],
            color="#d62728",
            s=45,
            zorder=3,
            label=f"Pareto front ({len(front)})",
        )
        if is_base.any():
            base = data[is_base]
            ax.scatter(
                base["kl_to_ref"],
                base["reward"],
                facecolors="none",
                edgecolors="black",
                s=140,
                linewidths=1.5,
                zorder=4,
                label="baseline",
            )
        ordered = front.sort_values("kl_to_ref")
        ax.plot(
            ordered["kl_to_ref"],
            ordered["reward"],
            color="#d62728",
            drawstyle="steps-post",
            linewidth=1.2,
            alpha=0.8,
        )
        named = list(data[is_base].index) + [
            i for i in front.sort_values("reward", ascending=False).index[:annotate]
        ]
        groups: list[tuple[tuple[float, float], list[str]]] = []  # coincident points share one
        for i in dict.fromkeys(named):
            row = data.loc[i]
            xy = (float(row["kl_to_ref"]), float(row["reward"]))
            for gxy, names in groups:
                if _close(gxy, xy, ax):
                    names.append(str(row["label"]))
                    break
            else:
                groups.append((xy, [str(row["label"])]))
        for xy, names in groups:
            ax.annotate(
                ", ".join(names), xy, xytext=(7, -12), textcoords="offset points", fontsize=10
            )
        ax.set_xlabel(KL_LABEL)
        ax.set_ylabel(REWARD_LABEL)
        ax.set_title(f"{title}\nfront: maximise reward, minimise KL")
        if data.empty:
            _empty_note(ax, "no completed trials with reward and KL")
        else:
            ax.legend(loc="best", frameon=False)
            _pad_x(ax, data["kl_to_ref"].tolist(), right=0.25)
            _pad_y(ax, data["reward"].tolist(), top=0.15)
    return fig


def _baseline_flags(data: pd.DataFrame) -> np.ndarray:
    if "baseline" not in data:
        return np.zeros(len(data), dtype=bool)
    return np.array([bool(b) and b == b for b in data["baseline"]], dtype=bool)


def _close(a: tuple[float, float], b: tuple[float, float], ax) -> bool:
    x0, x1 = ax.dataLim.intervalx
    y0, y1 = ax.dataLim.intervaly
    dx = (x1 - x0) or 1.0
    dy = (y1 - y0) or 1.0
    return abs(a[0] - b[0]) / dx < 0.05 and abs(a[1] - b[1]) / dy < 0.05


# ---- optimisation history -----------------------------------------------------------------
def history_figure(
    trials: pd.DataFrame,
    best: pd.Series,
    column: str = "reward",
    title: str = "Optimisation history",
) -> Figure:
    """Every trial's value against its number, the best so far, pruned and failed trials.

    ``trials`` is a trials frame, ``best`` :func:`~grape_evo.analysis.summaries.best_so_far`.
    Artists: ``lines[0]`` best so far; collections, each only when non-empty: complete
    candidates, complete baselines, pruned and failed (both on the bottom edge: neither has a
    final value).
    """
    with _style():
        fig = new_figure()
        ax = fig.add_subplot()
        state = trials["state"]
        is_base = trials["baseline"].fillna("").astype(str) != ""
        done = trials[(state == "COMPLETE") & ~is_base]
        base = trials[(state == "COMPLETE") & is_base]
        pruned = trials[state == "PRUNED"]
        failed = trials[state == "FAIL"]
        ax.plot(
            best.index,
            best.to_numpy(),
            drawstyle="steps-post",
            color="#d62728",
            linewidth=2,
            label="best so far",
        )
        if not done.empty:
            ax.scatter(
                done["number"], done[column], color="#1f77b4", s=30, label=f"complete ({len(done)})"
            )
        if not base.empty:
            ax.scatter(
                base["number"],
                base[column],
                color="#444444",
                marker="s",
                s=40,
                label=f"baseline ({len(base)})",
            )
        values = [*done[column], *base[column]]
        finite = [v for v in values if v is not None and math.isfinite(v)]
        bottom = min(finite) if finite else 0.0
        # Pruned and failed trials have no final value (a pruned trial's reports are single-run
        # values at some step, not comparable to a mean over runs): mark them on the floor.
        for rows, color, marker, label in (
            (pruned, "#ff7f0e", "x", f"pruned ({len(pruned)}, stopped early: no final value)"),
            (failed, "black", "v", f"failed ({len(failed)})"),
        ):
            if not rows.empty:
                ax.scatter(
                    rows["number"],
                    [bottom] * len(rows),
                    color=color,
                    marker=marker,
                    s=40,
                    clip_on=False,
                    label=label,
                )
        counts = f"{len(done) + len(base)} complete, {len(pruned)} pruned, {len(failed)} failed"
        ax.set_title(f"{title}\n{counts}")
        ax.set_xlabel(TRIAL_LABEL)
        ax.set_ylabel(f"mean final {REWARD_LABEL}")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.legend(loc="best", frameon=False)
        _pad_y(ax, finite, top=0.1)
    return fig


# ---- importances --------------------------------------------------------------------------
def importance_figure(
    importances: Mapping[str, float], title: str = "Axis importance", method: str = "PED-ANOVA"
) -> Figure:
    """A horizontal bar per axis (largest at the top); ``patches`` has one bar per axis."""
    with _style():
        items = sorted(importances.items(), key=lambda kv: kv[1])
        height = max(FIGSIZE[1], 1.5 + 0.4 * len(items))
        fig = new_figure((FIGSIZE[0], height))
        ax = fig.add_subplot()
        names = [k for k, _ in items]
        values = [v for _, v in items]
        bars = ax.barh(names, values, color="#1f77b4", label=f"{method} importance")
        ax.bar_label(bars, fmt="%.2f", padding=3, fontsize=10)
        ax.set_xlabel("importance for the final reward (fraction of total, 0-1)")
        ax.set_ylabel("axis")
        ax.set_title(f"{title} ({method})")
        ax.set_xlim(0, max([*values, 0.0]) * 1.15 or 1.0)
        ax.legend(loc="lower right", frameon=False)
    return fig


# ---- formulas -----------------------------------------------------------------------------
def formula_figure(latex: str, fontsize: int = 20, max_width: float = 30.0) -> Figure:
    """The loss rendered with matplotlib mathtext, the figure sized to the formula.

    Raises ValueError when mathtext cannot parse ``latex``.
    """
    with _style():
        fig = new_figure((max_width, 1.0))
        fig.set_layout_engine("none")
        text = fig.text(0.01, 0.5, f"${latex}$", fontsize=fontsize, va="center", ha="left")
        try:
            renderer = fig.canvas.get_renderer()
            box = text.get_window_extent(renderer=renderer)
        except Exception as err:  # mathtext raises ValueError (ParseFatalException inside)
            raise ValueError(f"mathtext cannot render the formula: {err}") from None
        width = box.width / fig.dpi + 0.3
        height = box.height / fig.dpi + 0.3
        fig.set_size_inches(max(width, 2.0), max(height, 0.6))
        text.set_position((0.15 / fig.get_figwidth(), 0.5))
    return fig


# ---- helpers ------------------------------------------------------------------------------
def _empty_note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=11)


def _pad_x(ax, values: Sequence[float], right: float = 0.08) -> None:
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return
    lo, hi = min(finite), max(finite)
    span = (hi - lo) or max(abs(hi), 1e-3) * 0.2
    ax.set_xlim(lo - 0.08 * span, hi + right * span)


def _pad_y(ax, values: Sequence[float], top: float = 0.08) -> None:
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return
    lo, hi = min(finite), max(finite)
    span = (hi - lo) or max(abs(hi), 1e-3) * 0.2
    ax.set_ylim(lo - 0.08 * span, hi + top * span)
