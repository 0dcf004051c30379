"""spec.to_sympy() / spec.latex(): formula content, numeric values and mathtext rendering."""

from __future__ import annotations

import io
import math

import matplotlib
import pytest
import sympy as sp
from matplotlib import mathtext

from grape_evo.objective import (
    ADVANTAGES,
    AGGREGATIONS,
    KL_ESTIMATORS,
    PREFERENCE_LOSSES,
    SURROGATES,
    ObjectiveSpec,
    presets,
)
from grape_evo.objective.symbolic import Symbols as S
from grape_evo.objective.symbolic import clip, mean_G, sigmoid, whiten_B

matplotlib.use("Agg")


def _elementary(expr: sp.Expr) -> sp.Expr:
    """Rewrite the project's named functions into elementary sympy (by their definitions)."""
    expr = expr.replace(clip, lambda x, lo, hi: sp.Min(sp.Max(x, lo), hi))
    return expr.replace(sigmoid, lambda x: 1 / (1 + sp.exp(-x)))


# Parameter values enter the formulas as sympy Floats with 4 significant digits
# (``symbolic.num``), so they carry a relative error of a few 1e-6: compare at 1e-4.
_REL = 1e-4


def _applied(expr: sp.Expr, func) -> list[sp.Expr]:
    return [e for e in sp.preorder_traversal(expr) if isinstance(e, func)]


def test_ppo_clip_formula_has_min_and_clip_bounds():
    for spec in (
        ObjectiveSpec.from_dict({"surrogate": "ppo_clip"}),
        presets.get("ppo"),
        presets.get("grpo"),
    ):
        expr = spec.to_sympy()
        assert _applied(expr, sp.Min), spec.name
        clips = _applied(expr, clip)
        assert clips, spec.name
        x, lo, hi = clips[0].args
        assert x == S.ratio
        assert float(lo) == pytest.approx(0.8, rel=_REL)
        assert float(hi) == pytest.approx(1.2, rel=_REL)


def test_dapo_clip_higher_bound():
    (c,) = set(_applied(presets.get("dapo").to_sympy(), clip))
    assert float(c.args[1]) == pytest.approx(0.8, rel=_REL)
    assert float(c.args[2]) == pytest.approx(1.28, rel=_REL)


def test_grpo_formula_has_group_zscore_and_k3():
    expr = presets.get("grpo").to_sympy()
    assert S.mu_G in expr.free_symbols
    assert S.sigma_G in expr.free_symbols
    assert S.R in expr.free_symbols
    assert sp.exp(-S.d) in set(_applied(expr, sp.exp))


def test_dpo_formula_is_log_sigmoid_of_beta_gap():
    expr = presets.get("dpo").to_sympy()
    logs = [e for e in _applied(expr, sp.log) if isinstance(e.args[0], sigmoid)]
    assert logs, expr
    z = logs[0].args[0].args[0]
    # z must be 0.1 * (Delta_w - Delta_l): linear, coefficients +0.1 and -0.1, no constant
    assert z.free_symbols == {S.delta_w, S.delta_l}
    assert float(z.diff(S.delta_w)) == pytest.approx(0.1, rel=_REL)
    assert float(z.diff(S.delta_l)) == pytest.approx(-0.1, rel=_REL)
    assert float(z.subs({S.delta_w: 0, S.delta_l: 0})) == pytest.approx(0.0, abs=1e-12)


def test_dpo_numeric_substitution():
    expr = presets.get("dpo").to_sympy()
    value = float(expr.subs({S.delta_w: 1, S.delta_l: 0.5}).evalf())
    # beta (Delta_w - Delta_l) = 0.1 * 0.5 = 0.05; -log sigmoid(0.05) = log(1 + e^-0.05)
    # = log(1 + 0.951229) = log(1.951229) = 0.668460
    assert value == pytest.approx(0.668460, abs=1e-6)
    assert value == pytest.approx(math.log1p(math.exp(-0.05)), rel=_REL)


# GRPO per token at r = 1: the clipped and unclipped branches agree, so the loss is
# -A + 0.04 * k3. With R = 1, mu_G = 0.5, sigma_G = 0.5, d = 0.3:
#   A  = 0.5 / (0.5 + 1e-6) = 0.999998
#   k3 = e^-0.3 + 0.3 - 1 = 0.740818 + 0.3 - 1 = 0.040818
#   loss = -0.999998 + 0.04 * 0.040818 = -0.998365
_GRPO_POINT = {S.R: 1, S.mu_G: 0.5, S.sigma_G: 0.5, S.d: 0.3}
_GRPO_EXPECTED = -0.5 / (0.5 + 1e-6) + 0.04 * (math.exp(-0.3) + 0.3 - 1.0)


def test_grpo_per_token_value_at_ratio_one():
    expr = presets.get("grpo").to_sympy()
    value = float(expr.subs(S.ratio, 1).subs(_GRPO_POINT).evalf())
    assert value == pytest.approx(-0.998365, abs=1e-5)
    assert value == pytest.approx(_GRPO_EXPECTED, rel=_REL)


def test_grpo_per_token_value_with_clip_written_out():
    # the same check with clip(x, lo, hi) rewritten as min(max(x, lo), hi) first
    expr = _elementary(presets.get("grpo").to_sympy())
    value = float(expr.subs(S.ratio, 1).subs(_GRPO_POINT).evalf())
    assert value == pytest.approx(_GRPO_EXPECTED, rel=_REL)
    # off the trust region (r = 1.5, A > 0) the clipped branch 1.2 * A is the min
    value = float(expr.subs(S.ratio, 1.5).subs(_GRPO_POINT).evalf())
    expected = -1.2 * 0.5 / (0.5 + 1e-6) + 0.04 * (math.exp(-0.3) + 0.3 - 1.0)
    assert value == pytest.approx(expected, rel=_REL)


@pytest.mark.parametrize("name", presets.names())
def test_to_sympy_returns_expressions(name):
    spec = presets.get(name)
    assert isinstance(spec.to_sympy(), sp.Expr)
    assert isinstance(spec.to_sympy(aggregate=True), sp.Expr)


def test_reinforce_pp_baseline_of_return_centres_the_shaped_return():
    # verl: the group mean is of R - coef * sum_s k(d_s), so the centred return is
    # (R - 0.05 sum d) - mean_G(R - 0.05 sum d); baseline_of reward centres R only (mu_G).
    kl = {"estimator": "k1", "coef": 0.05, "placement": "reward"}
    ret = ObjectiveSpec.from_dict(
        {"group_size": 4, "advantage": {"name": "reinforce_pp", "baseline_of": "return"}, "kl": kl}
    )
    rew = ObjectiveSpec.from_dict({"group_size": 4, "advantage": "reinforce_pp", "kl": kl})
    shaped = S.R - sp.Float(0.05) * sp.Sum(S.d_s, (S.s, 1, S.len_i))
    assert ret.to_sympy() == -S.logp * whiten_B(shaped - mean_G(shaped))
    assert rew.to_sympy() == -S.logp * whiten_B(shaped - S.mu_G)


def _render(tex: str) -> None:
    mathtext.math_to_image(f"${tex}$", io.BytesIO(), dpi=72, format="png")


@pytest.mark.parametrize("name", presets.names())
def test_latex_renders_with_mathtext(name):
    spec = presets.get(name)
    tex = spec.latex()
    assert tex.startswith(r"\mathcal{L} =")
    _render(tex)
    _render(spec.latex(aggregate=False))


def _component_specs():
    """One spec per registered component, to cover every symbolic construct."""
    out = []
    for a in ADVANTAGES.names():
        out.append((f"advantage:{a}", {"group_size": 4, "advantage": a}))
    for s in SURROGATES.names():
        out.append((f"surrogate:{s}", {"surrogate": s}))
    out.append(
        ("surrogate:ppo_clip+dual_clip", {"surrogate": {"name": "ppo_clip", "dual_clip": 3}})
    )
    for name, param, value in [
        ("batch_zscore", "std_of", "centred"),
        ("reinforce_pp", "baseline_of", "return"),
        ("best_of_group", "scale", "sft"),
    ]:
        out.append(
            (
                f"advantage:{name}+{param}={value}",
                {
                    "group_size": 4,
                    "advantage": {"name": name, param: value},
                    "kl": {"estimator": "k1", "coef": 0.1, "placement": "reward"},
                },
            )
        )
    for k in KL_ESTIMATORS.names():
        out.append((f"kl:{k}", {"kl": {"estimator": k, "coef": 0.1}}))
        out.append((f"kl-reward:{k}", {"kl": {"estimator": k, "coef": 0.1, "placement": "reward"}}))
    for g in AGGREGATIONS.names():
        out.append((f"aggregation:{g}", {"aggregation": g, "entropy_coef": 0.01}))
    for p in PREFERENCE_LOSSES.names():
        out.append((f"preference:{p}", {"data": "preference_pairs", "preference": p}))
    return out


_COMPONENT_SPECS = _component_specs()


@pytest.mark.parametrize(
    "d", [d for _, d in _COMPONENT_SPECS], ids=[k for k, _ in _COMPONENT_SPECS]
)
def test_every_component_latex_renders(d):
    spec = ObjectiveSpec.from_dict(d)
    assert spec.latex().startswith(r"\mathcal{L} =")
    _render(spec.latex())
    _render(spec.latex(aggregate=False))
