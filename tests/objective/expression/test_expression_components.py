"""The three expression components: equalities with the published components (loss and
gradient), spec validation, keys, formulas, and hostile files at the command line."""

from __future__ import annotations

import math

import pytest
import sympy as sp
import torch
from objective_helpers import assert_same, pairs, rollouts
from typer.testing import CliRunner

from grape_evo.cli import app
from grape_evo.objective import (
    ObjectiveError,
    ObjectiveSpec,
    build_objective,
)
from grape_evo.objective.registry import ADVANTAGES, PREFERENCE_LOSSES, SURROGATES
from grape_evo.objective.symbolic import Symbols as S
from grape_evo.objective.symbolic import clip, relu, sigmoid

TOL = 1e-6
ZSCORE = "(R - mean_G)/(std_G + 1e-6)"
PPO_DRIFT = "relu((r - clip(r, 0.8, 1.2))*A)"
DISCOPOP = "-logsigmoid(rho)*(1 - sigmoid(rho/0.05)) + exp(-rho)*sigmoid(rho/0.05)"


# ---- (a) advantage: the z-score formula is group_zscore with the ddof-0 std ------------------
@pytest.mark.parametrize("kl", [None, {"estimator": "k1", "placement": "reward", "coef": 0.1}])
def test_zscore_expression_equals_group_zscore_ddof0(kl):
    common = {"group_size": 4, "surrogate": "ppo_clip", "kl": kl}
    expression = {**common, "advantage": {"name": "expression", "expr": ZSCORE}}
    published = {
        **common,
        "advantage": {"name": "group_zscore", "eps": 1e-6, "unbiased_std": False},
    }
    batch = rollouts()
    assert_same(expression, published, batch)
    adv_e = build_objective(ObjectiveSpec.from_dict(expression)).advantages(batch)
    adv_p = build_objective(ObjectiveSpec.from_dict(published)).advantages(batch)
    torch.testing.assert_close(adv_e, adv_p, rtol=TOL, atol=TOL)
    if kl is None:  # the all-equal group (0.7 is not dyadic) gets exactly 0
        assert adv_e[8:].abs().max().item() == 0.0


def test_default_advantage_expression_is_the_zscore():
    assert ADVANTAGES.get("expression").defaults() == {"expr": ZSCORE}


# ---- (b) drift: PPO's drift is ppo_clip at 0.2 -----------------------------------------------
def test_ppo_drift_equals_ppo_clip_per_token_with_gradient_and_clip_fraction():
    batch = rollouts()
    adv = torch.tensor([[a] * batch.mask.shape[1] for a in (-2.0, -0.5, 0.5, 2.0) * 3])
    ratio = torch.exp(batch.logp - batch.old_logp).detach()
    valid = batch.mask > 0
    for side in (adv > 0, adv < 0):  # the batch covers both clip edges on both sides of A
        assert bool((valid & side & (ratio > 1.2)).any() and (valid & side & (ratio < 0.8)).any())
    out = {}
    for name, params in (("drift", {"expr": PPO_DRIFT}), ("ppo_clip", {})):
        loss, metrics = SURROGATES.get(name).fn(
            batch.logp, batch.old_logp, adv, batch.mask, **params
        )
        (grad,) = torch.autograd.grad(loss.sum(), batch.logp)
        out[name] = (loss.detach(), grad, metrics)
    (le, ge, me), (lp, gp, mp) = out["drift"], out["ppo_clip"]
    torch.testing.assert_close(le, lp, rtol=TOL, atol=TOL)
    torch.testing.assert_close(ge, gp, rtol=TOL, atol=TOL)
    for key in ("clip_fraction", "ratio_mean", "approx_kl"):
        torch.testing.assert_close(me[key], mp[key], rtol=TOL, atol=TOL)


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean"])
def test_ppo_drift_objective_equals_ppo_clip_objective(aggregation):
    common = {"group_size": 4, "advantage": "group_zscore", "aggregation": aggregation}
    assert_same(
        {**common, "surrogate": {"name": "drift", "expr": PPO_DRIFT}},
        {**common, "surrogate": {"name": "ppo_clip", "clip_low": 0.2, "clip_high": 0.2}},
        rollouts(),
    )


def test_default_drift_is_ppo_clip_02():
    assert SURROGATES.get("drift").defaults() == {"expr": PPO_DRIFT}


# ---- (c) preference: DPO and DiscoPOP written as formulas ------------------------------------
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_logsigmoid_expression_equals_dpo(beta):
    pref = {"data": "preference_pairs"}
    assert_same(
        {**pref, "preference": {"name": "expression", "expr": "-logsigmoid(rho)", "beta": beta}},
        {**pref, "preference": {"name": "sigmoid", "beta": beta}},
        pairs(),
    )


def test_discopop_formula_equals_discopop():
    batch = pairs()
    gap = batch.chosen_logp - batch.ref_chosen_logp - batch.rejected_logp + batch.ref_rejected_logp
    assert gap.abs().max().item() < 200  # |rho| < 20: exp's protection stays inactive
    pref = {"data": "preference_pairs"}
    assert_same(
        {**pref, "preference": {"name": "expression", "expr": DISCOPOP, "beta": 0.1}},
        {**pref, "preference": {"name": "discopop", "beta": 0.1, "tau": 0.05}},
        batch,
    )


def test_default_preference_expression_is_dpo():
    assert PREFERENCE_LOSSES.get("expression").defaults() == {
        "beta": 0.1,
        "expr": "-logsigmoid(rho)",
    }


# ---- the spec: validation, coherence, keys, formulas -----------------------------------------
def test_hostile_expressions_are_refused_naming_the_field():
    for field, value, needle in [
        ("surrogate", {"name": "drift", "expr": "os"}, "name 'os' is not an input of drift"),
        ("advantage", {"name": "expression", "expr": "r.__class__"}, "attribute access"),
        ("preference", {"name": "expression", "expr": "(" * 10000}, "characters long"),
        ("advantage", {"name": "group_zscore", "expr": "eval(R)"}, "function 'eval'"),  # dormant
    ]:
        d = {"group_size": 4, field: value}
        with pytest.raises(ObjectiveError) as info:
            ObjectiveSpec.from_dict(d)
        message = str(info.value)
        assert message.startswith(f"field '{field}'") and needle in message, message
        assert "parameter 'expr'" in message


def test_group_statistics_need_groups():
    with pytest.raises(ObjectiveError, match="group_size must be >= 2"):
        ObjectiveSpec.from_dict({"advantage": {"name": "expression", "expr": "R - mean_G"}})
    with pytest.raises(ObjectiveError, match="group_size must be >= 2"):
        ObjectiveSpec.from_dict({"advantage": {"name": "expression", "expr": "R*p_G"}})
    spec = ObjectiveSpec.from_dict({"advantage": {"name": "expression", "expr": "R - 0.5"}})
    assert spec.group_size == 1


def test_keys_follow_the_canonical_form_and_specs_keep_the_text():
    def spec(expr):
        return ObjectiveSpec.from_dict(
            {
                "group_size": 4,
                "advantage": "group_zscore",
                "surrogate": {"name": "drift", "expr": expr},
            }
        )

    assert spec("A*r - 0").key() == spec("r*A").key()
    assert spec(PPO_DRIFT).key() == spec("relu(A*r - A*clip(r, 0.8, 1.2))").key()
    assert spec("r*A").key() != spec("r*A*2").key()
    assert spec("A*r - 0").canonical().surrogate.get("expr") == "A*r - 0"
    # components without expressions keep their old keys: the key of GRPO is unchanged
    base = ObjectiveSpec.from_dict({"group_size": 4, "advantage": "group_zscore"})
    assert base.key() == ObjectiveSpec.from_dict(base.to_dict()).key()


def test_round_trip_through_dict_and_yaml(tmp_path):
    spec = ObjectiveSpec.from_dict(
        {
            "group_size": 4,
            "advantage": {"name": "expression", "expr": "rank_G - 0.5"},
            "surrogate": {"name": "drift", "expr": "(r - 1) - log_r"},
        }
    )
    path = tmp_path / "spec.yaml"
    path.write_text(spec.to_yaml())
    assert ObjectiveSpec.from_yaml(path) == spec


def _elementary(expr: sp.Expr) -> sp.Expr:
    expr = expr.replace(relu, lambda x: sp.Max(x, 0))
    return expr.replace(clip, lambda x, lo, hi: sp.Min(sp.Max(x, lo), hi))


def test_formula_of_the_ppo_drift_spec_equals_ppo_clip_formula():
    drift = ObjectiveSpec.from_dict(
        {"group_size": 4, "advantage": "group_zscore", "surrogate": "drift"}
    )
    ppo = ObjectiveSpec.from_dict(
        {"group_size": 4, "advantage": "group_zscore", "surrogate": "ppo_clip"}
    )
    a, b = _elementary(drift.to_sympy()), _elementary(ppo.to_sympy())
    for r in (0.5, 0.9, 1.0, 1.1, 1.7):
        for reward in (-1.0, 0.0, 2.0):
            point = {S.ratio: r, S.R: reward, S.mu_G: 0.5, S.sigma_G: 0.7}
            assert float(a.subs(point)) == pytest.approx(float(b.subs(point)), rel=1e-9)
    assert drift.latex().startswith(r"\mathcal{L} =")


def test_preference_formula_substitutes_beta():
    spec = ObjectiveSpec.from_dict(
        {"data": "preference_pairs", "preference": {"name": "expression", "beta": 0.5}}
    )
    # -log sigmoid(0.5 (1 - (-1))) = log(1 + e^-1)
    value = spec.to_sympy().subs({S.delta_w: 1.0, S.delta_l: -1.0})
    value = value.replace(sigmoid, lambda x: 1 / (1 + sp.exp(-x)))
    assert float(value) == pytest.approx(math.log1p(math.exp(-1.0)), rel=1e-9)


# ---- non-finite values: a NaN/inf loss, which the trainer reports as diverged ----------------
def test_overflowing_expression_gives_a_non_finite_loss():
    spec = {"group_size": 4, "surrogate": {"name": "drift", "expr": "((exp(r)**4)**4)**4"}}
    loss, _ = build_objective(ObjectiveSpec.from_dict(spec))(rollouts())
    assert not torch.isfinite(loss)


# ---- the command line -------------------------------------------------------------------------
def test_show_refuses_a_hostile_file_with_exit_2_and_one_line(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text(
        "group_size: 4\nsurrogate: {name: drift, expr: \"__import__('os').system('true')\"}\n"
    )
    result = CliRunner().invoke(app, ["show", str(path)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "evil.yaml" in lines[0] and "surrogate" in lines[0]


def test_show_prints_an_expression_spec(tmp_path):
    path = tmp_path / "lpo.yaml"
    path.write_text(
        f"group_size: 4\nadvantage: expression\nsurrogate: {{name: drift, expr: '{PPO_DRIFT}'}}\n"
    )
    result = CliRunner().invoke(app, ["show", str(path)])
    assert result.exit_code == 0, result.output
    assert "clip" in result.output and "\\mathcal{L} =" in result.output
