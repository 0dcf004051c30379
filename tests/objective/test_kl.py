"""Tests for the per-token KL estimators (grape_evo.objective.kl).

Expected values come from the formulas (Schulman 2020) evaluated with plain Python ``math``.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from grape_evo.objective.registry import KL_ESTIMATORS, ObjectiveError

DT = torch.float64
DS = [-1.0, 0.0, 0.5, 2.0]

# Hand values, d = logp - ref_logp:
#   k1 = d                      -> -1, 0, 0.5, 2
#   k2 = d^2 / 2                -> 0.5, 0, 0.125, 2
#   k3 = exp(-d) + d - 1        -> e - 2 = 0.718282, 0, exp(-0.5) - 0.5 = 0.106531,
#                                  exp(-2) + 1 = 1.135335
#   k3_clamped = min(k3, 10)    -> as k3 (every value here is below 10)
#   abs = |d|                   -> 1, 0, 0.5, 2
HAND = {
    "k1": [-1.0, 0.0, 0.5, 2.0],
    "k2": [0.5, 0.0, 0.125, 2.0],
    "k3": [0.718281828459045, 0.0, 0.10653065971263342, 1.1353352832366128],
    "k3_clamped": [0.718281828459045, 0.0, 0.10653065971263342, 1.1353352832366128],
    "abs": [1.0, 0.0, 0.5, 2.0],
}
FORMULA = {
    "k1": lambda d: d,
    "k2": lambda d: d * d / 2,
    "k3": lambda d: math.exp(-d) + d - 1,
    "k3_clamped": lambda d: min(math.exp(-d) + d - 1, 10.0),
    "abs": abs,
}


def _kl(name, logp, ref):
    return KL_ESTIMATORS.get(name).fn(logp, ref)


def test_contract_names_registered():
    assert {"k1", "k2", "k3", "abs"} <= set(KL_ESTIMATORS.names())


def test_unknown_estimator_rejected():
    with pytest.raises(ObjectiveError, match="k3"):
        KL_ESTIMATORS.get("k4")


def test_estimators_have_no_params():
    for name in ("k1", "k2", "k3", "k3_clamped", "abs"):
        assert KL_ESTIMATORS.get(name).defaults() == {}


@pytest.mark.parametrize("name", sorted(HAND))
def test_hand_values(name):
    # The same d realised with different absolute log-probs: only the difference matters.
    ref = torch.tensor([[-0.5, -3.0, -1.25, -4.0]], dtype=DT)
    logp = ref + torch.tensor([DS], dtype=DT)
    out = _kl(name, logp, ref)
    assert out.shape == (1, 4)
    for got, want, d in zip(out[0].tolist(), HAND[name], DS, strict=True):
        assert got == pytest.approx(want, abs=1e-12)
        assert got == pytest.approx(FORMULA[name](d), abs=1e-12)


def test_hand_table_matches_formulas():
    # Guard the literals in HAND against typos.
    for name, vals in HAND.items():
        for d, v in zip(DS, vals, strict=True):
            assert v == pytest.approx(FORMULA[name](d), abs=1e-12)


@pytest.mark.parametrize("name", sorted(HAND))
def test_shape_preserved_2d(name):
    logp = torch.tensor([[-1.0, -2.0, -0.1], [-0.3, -0.7, -5.0]], dtype=DT)
    ref = torch.tensor([[-1.5, -1.0, -0.1], [-0.2, -2.7, -4.0]], dtype=DT)
    out = _kl(name, logp, ref)
    assert out.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            d = logp[i, j].item() - ref[i, j].item()
            assert out[i, j].item() == pytest.approx(FORMULA[name](d), abs=1e-12)


def test_k3_gradient():
    # d/dlogp [exp(-d) + d - 1] = 1 - exp(-d); at d = 0.5: 1 - exp(-0.5) = 0.393469
    logp = torch.tensor([0.5], dtype=DT, requires_grad=True)
    out = _kl("k3", logp, torch.zeros(1, dtype=DT))
    (g,) = torch.autograd.grad(out.sum(), logp)
    assert g.item() == pytest.approx(1 - math.exp(-0.5))


# d = logp - ref_logp; k3 = exp(-d) + d - 1, its gradient in logp 1 - exp(-d):
#   d = 1:    k3 = exp(-1) = 0.3678794, gradient 1 - exp(-1) = 0.6321206 (not clamped)
#   d = -3:   k3 = exp(3) - 4 = 16.0855369 -> clamped to 10, gradient 0
#   d = 15:   k3 = exp(-15) + 14 = 14.0000003 -> 10, gradient 0
#   d = -100: k3 = exp(100) - 101 (inf in float32) -> 10, gradient 0 (not NaN)
CLAMP_DS = [1.0, -3.0, 15.0, -100.0]


def test_k3_clamped_hand_values_and_gradient():
    for dtype in (torch.float32, DT):
        ref = torch.tensor([-2.0, -0.5, -20.0, -1.0], dtype=dtype)
        logp = (ref + torch.tensor(CLAMP_DS, dtype=dtype)).requires_grad_(True)
        out = _kl("k3_clamped", logp, ref)
        (g,) = torch.autograd.grad(out.sum(), logp)
        assert out.tolist() == pytest.approx([0.3678794, 10.0, 10.0, 10.0], abs=1e-5)
        assert g.tolist() == pytest.approx([0.6321206, 0.0, 0.0, 0.0], abs=1e-5)


def test_k3_is_unclamped_as_in_trl():
    # the same d = -3 and 15 without the clamp: 16.0855369 and 14.0000003
    ref = torch.tensor([-0.5, -20.0], dtype=DT)
    out = _kl("k3", ref + torch.tensor([-3.0, 15.0], dtype=DT), ref)
    assert out.tolist() == pytest.approx([16.0855369, 14.0000003], abs=1e-6)


def test_k3_small_d_accurate():
    # For tiny d, exp(-d) + d - 1 ~ d^2 / 2 - d^3 / 6: no catastrophic cancellation to 0.
    d = 1e-6
    out = _kl("k3", torch.tensor([d], dtype=DT), torch.zeros(1, dtype=DT)).item()
    assert out == pytest.approx(d * d / 2 - d**3 / 6, rel=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(-20, 0), st.floats(-20, 0)),
        min_size=1,
        max_size=12,
    )
)
def test_nonnegative_estimators(pairs):
    logp = torch.tensor([p for p, _ in pairs], dtype=DT)
    ref = torch.tensor([q for _, q in pairs], dtype=DT)
    for name in ("k2", "k3", "k3_clamped", "abs"):
        out = _kl(name, logp, ref)
        assert torch.isfinite(out).all()
        assert (out >= 0).all(), name
    # k1 is the signed difference
    k1 = _kl("k1", logp, ref)
    torch.testing.assert_close(k1, logp - ref, rtol=0, atol=0)


def _exact_kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))


CATEGORICALS = [
    ([0.2, 0.5, 0.3], [0.4, 0.4, 0.2]),
    ([0.7, 0.2, 0.1], [0.1, 0.3, 0.6]),
    ([1 / 3, 1 / 3, 1 / 3], [0.5, 0.25, 0.25]),
    ([0.9, 0.05, 0.05], [0.9, 0.05, 0.05]),
]


@pytest.mark.parametrize(("p", "q"), CATEGORICALS)
@pytest.mark.parametrize("name", ["k1", "k3"])
def test_unbiased_for_kl_p_q(name, p, q):
    # y ~ p = pi_theta, logp = log p(y), ref_logp = log q(y).
    # E_p[k1] = sum p log(p/q) = KL(p||q);  E_p[k3] = sum p (q/p - 1 + log(p/q)) = KL(p||q).
    logp = torch.tensor([math.log(x) for x in p], dtype=DT)
    ref = torch.tensor([math.log(x) for x in q], dtype=DT)
    per_outcome = _kl(name, logp, ref).tolist()
    expectation = sum(pi * v for pi, v in zip(p, per_outcome, strict=True))
    assert expectation == pytest.approx(_exact_kl(p, q), abs=1e-6)


def test_k2_is_biased():
    # E_p[d^2/2] differs from KL(p||q) in general (here by more than 1e-3).
    p, q = CATEGORICALS[1]
    logp = torch.tensor([math.log(x) for x in p], dtype=DT)
    ref = torch.tensor([math.log(x) for x in q], dtype=DT)
    expectation = sum(pi * v for pi, v in zip(p, _kl("k2", logp, ref).tolist(), strict=True))
    assert abs(expectation - _exact_kl(p, q)) > 1e-3
