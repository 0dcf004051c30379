"""Compiled expressions: the protected operators' values and gradients, worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from grape_evo.objective.expression import compile_tree, compiled, parse

DT = torch.float64


def _run(text: str, r: list[float], a: list[float] | None = None):
    """f and df/dr at the given r (A defaults to 1); log_r = log r, both depend on r."""
    rt = torch.tensor(r, dtype=DT, requires_grad=True)
    at = torch.tensor(a if a is not None else [1.0] * len(r), dtype=DT)
    out = compile_tree(parse(text, "drift"), "drift")({"r": rt, "log_r": rt.log(), "A": at})
    grad = torch.zeros_like(rt)
    if out.requires_grad:
        (grad,) = torch.autograd.grad(out.sum(), rt, allow_unused=True, materialize_grads=True)
    return out.detach().tolist(), grad.tolist()


def _approx(values, expected, tol=1e-12):
    assert values == pytest.approx(expected, rel=tol, abs=tol)


def test_arithmetic_and_broadcasting():
    # 2 r - A / 4 at (r, A) = (1, 2), (3, -4): 2 - 0.5 = 1.5; 6 + 1 = 7
    values, grad = _run("2*r - A/4", [1.0, 3.0], [2.0, -4.0])
    _approx(values, [1.5, 7.0])
    _approx(grad, [2.0, 2.0])


def test_protected_division():
    # A / (r - 1): r - 1 = 0 -> 1e-6 (positive); -1e-7 -> -1e-6; 0.5 -> plain; -2 -> plain
    values, grad = _run("A/(r - 1)", [1.0, 1.0 - 1e-7, 1.5, -1.0])
    _approx(values, [1e6, -1e6, 2.0, -0.5], tol=1e-6)
    # d/dr A/(r - 1) = -A/(r - 1)^2 where unclamped; 0 where the clamp is active
    _approx(grad, [0.0, 0.0, -4.0, -0.25], tol=1e-6)


def test_protected_log_exp_sqrt():
    values, grad = _run("log(r - 1)", [1.0, 0.0, 1.0 + math.e])
    # log(max(|x|, 1e-6)): x = 0 -> log 1e-6; x = -1 -> log 1 = 0; x = e -> 1
    _approx(values, [math.log(1e-6), 0.0, 1.0])
    # derivative 1/x where unclamped (x = -1 -> -1; x = e -> 1/e), 0 at the clamp
    _approx(grad, [0.0, -1.0, 1 / math.e])
    values, grad = _run("exp(r)", [0.0, 25.0])
    _approx(values, [1.0, math.exp(20.0)])  # exp(min(x, 20))
    _approx(grad, [1.0, 0.0])
    values, grad = _run("sqrt(r - 5)", [9.0, 1.0, 5.0])
    # sqrt(|x|): 2, 2, 0; d/dr = sign(x) / (2 sqrt|x|): 1/4, -1/4, and 0 (not inf) at x = 0
    _approx(values, [2.0, 2.0, 0.0])
    _approx(grad, [0.25, -0.25, 0.0])


def test_protected_powers():
    # integer p >= 0: plain (sign kept); x = r - 2 at r = 0, 3
    values, grad = _run("(r - 2)**3", [0.0, 3.0])
    _approx(values, [-8.0, 1.0])
    _approx(grad, [12.0, 3.0])
    _approx(_run("(r - 2)**0", [0.0, 2.0])[0], [1.0, 1.0])
    # non-integer p > 0: |x|^p
    values, grad = _run("(r - 2)**1.5", [6.0, -2.0, 2.0])
    _approx(values, [8.0, 8.0, 0.0])
    _approx(grad, [3.0, -3.0, 0.0])  # 1.5 |x|^0.5 sign(x)
    # p < 0: 1 / x^|p| through the protected division
    values, grad = _run("(r - 2)**-1", [4.0, 1.0, 2.0])
    _approx(values, [0.5, -1.0, 1e6], tol=1e-6)
    _approx(grad, [-0.25, -1.0, 0.0], tol=1e-6)
    values, _ = _run("(r - 2)**-0.5", [6.0, -2.0])
    _approx(values, [0.5, 0.5])


def test_unprotected_functions():
    x = [-2.0, 0.5, 3.0]
    _approx(_run("abs(r)", x)[0], [2.0, 0.5, 3.0])
    _approx(_run("relu(r)", x)[0], [0.0, 0.5, 3.0])
    _approx(_run("sigmoid(r)", x)[0], [1 / (1 + math.exp(-v)) for v in x])
    _approx(_run("logsigmoid(r)", x)[0], [-math.log1p(math.exp(-v)) for v in x])
    _approx(_run("tanh(r)", x)[0], [math.tanh(v) for v in x])
    _approx(_run("clip(r, 0, 1)", x)[0], [0.0, 0.5, 1.0])
    _approx(_run("clip(r, 1, 0)", x)[0], [0.0, 0.0, 0.0])  # lo > hi: hi wins, as torch.clamp
    _approx(_run("clip(r, A, 2)", x, [1.0, 0.0, 0.0])[0], [1.0, 0.5, 2.0])
    _approx(_run("min(r, 1)", x)[0], [-2.0, 0.5, 1.0])
    _approx(_run("max(r, A)", x, [0.0, 1.0, 0.0])[0], [0.0, 1.0, 3.0])


def test_where_takes_the_branch_and_its_gradient_only():
    values, grad = _run("where(r > 1, r**2, 3*r)", [2.0, 0.5, 1.0])
    _approx(values, [4.0, 1.5, 3.0])
    _approx(grad, [4.0, 3.0, 3.0])
    values, _ = _run("where(r >= 1, 1, 0) + where(r < 1, 10, 0) + where(r <= 1, 100, 0)", [1.0])
    _approx(values, [101.0])
    # the unused branch's protection keeps the gradient finite
    _, grad = _run("where(r > 0, r, log(r))", [0.0, 2.0])
    assert all(math.isfinite(g) for g in grad)


def test_constant_expressions_broadcast_and_keep_dtype():
    fn = compiled("drift", "2 + 1")
    out = fn({"r": torch.ones(2, 3, dtype=DT), "log_r": torch.zeros(2, 3), "A": torch.ones(2, 3)})
    assert out.shape == (2, 3) and out.dtype == DT
    assert out.tolist() == [[3.0] * 3] * 2


def test_compiled_is_cached_by_text():
    assert compiled("drift", "r*A") is compiled("drift", "r*A")
