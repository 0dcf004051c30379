"""Tests for loss aggregation (grape_evo.objective.aggregation).

Expected values are computed by hand (comments) or with plain Python loops over lists.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from grape_evo.objective.registry import AGGREGATIONS, ObjectiveError

DT = torch.float64
NAMES = ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm",
         "token_sum"]  # fmt: skip

LOSS = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
MASK = [[1, 1, 0], [1, 1, 1]]

# Hand values on LOSS / MASK:
#   token_mean               = (1 + 2 + 4 + 5 + 6) / 5              = 3.6
#   seq_mean_token_mean      = ((1 + 2)/2 + (4 + 5 + 6)/3) / 2       = (1.5 + 5) / 2 = 3.25
#   seq_mean_token_sum       = (3 + 15) / 2                          = 9
#   seq_mean_token_sum_norm  = (3 + 15) / (2 * 3)  (max_len 0 -> T=3) = 3
#                            = (3 + 15) / (2 * 10) (max_len 10)       = 0.9
#   token_sum                = 3 + 15                                = 18
HAND = [
    ("token_mean", {}, 3.6),
    ("seq_mean_token_mean", {}, 3.25),
    ("seq_mean_token_sum", {}, 9.0),
    ("seq_mean_token_sum_norm", {}, 3.0),
    ("seq_mean_token_sum_norm", {"max_len": 0}, 3.0),
    ("seq_mean_token_sum_norm", {"max_len": 10}, 0.9),
    ("token_sum", {}, 18.0),
]


def _agg(name, loss, mask, **params):
    return AGGREGATIONS.get(name).fn(loss, mask, **params)


def test_contract_names_registered():
    assert set(NAMES) <= set(AGGREGATIONS.names())


def test_unknown_aggregation_rejected():
    with pytest.raises(ObjectiveError, match="token_mean"):
        AGGREGATIONS.get("median")


def test_max_len_validation():
    comp = AGGREGATIONS.get("seq_mean_token_sum_norm")
    assert comp.defaults() == {"max_len": 0}
    assert comp.validate_params({"max_len": 512}) == {"max_len": 512}
    with pytest.raises(ObjectiveError, match="max_len"):
        comp.validate_params({"max_len": -1})
    with pytest.raises(ObjectiveError, match="max_len"):
        comp.validate_params({"max_len": 2.5})
    with pytest.raises(ObjectiveError, match="token_mean"):
        AGGREGATIONS.get("token_mean").validate_params({"max_len": 3})


@pytest.mark.parametrize("mask_dtype", [DT, torch.float32, torch.bool, torch.long])
@pytest.mark.parametrize(("name", "params", "expected"), HAND)
def test_hand_values(name, params, expected, mask_dtype):
    loss = torch.tensor(LOSS, dtype=DT)
    mask = torch.tensor(MASK).to(mask_dtype)
    out = _agg(name, loss, mask, **params)
    assert out.dim() == 0
    assert out.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("name", "params", "expected"), HAND)
def test_fully_masked_row_ignored(name, params, expected):
    # A third, fully masked row: not counted in B, contributes nothing (token modes unchanged
    # too). Its loss values are large so any leak would show.
    loss = torch.tensor([*LOSS, [100.0, 200.0, 300.0]], dtype=DT)
    mask = torch.tensor([*MASK, [0, 0, 0]], dtype=DT)
    assert _agg(name, loss, mask, **params).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("name", "params", "expected"), HAND)
def test_fully_masked_row_in_the_middle(name, params, expected):
    loss = torch.tensor([LOSS[0], [-9.0, 9.0, 1e3], LOSS[1]], dtype=DT)
    mask = torch.tensor([MASK[0], [0, 0, 0], MASK[1]], dtype=DT)
    assert _agg(name, loss, mask, **params).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_all_masked_batch_is_zero(name):
    loss = torch.tensor(LOSS, dtype=DT)
    mask = torch.zeros(2, 3, dtype=DT)
    out = _agg(name, loss, mask)
    assert math.isfinite(out.item())
    assert out.item() == 0.0


@pytest.mark.parametrize("name", NAMES)
def test_all_masked_batch_has_zero_finite_gradient(name):
    loss = torch.tensor(LOSS, dtype=DT, requires_grad=True)
    out = _agg(name, loss, torch.zeros(2, 3, dtype=DT))
    (g,) = torch.autograd.grad(out, loss)
    assert torch.isfinite(g).all()
    assert (g == 0).all()


# Gradients d agg / d L_{i,t} on LOSS / MASK, by hand:
#   token_mean:              1/5 on every valid token
#   seq_mean_token_mean:     1/(B |o_i|): row 0 -> 1/4, row 1 -> 1/6
#   seq_mean_token_sum:      1/B = 1/2
#   seq_mean_token_sum_norm: 1/(B T) = 1/6
#   token_sum:               1
GRADS = {
    "token_mean": [[0.2, 0.2, 0.0], [0.2, 0.2, 0.2]],
    "seq_mean_token_mean": [[0.25, 0.25, 0.0], [1 / 6, 1 / 6, 1 / 6]],
    "seq_mean_token_sum": [[0.5, 0.5, 0.0], [0.5, 0.5, 0.5]],
    "seq_mean_token_sum_norm": [[1 / 6, 1 / 6, 0.0], [1 / 6, 1 / 6, 1 / 6]],
    "token_sum": [[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]],
}


@pytest.mark.parametrize("name", NAMES)
def test_token_weights(name):
    loss = torch.tensor(LOSS, dtype=DT, requires_grad=True)
    out = _agg(name, loss, torch.tensor(MASK, dtype=DT))
    (g,) = torch.autograd.grad(out, loss)
    for i in range(2):
        for j in range(3):
            assert g[i, j].item() == pytest.approx(GRADS[name][i][j], rel=1e-12)


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------
@st.composite
def _loss_and_mask(draw):
    b = draw(st.integers(1, 4))
    t = draw(st.integers(1, 6))
    n = b * t
    vals = draw(st.lists(st.floats(-100, 100), min_size=n, max_size=n))
    other = draw(st.lists(st.floats(-1e6, 1e6), min_size=n, max_size=n))
    mask = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    rows = [[vals[i * t + j] for j in range(t)] for i in range(b)]
    other_rows = [[other[i * t + j] for j in range(t)] for i in range(b)]
    mask_rows = [[1 if mask[i * t + j] else 0 for j in range(t)] for i in range(b)]
    return rows, other_rows, mask_rows


PARAMS = [(n, {}) for n in NAMES] + [("seq_mean_token_sum_norm", {"max_len": 7})]


@pytest.mark.parametrize(("name", "params"), PARAMS)
@settings(max_examples=40, deadline=None)
@given(data=_loss_and_mask())
def test_masked_entries_have_no_effect(name, params, data):
    rows, other_rows, mask_rows = data
    mixed = [
        [rows[i][j] if mask_rows[i][j] else other_rows[i][j] for j in range(len(rows[0]))]
        for i in range(len(rows))
    ]
    mask = torch.tensor(mask_rows, dtype=DT)
    a = _agg(name, torch.tensor(rows, dtype=DT), mask, **params)
    b = _agg(name, torch.tensor(mixed, dtype=DT), mask, **params)
    assert math.isfinite(a.item())
    assert a.item() == pytest.approx(b.item(), rel=1e-9, abs=1e-9)


def _reference(name: str, rows, mask_rows, max_len: int = 0) -> float:
    """Plain-Python aggregation straight from the formulas."""
    t = len(rows[0])
    sums, counts = [], []
    for r, m in zip(rows, mask_rows, strict=True):
        sums.append(sum(x for x, k in zip(r, m, strict=True) if k))
        counts.append(sum(m))
    total, n_tok = sum(sums), sum(counts)
    valid = [i for i, c in enumerate(counts) if c > 0]
    if n_tok == 0:
        return 0.0
    if name == "token_mean":
        return total / n_tok
    if name == "token_sum":
        return total
    if name == "seq_mean_token_mean":
        return sum(sums[i] / counts[i] for i in valid) / len(valid)
    if name == "seq_mean_token_sum":
        return sum(sums[i] for i in valid) / len(valid)
    if name == "seq_mean_token_sum_norm":
        return sum(sums[i] for i in valid) / (len(valid) * (max_len if max_len > 0 else t))
    raise AssertionError(name)


@pytest.mark.parametrize(("name", "params"), PARAMS)
@settings(max_examples=40, deadline=None)
@given(data=_loss_and_mask())
def test_matches_plain_python_formula(name, params, data):
    rows, _, mask_rows = data
    out = _agg(name, torch.tensor(rows, dtype=DT), torch.tensor(mask_rows, dtype=DT), **params)
    want = _reference(name, rows, mask_rows, params.get("max_len", 0))
    assert out.item() == pytest.approx(want, rel=1e-9, abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(data=_loss_and_mask())
def test_token_mean_identity(data):
    # token_mean == (sum over valid tokens) / (number of valid tokens)
    rows, _, mask_rows = data
    n = sum(sum(m) for m in mask_rows)
    s = sum(x for r, m in zip(rows, mask_rows, strict=True) for x, k in zip(r, m, strict=True) if k)
    out = _agg("token_mean", torch.tensor(rows, dtype=DT), torch.tensor(mask_rows, dtype=DT))
    assert out.item() == pytest.approx(s / n if n else 0.0, rel=1e-9, abs=1e-9)
    # and token_sum / count
    tsum = _agg("token_sum", torch.tensor(rows, dtype=DT), torch.tensor(mask_rows, dtype=DT))
    assert tsum.item() == pytest.approx(s, rel=1e-9, abs=1e-9)
