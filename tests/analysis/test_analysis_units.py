"""Unit checks of the analysis helpers, against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from grape_evo.analysis.diff import differing_leaves, nearest_baseline_diff
from grape_evo.analysis.pareto import pareto_mask
from grape_evo.analysis.stats import Interval, paired_interval, t_interval, verdict
from grape_evo.analysis.summaries import curve_summary, mean_ci
from grape_evo.objective import ObjectiveSpec, presets


# ---- confidence intervals -----------------------------------------------------------------
def test_t_interval_quantiles_match_printed_tables():
    """Half-widths over n values with sample sd 1: t_{0.975, n-1} / sqrt(n), the quantiles
    from printed t tables (12.706, 4.303, 2.021, 1.980)."""
    for n, quantile in ((2, 12.706), (3, 4.303), (41, 2.021), (121, 1.980)):
        values = [0.0] * n
        values[0], values[1] = -math.sqrt((n - 1) / 2), math.sqrt((n - 1) / 2)  # sd 1, mean 0
        interval = t_interval(values)
        assert interval.high == pytest.approx(quantile / math.sqrt(n), abs=1e-3 / math.sqrt(n))
        assert interval.low == pytest.approx(-interval.high) and interval.n == n


def test_bonferroni_widens_the_interval_to_the_corrected_quantile():
    # 5 values 0.1, 0.2, 0.3, 0.4, 0.5: mean 0.3, sd 0.158114, se 0.070711; two comparisons
    # use t_{1 - 0.05/4, 4} = 3.495406 (printed: 3.495) instead of t_{0.975, 4} = 2.776445.
    values = [0.1, 0.2, 0.3, 0.4, 0.5]
    assert t_interval(values).high == pytest.approx(0.3 + 2.776445 * 0.070711, abs=1e-5)
    assert t_interval(values, comparisons=2).high == pytest.approx(
        0.3 + 3.495406 * 0.070711, abs=1e-5
    )


def test_paired_interval_uses_the_differences_of_complete_pairs():
    # pairs (0.5, 0.4), (0.7, 0.5), (0.6, 0.5), (nan, 0.1) -> differences 0.1, 0.2, 0.1
    interval = paired_interval([0.5, 0.7, 0.6, float("nan")], [0.4, 0.5, 0.5, 0.1])
    assert interval.n == 3 and interval.mean == pytest.approx(0.4 / 3)
    se = math.sqrt(((0.1 - 0.4 / 3) ** 2 * 2 + (0.2 - 0.4 / 3) ** 2) / 2) / math.sqrt(3)
    assert interval.low == pytest.approx(0.4 / 3 - 4.302653 * se, abs=1e-6)
    with pytest.raises(ValueError, match="paired with"):
        paired_interval([0.1], [0.1, 0.2])


def test_verdicts() -> None:
    assert verdict(Interval(0.1, 0.02, 0.18, 5)) == "better"
    assert verdict(Interval(-0.1, -0.18, -0.02, 5)) == "worse"
    assert verdict(Interval(0.1, -0.01, 0.21, 5)) == "unresolved"
    assert verdict(Interval(0.1, math.nan, math.nan, 1)) == "unresolved"
    constant = t_interval([0.2, 0.2, 0.2])
    assert (constant.low, constant.high) == pytest.approx((0.2, 0.2), abs=1e-12)


def test_mean_ci_is_t_based_on_three_seeds():
    # values 0.2, 0.4, 0.6: mean 0.4, sd (ddof 1) 0.2, se 0.2/sqrt(3) = 0.115470,
    # t(0.975, 2) = 4.302653 -> half width 0.496828
    mean, low, high = mean_ci([0.2, 0.4, 0.6])
    assert mean == pytest.approx(0.4)
    assert low == pytest.approx(0.4 - 0.496828, abs=1e-5)
    assert high == pytest.approx(0.4 + 0.496828, abs=1e-5)
    mean, low, high = mean_ci([0.3])
    assert mean == 0.3 and math.isnan(low) and math.isnan(high)  # one seed: no interval
    assert all(math.isnan(v) for v in mean_ci([]))


def test_curve_summary_mean_and_ci_per_step():
    rows = []
    # three seeds; at step 0 every seed is 0.1, at step 2 the seeds give 0.2, 0.4, 0.6
    for seed, v in enumerate([0.2, 0.4, 0.6]):
        rows.append({"label": "a", "task": "t", "seed": seed, "step": 0, "eval_reward": 0.1})
        rows.append({"label": "a", "task": "t", "seed": seed, "step": 1, "eval_reward": None})
        rows.append({"label": "a", "task": "t", "seed": seed, "step": 2, "eval_reward": v})
    rows.append({"label": "b", "task": "t", "seed": 0, "step": 2, "eval_reward": 0.9})
    out = curve_summary(pd.DataFrame(rows))
    a = out[out["label"] == "a"].set_index("step")
    assert list(a.index) == [0, 2]  # step 1 has no evaluation
    assert a.loc[0, "n"] == 3
    assert (a.loc[0, "mean"], a.loc[0, "ci_low"], a.loc[0, "ci_high"]) == pytest.approx(
        (0.1, 0.1, 0.1)
    )
    assert a.loc[2, "mean"] == pytest.approx(0.4)
    assert a.loc[2, "ci_low"] == pytest.approx(-0.096828, abs=1e-5)
    assert a.loc[2, "ci_high"] == pytest.approx(0.896828, abs=1e-5)
    b = out[out["label"] == "b"].iloc[0]
    assert (b["n"], b["mean"]) == (1, 0.9)
    assert math.isnan(b["ci_low"]) and math.isnan(b["ci_high"])


# ---- Pareto -------------------------------------------------------------------------------
def test_pareto_mask_on_hand_labelled_points():
    #           A    B    C    D    E    F(=B) G(missing)
    reward = [0.9, 0.8, 0.7, 0.9, 0.5, 0.8, None]
    kl = [0.5, 0.1, 0.2, 0.6, 0.0, 0.1, 0.05]
    # A: front (highest reward at KL 0.5); B, F: front (tie, nothing beats both);
    # C: dominated by B; D: dominated by A (same reward, more KL); E: front (lowest KL);
    # G: no reward -> never on the front.
    expected = [True, True, False, False, True, True, False]
    assert pareto_mask(reward, kl).tolist() == expected


def test_pareto_mask_single_and_empty():
    assert pareto_mask([0.3], [1.0]).tolist() == [True]
    assert pareto_mask([], []).tolist() == []
    assert isinstance(pareto_mask([1.0], [0.0]), np.ndarray)


# ---- nearest baseline ---------------------------------------------------------------------
BASELINES = {n: presets.get(n) for n in ("grpo", "ppo", "dpo")}


def test_dapo_is_nearest_to_grpo():
    name, text = nearest_baseline_diff(presets.get("dapo"), BASELINES)
    assert name == "grpo"
    assert text.startswith("grpo + ")
    assert "clip_high 0.28" in text
    assert "token_mean" in text
    assert "KL off" in text
    # dapo differs from grpo in exactly: clip_high, kl.coef, aggregation.name
    assert sorted(differing_leaves(presets.get("dapo"), presets.get("grpo"))) == [
        "aggregation.name",
        "kl.coef",
        "surrogate.clip_high",
    ]


def test_identical_and_small_changes():
    assert nearest_baseline_diff(presets.get("grpo").with_name("x"), BASELINES) == (
        "grpo",
        "= grpo",
    )
    d = presets.get("ppo").to_dict()
    d["kl"] = {"estimator": "k1", "placement": "reward", "coef": 0.01}
    assert nearest_baseline_diff(ObjectiveSpec.from_dict(d), BASELINES) == (
        "ppo",
        "ppo + k1 KL 0.01 in reward",
    )
    g = presets.get("grpo").to_dict()
    g["surrogate"] = {"name": "ppo_clip", "clip_low": 0.2, "clip_high": 0.28}
    g["kl"] = {"estimator": "k1", "placement": "loss", "coef": 0.01}
    assert nearest_baseline_diff(ObjectiveSpec.from_dict(g), BASELINES)[1] == (
        "grpo + clip_high 0.28 + k1 KL 0.01"
    )


def test_preference_objective_is_nearest_to_dpo():
    name, text = nearest_baseline_diff(presets.get("ipo"), BASELINES)
    assert name == "dpo"
    assert "preference ipo" in text


def test_dormant_params_do_not_count():
    # a clip_high gene kept while the surrogate is reinforce is dropped by canonical()
    g = presets.get("grpo").to_dict()
    g["surrogate"] = {"name": "reinforce", "clip_high": 0.3}
    spec = ObjectiveSpec.from_dict(g)
    assert set(differing_leaves(spec, presets.get("grpo"))) == {
        "surrogate.name",
        "surrogate.clip_high",
        "surrogate.clip_low",
        "surrogate.dual_clip",
    }
    assert nearest_baseline_diff(spec, BASELINES) == ("grpo", "grpo + surrogate reinforce")
