"""Result tables of an experiment: per-cell means with t-intervals, and paired effects.

Every statistic is over seeds. Warm starts differ a lot between seeds (the same objective can
start at 0.5 or 0.8 accuracy), so comparisons of two objectives use *paired* differences: on
each seed both start from the same warm start, and the effect is the mean over seeds of
``metric(variant, seed) - metric(reference, seed)``, with a t 95% CI of that mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from grape_evo.analysis.stats import t_interval
from grape_evo.experiment.grid import RunResult

METRICS = ("reward", "accuracy", "kl_to_ref")


def finals_frame(results: Sequence[RunResult]) -> pd.DataFrame:
    """One row per run: label, task, seed, lr, policy, status, initial and final metrics."""
    rows = []
    for r in results:
        row = {
            "label": r.plan.label,
            "task": r.plan.task,
            "seed": r.plan.seed,
            "lr": r.plan.train.lr,
            "policy": r.plan.policy.preset,
            "status": r.status,
            "initial_reward": r.initial("reward"),
            "initial_accuracy": r.initial("accuracy"),
        }
        row.update({m: r.final(m) for m in METRICS})
        rows.append(row)
    return pd.DataFrame(rows)


def cell_table(finals: pd.DataFrame, by: Sequence[str] = ("task", "label")) -> pd.DataFrame:
    """Per cell: ``n`` seeds, runs not ok, and mean + t 95% CI of every metric.

    A run that did not end ok (diverged or failed) has no final value: it is counted in
    ``not_ok`` and left out of the means, so ``n`` says how many seeds each mean rests on.
    """
    rows = []
    for keys, part in finals.groupby(list(by), sort=False):
        row = dict(zip(by, keys if isinstance(keys, tuple) else (keys,), strict=True))
        row["n"] = int((part["status"] == "ok").sum())
        row["not_ok"] = int((part["status"] != "ok").sum())
        for metric in (*METRICS, "initial_reward"):
            values = part[metric].dropna().tolist()
            row[metric] = sum(values) / len(values) if values else math.nan
            interval = t_interval(values)
            row[f"{metric}_low"], row[f"{metric}_high"] = interval.low, interval.high
        rows.append(row)
    return pd.DataFrame(rows)


def paired_effects(
    finals: pd.DataFrame,
    reference: str,
    metric: str = "reward",
    by: Sequence[str] = ("task",),
    comparisons: int = 1,
) -> pd.DataFrame:
    """Mean over seeds of ``metric(label) - metric(reference)`` per (``by``, label).

    Only seeds where both runs ended ok are paired. Columns: ``by``..., ``label``, ``n``
    (pairs), ``effect``, ``low``, ``high`` (t 95% CI of the mean difference, Bonferroni-
    adjusted over ``comparisons``: each at level 1 - 0.05 / comparisons), ``wins`` (pairs
    where the label is strictly better).
    """
    rows = []
    for keys, part in finals.groupby(list(by), sort=False):
        key_values = dict(zip(by, keys if isinstance(keys, tuple) else (keys,), strict=True))
        ref = part[part["label"] == reference].set_index("seed")[metric]
        for label, runs in part.groupby("label", sort=False):
            if label == reference:
                continue
            mine = runs.set_index("seed")[metric]
            diffs = (mine - ref).dropna()
            interval = t_interval(diffs.tolist(), comparisons=comparisons)
            low, high = interval.low, interval.high
            rows.append(
                {
                    **key_values,
                    "label": label,
                    "n": int(diffs.size),
                    "effect": float(diffs.mean()) if diffs.size else math.nan,
                    "low": low,
                    "high": high,
                    "wins": int((diffs > 0).sum()),
                }
            )
    return pd.DataFrame(rows)


def verdict(low: float, high: float) -> str:
    """``better`` / ``worse`` when the CI excludes 0, else ``no clear effect``."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return "n/a"
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "no clear effect"


SIGNS = (">= 0", "= 0", "> 0", "< 0")


def agreement(sign: str, low: float, high: float) -> str:
    """How a paired effect's 95% CI [low, high] compares with the published direction.

    ``confirmed``: the CI lies on the expected side (for ``= 0``: it is [0, 0] exactly, or
    contains 0); ``contradicted``: it lies clearly on the other side; ``inconclusive``: it
    spans 0 where a direction was expected. ``>= 0`` (no loss) is contradicted only by a CI
    below 0.
    """
    if sign == "= 0":
        return "confirmed" if low <= 0 <= high else "contradicted"
    if sign == ">= 0":
        return "contradicted" if high < 0 else "confirmed"
    better, worse = (low > 0, high < 0) if sign == "> 0" else (high < 0, low > 0)
    return "confirmed" if better else "contradicted" if worse else "inconclusive"


def fmt_ci(mean: float, low: float, high: float, digits: int = 3, signed: bool = False) -> str:
    """``0.812 [0.790, 0.835]``; ``n/a`` for a missing mean."""
    if not math.isfinite(mean):
        return "n/a"
    sign = "+" if signed else ""
    return f"{mean:{sign}.{digits}f} [{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]"


def fmt_effect(effect: float, low: float, high: float) -> str:
    """A paired effect with its CI and :func:`verdict`: ``+0.017 [+0.002, +0.036] better``."""
    return f"{fmt_ci(effect, low, high, signed=True)} {verdict(low, high)}"


def markdown(frame: pd.DataFrame) -> str:
    """A GitHub markdown table of ``frame`` (values as they are, already formatted)."""
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])
