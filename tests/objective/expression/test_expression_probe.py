"""Probe batches: functional equality, cheap checks and LPO's drift conditions."""

from __future__ import annotations

import pytest

from grape_evo.objective.expression import parse
from grape_evo.objective.expression.probe import (
    DriftConditions,
    cheap_checks,
    drift_conditions,
    same_function,
)

PPO_DRIFT = "relu((r - clip(r, 0.8, 1.2))*A)"


@pytest.mark.parametrize(
    ("kind", "a", "b"),
    [
        ("drift", "r*A", "A*exp(log_r)"),
        ("drift", PPO_DRIFT, "max((r - clip(r, 0.8, 1.2))*A, 0)"),
        ("drift", "(r - 1) - log_r", "r - log(r) - 1"),
        ("advantage", "(R - mean_G)/(std_G + 1e-6)", "R/(std_G + 1e-6) - mean_G/(std_G + 1e-6)"),
        ("advantage", "rank_G", "where(G > 1, rank_G, 0.5)"),  # a group of one has rank 0.5
        ("preference", "-logsigmoid(rho)", "log(1 + exp(-rho))"),
    ],
)
def test_equal_functions_are_detected(kind, a, b):
    assert same_function(kind, a, b)
    assert same_function(kind, parse(a, kind), parse(b, kind))


@pytest.mark.parametrize(
    ("kind", "a", "b"),
    [
        ("drift", "r*A", "r*A + 1e-3"),
        ("drift", PPO_DRIFT, "relu((r - clip(r, 0.8, 1.25))*A)"),
        # same values at r = 1 only: the gradient differs there, the values elsewhere
        ("drift", "(r - 1)**2", "(r - 1)**2*A**2"),
        ("advantage", "R - mean_G", "R - (min_G + max_G)/2"),
        ("preference", "-logsigmoid(rho)", "-logsigmoid(chosen_logratio - rejected_logratio)"),
    ],
)
def test_different_functions_are_told_apart(kind, a, b):
    assert not same_function(kind, a, b)


def test_tolerance_is_absolute_plus_relative():
    # the loss -(r A - f) moves by 1e-7 everywhere: inside the default 1e-6, outside 1e-8
    assert same_function("drift", "r*A", "r*A + 1e-7")
    assert not same_function("drift", "r*A", "r*A + 1e-7", tol=1e-8)
    assert same_function("drift", "0", "relu(-abs(r))")


# ---- LPO's drift conditions -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        (PPO_DRIFT, DriftConditions(True, True, True)),
        ("0", DriftConditions(True, True, True)),
        ("(r - 1) - log_r", DriftConditions(True, True, True)),  # k3: >= 0, 0 and flat at 1
        ("(r - 1)**2 * abs(A)", DriftConditions(True, True, True)),
        ("r - 1", DriftConditions(False, True, False)),  # negative below 1, slope 1
        ("abs(r - 1)", DriftConditions(True, True, False)),  # a kink: slope +1 at r = 1
        ("1 + (r - 1)**2", DriftConditions(True, False, True)),
        ("-(r - 1)**2", DriftConditions(False, True, True)),
    ],
)
def test_drift_conditions_by_hand(expr, expected):
    assert drift_conditions(expr) == expected
    assert drift_conditions(expr).all == (expected == DriftConditions(True, True, True))


# ---- cheap checks -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "expr"),
    [
        ("advantage", "(R - mean_G)/(std_G + 1e-6)"),
        ("advantage", "rank_G - 0.5"),
        ("advantage", "R"),
        ("drift", PPO_DRIFT),
        ("drift", "(r - 1) - log_r"),
        ("preference", "-logsigmoid(rho)"),
        ("preference", "(chosen_logratio - rejected_logratio - 1/(2*beta))**2"),  # IPO
        ("preference", "-logsigmoid(rho)*(1 - sigmoid(rho/0.05)) + exp(-rho)*sigmoid(rho/0.05)"),
    ],
)
def test_published_forms_pass_the_cheap_checks(kind, expr):
    assert cheap_checks(kind, expr) == []


@pytest.mark.parametrize(
    ("kind", "expr", "needle"),
    [
        ("advantage", "-R", "a higher reward gets a lower advantage"),
        ("advantage", "(R - mean_G)**2", "a higher reward gets a lower advantage"),
        ("advantage", "((exp(R)**4)**4)**4", "not finite"),
        ("drift", "2*r*A", "at r=1 the update does not move log pi in the direction of A"),
        ("drift", "r - 1", "LPO condition violated: f(r, A) < 0 at r=0.25"),
        ("drift", "abs(r - 1)", "LPO condition violated: df/dr(1, A) != 0 at r=0.999999999"),
        ("drift", "1 + abs(A)", "LPO condition violated: f(1, A) != 0"),
        ("drift", "((exp(20*r)**4)**4)**4", "not finite"),
        ("preference", "logsigmoid(rho)", "the loss does not fall"),
        ("preference", "rho**2", "the loss does not fall"),  # symmetric in the margin
        ("preference", "1 + 0*rho", "the loss does not fall"),
        ("drift", "os.system", "attribute access"),
    ],
)
def test_broken_expressions_fail_the_cheap_checks(kind, expr, needle):
    problems = cheap_checks(kind, expr)
    assert any(needle in p for p in problems), problems
