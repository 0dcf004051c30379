"""Pairwise preference losses: hand values from the papers' / TRL's formulas.

Notation (as in the papers): a = log pi(y_w) - log pi_ref(y_w), b = log pi(y_l) - log pi_ref(y_l)
(token sums), h = a - b. Expected values below are computed with plain ``math`` from the
published formulas, never from the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from grape_evo.objective import PREFERENCE_LOSSES, PreferenceBatch

# Three pairs (policy chosen, policy rejected, ref chosen, ref rejected, |y_w|, |y_l|):
#   pair 0: a = -3 - (-4) = 1.0,   b = -5 - (-4.5) = -0.5,  h = 1.5
#   pair 1: a = -10 - (-9) = -1.0, b = -8 - (-9) = 1.0,     h = -2.0
#   pair 2: a = 0, b = 0, h = 0 (policy == reference)
_PAIRS = [
    (-3.0, -5.0, -4.0, -4.5, 3.0, 5.0),
    (-10.0, -8.0, -9.0, -9.0, 4.0, 2.0),
    (-2.0, -7.0, -2.0, -7.0, 1.0, 6.0),
]


def _batch(rows=_PAIRS, requires_grad: bool = False) -> PreferenceBatch:
    cols = list(zip(*rows, strict=True))
    t = [torch.tensor(c, dtype=torch.float64) for c in cols]
    if requires_grad:
        for i in range(4):
            t[i] = t[i].clone().requires_grad_(True)
    return PreferenceBatch(*t)


def _logsig(x: float) -> float:
    # log sigmoid(x) = -log(1 + exp(-x))
    return -math.log1p(math.exp(-x))


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _ratios(row):
    cw, cl, rw, rl, lw, ll = row
    return cw - rw, cl - rl, lw, ll


# ---- reference formulas (papers / TRL dpo_loss) ---------------------------------------------


def ref_sigmoid(row, beta=0.1, label_smoothing=0.0):
    # DPO (Rafailov 2023), cDPO smoothing: -(1-e) log s(beta h) - e log s(-beta h)
    a, b, _, _ = _ratios(row)
    z = beta * (a - b)
    return -(1 - label_smoothing) * _logsig(z) - label_smoothing * _logsig(-z)


def ref_sigmoid_norm(row, beta=1.0, label_smoothing=0.0):
    a, b, lw, ll = _ratios(row)
    z = beta * (a / lw - b / ll)
    return -(1 - label_smoothing) * _logsig(z) - label_smoothing * _logsig(-z)


def ref_hinge(row, beta=0.1):
    # SLiC / TRL hinge: relu(1 - beta h)
    a, b, _, _ = _ratios(row)
    return max(0.0, 1.0 - beta * (a - b))


def ref_ipo(row, beta=0.1, length_normalize=False):
    # IPO (Azar 2023): (h - 1/(2 beta))^2 ; TRL divides each log-prob by its length
    a, b, lw, ll = _ratios(row)
    if length_normalize:
        a, b = a / lw, b / ll
    return (a - b - 1.0 / (2.0 * beta)) ** 2


def ref_robust(row, beta=0.1, label_smoothing=0.1):
    # Chowdhury 2024 / TRL robust
    a, b, _, _ = _ratios(row)
    z = beta * (a - b)
    e = label_smoothing
    return (-(1 - e) * _logsig(z) + e * _logsig(-z)) / (1 - 2 * e)


def ref_sppo_hard(row, beta=0.1):
    a, b, _, _ = _ratios(row)
    return (a - 1 / (2 * beta)) ** 2 + (b + 1 / (2 * beta)) ** 2


def ref_nca_pair(row, beta=0.1):
    a, b, _, _ = _ratios(row)
    return -_logsig(beta * a) - 0.5 * _logsig(-beta * a) - 0.5 * _logsig(-beta * b)


def ref_apo_zero(row, beta=0.1):
    a, b, _, _ = _ratios(row)
    return (1 - _sig(beta * a)) + _sig(beta * b)


def ref_apo_down(row, beta=0.1):
    a, b, _, _ = _ratios(row)
    return _sig(beta * a) + (1 - _sig(beta * (a - b)))


def ref_discopop(row, beta=0.1, tau=0.05):
    # LRML (Chan 2024, TRL discopop): (1 - m) * (-log s(z)) + m * exp(-z), m = s(z / tau)
    a, b, _, _ = _ratios(row)
    z = beta * (a - b)
    m = _sig(z / tau)
    return -_logsig(z) * (1 - m) + math.exp(-z) * m


_IPO_EXPR = "(chosen_logratio - rejected_logratio - 1/(2*beta))**2"


def ref_expression(row, beta=0.1, expr="-logsigmoid(rho)"):
    # the written formula, with rho = beta (a - b)
    a, b, _, _ = _ratios(row)
    if expr == "-logsigmoid(rho)":
        return -_logsig(beta * (a - b))
    assert expr == _IPO_EXPR
    return (a - b - 1 / (2 * beta)) ** 2


def ref_simpo(row, beta=2.0, gamma=0.5, label_smoothing=0.0):
    # SimPO (Meng 2024): -log s(beta/|y_w| log pi(y_w) - beta/|y_l| log pi(y_l) - gamma)
    cw, cl, _, _, lw, ll = row
    z = beta * cw / lw - beta * cl / ll - gamma
    return -(1 - label_smoothing) * _logsig(z) - label_smoothing * _logsig(-z)


CASES = [
    ("sigmoid", {}, ref_sigmoid),
    ("sigmoid", {"beta": 0.5}, ref_sigmoid),
    ("sigmoid", {"beta": 0.1, "label_smoothing": 0.2}, ref_sigmoid),
    ("sigmoid_norm", {}, ref_sigmoid_norm),
    ("sigmoid_norm", {"beta": 2.0, "label_smoothing": 0.1}, ref_sigmoid_norm),
    ("hinge", {}, ref_hinge),
    ("hinge", {"beta": 1.0}, ref_hinge),
    ("ipo", {}, ref_ipo),
    ("ipo", {"beta": 0.5, "length_normalize": False}, ref_ipo),
    ("ipo", {"beta": 0.5, "length_normalize": True}, ref_ipo),
    ("robust", {}, ref_robust),
    ("robust", {"beta": 0.3, "label_smoothing": 0.25}, ref_robust),
    ("sppo_hard", {}, ref_sppo_hard),
    ("nca_pair", {"beta": 0.7}, ref_nca_pair),
    ("nca_pair", {}, ref_nca_pair),
    ("apo_zero", {}, ref_apo_zero),
    ("apo_zero", {"beta": 1.0}, ref_apo_zero),
    ("apo_down", {}, ref_apo_down),
    ("apo_down", {"beta": 1.0}, ref_apo_down),
    ("discopop", {}, ref_discopop),
    ("discopop", {"beta": 0.05, "tau": 0.05}, ref_discopop),
    ("discopop", {"beta": 1.0, "tau": 1.0}, ref_discopop),
    ("simpo", {}, ref_simpo),
    ("expression", {}, ref_expression),
    ("expression", {"beta": 0.7, "expr": _IPO_EXPR}, ref_expression),
    ("simpo", {"beta": 2.0, "gamma": 1.0, "label_smoothing": 0.1}, ref_simpo),
]


def test_every_registered_loss_has_a_hand_case():
    assert {name for name, _, _ in CASES} == set(PREFERENCE_LOSSES.names())


@pytest.mark.parametrize(("name", "params", "ref"), CASES)
def test_matches_published_formula(name, params, ref):
    out = PREFERENCE_LOSSES.get(name).fn(_batch(), **params)
    assert out.shape == (len(_PAIRS),)
    expected = [ref(row, **params) for row in _PAIRS]
    assert out.tolist() == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_literal_hand_values():
    """A few values worked out on paper (4-6 significant digits)."""
    b = _batch()
    # DPO, beta 0.1, pair 0: h = 1.5 -> -log s(0.15) = log(1 + e^-0.15) = log(1.860708) = 0.620957
    dpo = PREFERENCE_LOSSES.get("sigmoid").fn(b, beta=0.1)
    assert dpo[0].item() == pytest.approx(0.620957, abs=1e-6)
    # pair 1: h = -2 -> log(1 + e^0.2) = log(2.221403) = 0.798139
    assert dpo[1].item() == pytest.approx(0.798139, abs=1e-6)
    # hinge beta 0.1: pair 0: 1 - 0.15 = 0.85; pair 1: 1 + 0.2 = 1.2; pair 2: 1
    hinge = PREFERENCE_LOSSES.get("hinge").fn(b, beta=0.1)
    assert hinge.tolist() == pytest.approx([0.85, 1.2, 1.0])
    # sppo_hard beta 0.1: pair 0: (1 - 5)^2 + (-0.5 + 5)^2 = 16 + 20.25 = 36.25
    #                     pair 1: (-1 - 5)^2 + (1 + 5)^2 = 72 ; pair 2: 25 + 25 = 50
    sppo = PREFERENCE_LOSSES.get("sppo_hard").fn(b, beta=0.1)
    assert sppo.tolist() == pytest.approx([36.25, 72.0, 50.0])
    # ipo beta 0.5: target 1; pair 0: (1.5 - 1)^2 = 0.25; pair 1: (-2 - 1)^2 = 9; pair 2: 1
    ipo = PREFERENCE_LOSSES.get("ipo").fn(b, beta=0.5)
    assert ipo.tolist() == pytest.approx([0.25, 9.0, 1.0])
    # ipo length-normalised beta 0.5: pair 0: a/3 - b/5 = 1/3 + 0.1 = 0.43333 -> (0.43333-1)^2
    #   = 0.321111; pair 1: -1/4 - 1/2 = -0.75 -> 3.0625; pair 2: 1
    ipo_n = PREFERENCE_LOSSES.get("ipo").fn(b, beta=0.5, length_normalize=True)
    assert ipo_n.tolist() == pytest.approx([0.3211111, 3.0625, 1.0], rel=1e-6)
    # simpo beta 2, gamma 0.5, pair 0: 2*(-3/3) - 2*(-5/5) - 0.5 = -0.5 -> log(1 + e^0.5)
    #   = log(2.648721) = 0.974077
    simpo = PREFERENCE_LOSSES.get("simpo").fn(b, beta=2.0, gamma=0.5)
    assert simpo[0].item() == pytest.approx(0.974077, abs=1e-6)


def test_dpo_at_reference_is_log2():
    # policy log-ratios equal to reference log-ratios: h = 0 -> -log s(0) = log 2
    rows = [(-1.0, -2.0, -3.0, -4.0, 2.0, 3.0), (-7.0, -1.0, -6.0, 0.0, 5.0, 1.0)]
    for beta in (0.1, 1.0, 5.0):
        out = PREFERENCE_LOSSES.get("sigmoid").fn(_batch(rows), beta=beta)
        assert out.tolist() == pytest.approx([math.log(2.0)] * 2, rel=1e-12)


def test_ipo_zero_at_target_gap_and_positive_elsewhere():
    beta = 0.25  # target h* = 1 / (2 beta) = 2
    # pair: a = 1.5, b = -0.5 -> h = 2
    at_target = [(-1.0, -3.0, -2.5, -2.5, 4.0, 4.0)]
    out = PREFERENCE_LOSSES.get("ipo").fn(_batch(at_target), beta=beta)
    assert out.item() == pytest.approx(0.0, abs=1e-12)
    for h in (-3.0, 0.0, 1.0, 1.9, 2.1, 5.0):
        row = [(-1.0, -1.0 - h, -1.0, -1.0, 4.0, 4.0)]  # a = 0, b = -h
        val = PREFERENCE_LOSSES.get("ipo").fn(_batch(row), beta=beta).item()
        assert val > 0.0
        assert val == pytest.approx((h - 2.0) ** 2)


def test_simpo_ignores_reference():
    b1 = _batch()
    rows2 = [(cw, cl, rw + 17.0, rl - 3.0, lw, ll) for cw, cl, rw, rl, lw, ll in _PAIRS]
    b2 = _batch(rows2)
    f = PREFERENCE_LOSSES.get("simpo").fn
    assert torch.equal(f(b1), f(b2))


def test_dpo_gradient_wrt_chosen():
    beta = 0.3
    b = _batch(requires_grad=True)
    PREFERENCE_LOSSES.get("sigmoid").fn(b, beta=beta).sum().backward()
    # d/dc [-log s(beta h)] = -beta * s(-beta h); d/dr = +beta * s(-beta h)
    hs = [1.5, -2.0, 0.0]
    expected = [-beta * _sig(-beta * h) for h in hs]
    assert b.chosen_logp.grad.tolist() == pytest.approx(expected, rel=1e-9)
    assert b.rejected_logp.grad.tolist() == pytest.approx([-g for g in expected], rel=1e-9)


@pytest.mark.parametrize("name", PREFERENCE_LOSSES.names())
def test_reference_gets_no_gradient(name):
    b = _batch(requires_grad=True)
    out = PREFERENCE_LOSSES.get(name).fn(b)
    out.sum().backward()
    for ref in (b.ref_chosen_logp, b.ref_rejected_logp):
        assert ref.grad is None or torch.count_nonzero(ref.grad) == 0
    assert b.chosen_logp.grad is not None and torch.isfinite(b.chosen_logp.grad).all()


_logp = st.floats(-50.0, 0.0, allow_nan=False)
_len = st.integers(1, 20)
_row = st.tuples(_logp, _logp, _logp, _logp, _len, _len)


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(_row, min_size=1, max_size=4))
def test_all_losses_finite(rows):
    rows = [(*r[:4], float(r[4]), float(r[5])) for r in rows]
    for component in PREFERENCE_LOSSES:
        b = _batch(rows, requires_grad=True)
        out = component.fn(b)
        assert out.shape == (len(rows),)
        assert torch.isfinite(out).all(), component.name
        out.sum().backward()
        assert torch.isfinite(b.chosen_logp.grad).all(), component.name
        assert torch.isfinite(b.rejected_logp.grad).all(), component.name
