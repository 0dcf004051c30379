"""Summaries of the campaign frames: means with t intervals, learning curves over seeds, the
best value so far and axis importances (no plotting here)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import optuna
import pandas as pd
from optuna.trial import TrialState

from grape_evo.analysis.stats import t_interval
from grape_evo.search.space.expressions import DRAW_SUFFIX


def mean_ci(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high): the t-based 95% CI of the mean (`grape_evo.analysis.stats.t_interval`);
    non-finite values are dropped, fewer than 2 values give NaN bounds."""
    interval = t_interval(values)
    return interval.mean, interval.low, interval.high


def curve_summary(
    steps: pd.DataFrame, value: str = "eval_reward", by: Sequence[str] = ("label", "task")
) -> pd.DataFrame:
    """Mean and 95% CI (:func:`mean_ci`, over seeds) of ``value`` at each step.

    Returns one row per (``by``..., ``step``) with columns ``n`` (seeds with a value),
    ``mean``, ``ci_low``, ``ci_high``. Rows without ``value`` are left out.
    """
    keys = [*by, "step"]
    columns = [*keys, "n", "mean", "ci_low", "ci_high"]
    if steps.empty or value not in steps.columns:
        return pd.DataFrame(columns=columns)
    data = steps[steps[value].notna()]
    rows = []
    for group, part in data.groupby(list(keys), sort=True):
        mean, low, high = mean_ci(part[value].astype(float).tolist())
        rows.append([*group, int(part[value].notna().sum()), mean, low, high])
    return pd.DataFrame(rows, columns=columns)


def best_so_far(trials: pd.DataFrame, column: str = "reward") -> pd.Series:
    """Running maximum of ``column`` over COMPLETE trials in trial order (NaN before the first),
    indexed by trial number."""
    ordered = trials.sort_values("number")
    values = ordered[column].where(ordered["state"] == TrialState.COMPLETE.name)
    return pd.Series(
        values.astype(float).cummax().ffill().to_numpy(),
        index=ordered["number"].to_numpy(),
        name="best",
    )


# ---- axis importance ----------------------------------------------------------------------
MIN_IMPORTANCE_TRIALS = 4


def param_importances(
    study: optuna.Study, min_trials: int = MIN_IMPORTANCE_TRIALS
) -> tuple[dict[str, float] | None, str]:
    """(importances, note): Optuna's PED-ANOVA importance of each axis for the reward.

    Computed over COMPLETE candidate trials (baselines are left out: a baseline is trained as
    its preset, so its sampled axis values do not describe it). Conditional axes are scored
    over the trials where they are active (PED-ANOVA handles them). fANOVA is the fallback
    (it needs scikit-learn). Returns None and the reason when there are too few trials, no
    axis varies, or the evaluators fail.
    """
    import warnings

    from optuna.importance import (
        FanovaImportanceEvaluator,
        PedAnovaImportanceEvaluator,
        get_param_importances,
    )

    trials = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not t.user_attrs.get("baseline") and t.params and t.values
    ]
    if len(trials) < min_trials:
        return None, (
            f"too few completed candidate trials for importances ({len(trials)} < {min_trials})"
        )
    varying = [
        p
        for p in dict.fromkeys(p for t in trials for p in t.params)
        if not p.endswith(DRAW_SUFFIX)  # a formula's draw is a label, not a coordinate
        and len({json.dumps(t.params.get(p), default=str) for t in trials}) > 1
    ]
    if not varying:
        return None, "no axis takes more than one value among the completed candidate trials"
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        copy = optuna.create_study(directions=study.directions)
    finally:
        optuna.logging.set_verbosity(verbosity)
    copy.add_trials(trials)
    notes = []
    for name, make in (
        ("PED-ANOVA", lambda: PedAnovaImportanceEvaluator()),
        ("fANOVA", lambda: FanovaImportanceEvaluator(seed=0)),
    ):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = get_param_importances(
                    copy, evaluator=make(), target=lambda t: t.values[0], normalize=True
                )
        except Exception as err:  # optuna raises several types on degenerate studies
            notes.append(f"{name} failed ({type(err).__name__}: {err})")
            continue
        result = {k: float(v) for k, v in result.items()}
        if result and all(math.isfinite(v) for v in result.values()):
            note = f"{name} over {len(trials)} completed candidate trials (baselines left out)"
            return result, "; ".join([*notes, note])
        notes.append(f"{name} gave no finite importances")
    return None, "; ".join(notes)
