"""Unit checks of the analysis helpers, against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from grape_evo.analysis.diff import differing_leaves, nearest_baseline_diff
from grape_evo.analysis.pareto import pareto_mask
from grape_evo.analysis.stats import bootstrap_ci
from grape_evo.analysis.summaries import curve_summary, mean_ci, t_quantile_975
from grape_evo.objective import ObjectiveSpec, presets


# ---- confidence intervals -----------------------------------------------------------------
def test_bootstrap_ci_of_constant_values_has_zero_width():
    assert bootstrap_ci([1.0, 1.0, 1.0]) == (1.0, 1.0)


def test_bootstrap_ci_of_two_values_lies_within_their_range():
    low, high = bootstrap_ci([0.2, 0.6])
    assert 0.2 <= low <= high <= 0.6
    assert low < 0.4 < high  # the means 0.2, 0.4, 0.6 each have mass >= 25%


def test_t_quantiles_match_tables():
    assert t_quantile_975(1) == pytest.approx(12.706, abs=1e-3)
    assert t_quantile_975(2) == pytest.approx(4.303, abs=1e-3)
    assert t_quantile_975(40) == pytest.approx(2.0211, abs=1e-3)  # table: 2.021
    assert t_quantile_975(120) == pytest.approx(1.9799, abs=1e-3)  # table: 1.980


def test_mean_ci_is_t_based_on_three_seeds():
    # values 0.2, 0.4, 0.6: mean 0.4, sd (ddof 1) 0.2, se 0.2/sqrt(3) = 0.115470,
    # t(0.975, 2) = 4.302653 -> half width 0.496828
    mean, low, high = mean_ci([0.2, 0.4, 0.6])
    assert mean == pytest.approx(0.4)
    assert low == pytest.approx(0.4 - 0.496828, abs=1e-5)
    assert high == pytest.approx(0.4 + 0.496828, abs=1e-5)
    assert mean_ci([0.3]) == (0.3, 0.3, 0.3)
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
    assert (b["n"], b["mean"], b["ci_low"], b["ci_high"]) == (1, 0.9, 0.9, 0.9)


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
