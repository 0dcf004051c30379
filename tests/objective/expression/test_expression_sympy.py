"""Sympy forms of expressions: rendering, LaTeX, and canonical keys for deduplication."""

from __future__ import annotations

import io
import time

import matplotlib
import pytest
import sympy as sp
from matplotlib import mathtext

from grape_evo.objective.expression import canonical_key, parse, to_sympy
from grape_evo.objective.symbolic import Symbols as S
from grape_evo.objective.symbolic import clip, relu, sigmoid, to_latex, where

matplotlib.use("Agg")


def test_rendering_uses_the_shared_symbols_and_plain_operators():
    r, A = S.ratio, S.A
    got = to_sympy(parse("relu((r - clip(r, 0.8, 1.2))*A)", "drift"), "drift")
    assert got == relu((r - clip(r, sp.Float(0.8), sp.Float(1.2))) * A)
    got = to_sympy(parse("log(r) + exp(log_r) + sqrt(abs(A)) + A/(r - 1)", "drift"), "drift")
    assert got == sp.log(r) + r + sp.sqrt(sp.Abs(A)) + A / (r - 1)
    got = to_sympy(parse("(R - mean_G)/(std_G + 1e-6)", "advantage"), "advantage")
    assert got == (S.R - S.mu_G) / (S.sigma_G + sp.Float(1e-6))
    got = to_sympy(parse("-logsigmoid(rho)", "preference"), "preference")
    assert got == -sp.log(sigmoid(S.beta * (S.delta_w - S.delta_l)))
    got = to_sympy(parse("where(A > 0, min(r, 2), max(r, tanh(A)))", "drift"), "drift")
    assert got == where(A > 0, sp.Min(r, 2), sp.Max(r, sp.tanh(A)))


def test_inputs_can_be_replaced():
    got = to_sympy(parse("r*A", "drift"), "drift", {"A": S.R - S.mu_G})
    assert got == S.ratio * (S.R - S.mu_G)


def _render(tex: str) -> None:
    mathtext.math_to_image(f"${tex}$", io.BytesIO(), dpi=50, format="png")


@pytest.mark.parametrize(
    ("kind", "text"),
    [
        ("drift", "where(A > 0, sqrt(abs(r - 1)), log(r)**2) + exp(-log_r) - tanh(A)"),
        ("drift", "relu(min(r, 1) - max(A, clip(r, 0.8, 1.2)))/(1 + sigmoid(A))"),
        ("advantage", "(R - min_G)/(max_G - min_G + 0.1) + rank_G*p_G - G**-1 + mean_G*std_G"),
        ("preference", "-logsigmoid(rho) + beta*(chosen_logratio - rejected_logratio)**2"),
    ],
)
def test_latex_renders_with_mathtext(kind, text):
    _render(to_latex(to_sympy(parse(text, kind), kind)))


# ---- canonical keys --------------------------------------------------------------------------
SAME = [
    ("drift", "A*r", "r*A"),
    ("drift", "exp(log_r)*A", "r*A"),
    ("drift", "relu((r - clip(r, 0.8, 1.2))*A)", "relu(A*r - A*clip(r, 4/5, 1.2))"),
    ("drift", "where(A > 0, r, 1)", "where(0 < A, r, 1)"),
    ("drift", "min(r, A)", "min(A, r)"),
    ("drift", "(r - 1)**2", "r**2 - 2*r + 1"),
    (
        "advantage",
        "(R - mean_G)/(std_G + 1e-6)",
        "R/(std_G + 0.000001) - mean_G/(1e-6 + std_G)",
    ),
    ("advantage", "(R - mean_G)/(std_G + 1e-6)", "-(mean_G - R)*(std_G + 1e-6)**-1"),
    (
        "preference",
        "-logsigmoid(rho)",
        "-logsigmoid(beta*chosen_logratio - beta*rejected_logratio)",
    ),
]
DIFFERENT = [
    ("drift", "A*r", "A + r"),
    ("drift", "relu((r - clip(r, 0.8, 1.2))*A)", "relu((r - clip(r, 0.8, 1.25))*A)"),
    ("drift", "where(A > 0, r, 1)", "where(A >= 0, r, 1)"),
    ("advantage", "(R - mean_G)/(std_G + 1e-6)", "(R - mean_G)/(std_G + 1e-5)"),
    ("preference", "-logsigmoid(rho)", "-logsigmoid(chosen_logratio - rejected_logratio)"),
]


@pytest.mark.parametrize(("kind", "a", "b"), SAME)
def test_algebraically_equal_formulas_share_a_key(kind, a, b):
    assert canonical_key(kind, a) == canonical_key(kind, b)


@pytest.mark.parametrize(("kind", "a", "b"), DIFFERENT)
def test_different_functions_get_different_keys(kind, a, b):
    assert canonical_key(kind, a) != canonical_key(kind, b)


def test_key_accepts_a_tree_or_text():
    text = "relu((r - clip(r, 0.8, 1.2))*A)"
    assert canonical_key("drift", parse(text, "drift")) == canonical_key("drift", text)


def test_expansion_blow_up_is_guarded():
    # ((r + A + log_r + 1)**4)**4)**4: degree 64 in three symbols, ~48k terms expanded
    text = "(((r + A + log_r + 1)**4)**4)**4"
    start = time.perf_counter()
    key = canonical_key("drift", text)
    assert time.perf_counter() - start < 2.0
    assert key.startswith("raw:")
    assert canonical_key("drift", text) == key
    assert not canonical_key("drift", "(r + A)**4").startswith("raw:")
