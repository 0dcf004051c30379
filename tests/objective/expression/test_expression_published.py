"""The published forms that seed formula axes (``published.PUBLISHED``): each equals the
registered component it names, in loss and gradient, and LPO's drift meets LPO's conditions."""

from __future__ import annotations

import math

import pytest
import torch
from objective_helpers import assert_same, pairs, rollouts

from grape_evo.objective.expression.probe import cheap_checks, drift_conditions
from grape_evo.objective.expression.published import PUBLISHED
from grape_evo.objective.expression.torch_form import compiled

ADVANTAGE_COMPONENTS = {
    "GRPO": {"name": "group_zscore", "eps": 1e-6, "unbiased_std": False},
    "Dr. GRPO": {"name": "group_mean"},
    "RLOO": {"name": "rloo"},
    "REINFORCE": {"name": "reward"},
}
PREFERENCE_COMPONENTS = {
    "DPO": {"name": "sigmoid"},
    "DiscoPOP": {"name": "discopop", "tau": 0.05},
    "hinge": {"name": "hinge"},
    "IPO": {"name": "ipo"},
}


@pytest.mark.parametrize("name", list(PUBLISHED["advantage"]))
def test_published_advantages_equal_their_components(name):
    common = {"group_size": 4, "surrogate": "ppo_clip", "epochs": 1}
    formula = {"name": "expression", "expr": PUBLISHED["advantage"][name]}
    assert_same(
        {**common, "advantage": formula},
        {**common, "advantage": ADVANTAGE_COMPONENTS[name]},
        rollouts(),
    )


@pytest.mark.parametrize("beta", [0.1, 0.5])
@pytest.mark.parametrize("name", list(PUBLISHED["preference"]))
def test_published_preference_losses_equal_their_components(name, beta):
    pref = {"data": "preference_pairs"}
    formula = {"name": "expression", "expr": PUBLISHED["preference"][name], "beta": beta}
    assert_same(
        {**pref, "preference": formula},
        {**pref, "preference": {**PREFERENCE_COMPONENTS[name], "beta": beta}},
        pairs(),
    )


def test_published_ppo_drift_equals_ppo_clip_and_the_ratio_drift_is_zero():
    common = {"group_size": 4, "advantage": "group_zscore"}
    assert_same(
        {**common, "surrogate": {"name": "drift", "expr": PUBLISHED["drift"]["PPO-clip"]}},
        {**common, "surrogate": {"name": "ppo_clip", "clip_low": 0.2, "clip_high": 0.2}},
        rollouts(),
    )
    assert PUBLISHED["drift"]["ratio"] == "0"


def test_lpo_drift_values_by_hand_and_its_conditions():
    """f = relu((r-1)A - 2 tanh((r-1)A/2)) for A >= 0, relu(log(r) A - 0.6 tanh(log(r) A/0.6))
    for A < 0 (Lu et al. 2022)."""
    f = compiled("drift", PUBLISHED["drift"]["LPO"])
    points = [(1.5, 2.0), (0.5, 1.0), (2.0, -1.0), (0.5, -3.0), (1.0, 5.0)]
    r = torch.tensor([p[0] for p in points], dtype=torch.float64)
    a = torch.tensor([p[1] for p in points], dtype=torch.float64)
    got = f({"r": r, "log_r": r.log(), "A": a}).tolist()
    for (ratio, adv), value in zip(points, got, strict=True):
        if adv >= 0:
            x = (ratio - 1) * adv
            expected = max(0.0, x - 2 * math.tanh(x / 2))
        else:
            x = math.log(ratio) * adv
            expected = max(0.0, x - 0.6 * math.tanh(x / 0.6))
        assert value == pytest.approx(expected, abs=1e-12)
    assert got[1] == 0.0 and got[4] == 0.0  # (r-1)A < 0 and r = 1: no drift
    conditions = drift_conditions(PUBLISHED["drift"]["LPO"])
    assert conditions.nonnegative and conditions.zero_at_one and conditions.flat_at_one


@pytest.mark.parametrize(
    ("kind", "name"), [(k, n) for k, forms in PUBLISHED.items() for n in forms]
)
def test_every_published_form_passes_the_cheap_checks(kind, name):
    assert cheap_checks(kind, PUBLISHED[kind][name]) == []
