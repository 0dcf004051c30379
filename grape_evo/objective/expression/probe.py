"""Fixed probe batches per kind: functional equality and cheap checks of expressions.

Probes (float64, deterministic):

* advantage: the reward groups ``ADVANTAGE_GROUPS`` (pass/fail of 8, continuous, ties, a pair,
  a constant group, a group of one, a wide range), through the real group inputs;
* drift: the grid ``RATIOS`` x ``ADVANTAGES`` of (r, A), with log pi_old = 0 and the gradient
  taken with respect to log pi (r = exp(log pi), log_r = log pi);
* preference: the grid ``LOGRATIOS`` x ``LOGRATIOS`` of (chosen, rejected) log-ratios, at
  each beta in ``BETAS``.

``distance(kind, a, b)``: a relative L1 distance of the responses, 0 for one function.

``same_function(kind, a, b)``: equal outputs on the probes within ``TOL`` (absolute plus
relative, ``torch.isclose``); for drift and preference also equal gradients (w.r.t. log pi,
resp. both log-ratios). An advantage is a constant to the loss, so only its values count.

``cheap_checks(kind, expr)`` lists problems (empty = passed):

* every kind: a formula that does not parse; non-finite values, or non-finite gradients for
  drift and preference, on the probes;
* advantage: within every probe group, a strictly higher reward never gets a strictly lower
  advantage (beyond ``TOL``) -- a discrete dA/dR >= 0 at fixed group;
* drift: at r = 1 (on-policy) the update moves log pi in the direction of A, i.e.
  -dL/dlog pi has the sign of A for every A != 0 of the grid; and LPO's conditions on the grid
  (Lu et al. 2022, arXiv:2210.05639), as in :func:`drift_conditions`:
  f(r, A) >= -TOL everywhere, |f(1, A)| <= TOL and |df/dr| <= TOL at r = 1 and at
  r = 1 +- 1e-9 for every A (the one-sided points catch a kink at 1, where autograd reports
  the derivative of one branch);
* preference: on average over the grid, raising the chosen log-ratio against the rejected one
  lowers the loss: mean(dL/da - dL/db) < 0, at every probe beta. (Not pointwise: DiscoPOP's
  loss rises with the margin near 0, as its paper notes.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from grape_evo.objective.batch import PreferenceBatch
from grape_evo.objective.expression.inputs import (
    advantage_inputs,
    drift_inputs,
    preference_inputs,
)
from grape_evo.objective.expression.nodes import ExpressionError, Node, check_tree
from grape_evo.objective.expression.parser import parse
from grape_evo.objective.expression.torch_form import compile_tree

TOL = 1e-6
DT = torch.float64
ADVANTAGE_GROUPS: tuple[tuple[float, ...], ...] = (
    (0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0),
    (-1.5, 0.25, 2.0, 0.75),
    (0.5, 0.5, 1.0, 0.0),
    (0.0, 1.0),
    (1.0, 1.0, 1.0),
    (0.3,),
    (-10.0, -3.0, 0.0, 0.1, 4.0, 25.0),
)
RATIOS = (0.25, 0.5, 0.8, 0.9, 0.99, 1.0, 1.01, 1.1, 1.25, 1.5, 2.0, 4.0)
NEAR_ONE = (1.0 - 1e-9, 1.0, 1.0 + 1e-9)
ADVANTAGES = (-3.0, -1.0, -0.2, 0.0, 0.2, 1.0, 3.0)
LOGRATIOS = (-5.0, -2.0, -0.5, 0.0, 0.5, 2.0, 5.0)
BETAS = (0.1, 1.0)


@dataclass(frozen=True)
class DriftConditions:
    """LPO's conditions on a drift f(r, A), checked on the probe grid."""

    nonnegative: bool
    zero_at_one: bool
    flat_at_one: bool

    @property
    def all(self) -> bool:
        return self.nonnegative and self.zero_at_one and self.flat_at_one


def _tree(kind: str, expr: Node | str) -> Node:
    return parse(expr, kind) if isinstance(expr, str) else check_tree(expr, kind)


def _advantage(tree: Node) -> Tensor:
    rewards = torch.tensor([r for g in ADVANTAGE_GROUPS for r in g], dtype=DT)
    ids = torch.tensor([i for i, g in enumerate(ADVANTAGE_GROUPS) for _ in g])
    return compile_tree(tree, "advantage")(advantage_inputs(rewards, ids)).detach()


def _drift_grid(ratios: tuple[float, ...] = RATIOS) -> tuple[Tensor, Tensor]:
    """Flattened (r, A) grid, [N] each, r-major."""
    r = torch.tensor(ratios, dtype=DT).repeat_interleave(len(ADVANTAGES))
    a = torch.tensor(ADVANTAGES, dtype=DT).repeat(len(ratios))
    return r, a


def _drift(tree: Node, ratios: tuple[float, ...] = RATIOS) -> dict[str, Tensor]:
    """f, the loss -(r A - f) and their gradients w.r.t. log pi on the (r, A) grid."""
    r, a = _drift_grid(ratios)
    logp = r.log().requires_grad_(True)
    inputs = drift_inputs(logp, torch.zeros_like(logp), a)
    f = compile_tree(tree, "drift")(inputs)
    df = torch.zeros_like(f)
    if f.requires_grad:
        (df,) = torch.autograd.grad(f.sum(), logp, allow_unused=True, materialize_grads=True)
    ratio = inputs["r"].detach()
    return {"f": f.detach(), "df": df, "loss": -(ratio * a - f.detach()), "grad": -ratio * a + df}


def _preference(tree: Node, beta: float) -> dict[str, Tensor]:
    chosen = torch.tensor(LOGRATIOS, dtype=DT).repeat_interleave(len(LOGRATIOS))
    rejected = torch.tensor(LOGRATIOS, dtype=DT).repeat(len(LOGRATIOS))
    a, b = chosen.clone().requires_grad_(True), rejected.clone().requires_grad_(True)
    zeros, ones = torch.zeros_like(chosen), torch.ones_like(chosen)
    pairs = PreferenceBatch(a, b, zeros, zeros, ones, ones)
    loss = compile_tree(tree, "preference")(preference_inputs(pairs, beta))
    da, db = torch.zeros_like(a), torch.zeros_like(b)
    if loss.requires_grad:
        da, db = torch.autograd.grad(loss.sum(), (a, b), allow_unused=True, materialize_grads=True)
    return {"loss": loss.detach(), "da": da, "db": db}


def _responses(kind: str, tree: Node) -> dict[str, Tensor]:
    if kind == "advantage":
        return {"A": _advantage(tree)}
    if kind == "drift":
        d = _drift(tree)
        return {"loss": d["loss"], "grad": d["grad"]}
    out: dict[str, Tensor] = {}
    for beta in BETAS:
        out.update({f"{k}@{beta}": v for k, v in _preference(tree, beta).items()})
    return out


def same_function(kind: str, a: Node | str, b: Node | str, tol: float = TOL) -> bool:
    """Whether ``a`` and ``b`` give the same loss and gradient on the probes of ``kind``."""
    ra, rb = _responses(kind, _tree(kind, a)), _responses(kind, _tree(kind, b))
    return all(
        bool(torch.isclose(ra[k], rb[k], rtol=tol, atol=tol, equal_nan=True).all()) for k in ra
    )


def distance(kind: str, a: Node | str, b: Node | str) -> float:
    """How far apart ``a`` and ``b`` are as functions, in [0, 1]: the mean over the probe
    responses of ``sum|a - b| / (sum|a| + sum|b|)`` (0 for the same function; non-finite
    values count as 0)."""
    ra, rb = _responses(kind, _tree(kind, a)), _responses(kind, _tree(kind, b))
    parts = []
    for k in ra:
        x = torch.nan_to_num(ra[k], nan=0.0, posinf=0.0, neginf=0.0)
        y = torch.nan_to_num(rb[k], nan=0.0, posinf=0.0, neginf=0.0)
        scale = float(x.abs().sum() + y.abs().sum())
        parts.append(float((x - y).abs().sum()) / scale if scale > 0 else 0.0)
    return sum(parts) / len(parts)


def _drift_findings(tree: Node, d: dict[str, Tensor]) -> tuple[DriftConditions, list[str]]:
    """LPO's conditions and their violations, from ``d`` = ``_drift(tree)``."""
    near = _drift(tree, NEAR_ONE)
    r, a = _drift_grid()
    r_near, a_near = _drift_grid(NEAR_ONE)
    negative = d["f"] < -TOL
    off_zero = (r == 1.0) & (d["f"].abs() > TOL)
    sloped = near["df"].abs() > TOL * r_near  # df/dlog pi = r df/dr
    problems = []
    for mask, what, rs, advs in (
        (negative, "f(r, A) < 0", r, a),
        (off_zero, "f(1, A) != 0", r, a),
        (sloped, "df/dr(1, A) != 0", r_near, a_near),
    ):
        if bool(mask.any()):
            i = int(mask.nonzero()[0])
            problems.append(
                f"LPO condition violated: {what} at r={rs[i].item():.10g}, A={advs[i].item():g}"
            )
    conditions = DriftConditions(
        not bool(negative.any()), not bool(off_zero.any()), not bool(sloped.any())
    )
    return conditions, problems


def drift_conditions(expr: Node | str) -> DriftConditions:
    """LPO's conditions f >= 0, f(1, A) = 0 and df/dr(1, A) = 0 on the probe grid."""
    tree = _tree("drift", expr)
    return _drift_findings(tree, _drift(tree))[0]


def _nonfinite(values: dict[str, Tensor], what: str) -> list[str]:
    return [
        f"{what}: {k} is not finite on the probes"
        for k, v in values.items()
        if not bool(torch.isfinite(v).all())
    ]


def _advantage_problems(tree: Node) -> list[str]:
    adv = _advantage(tree)
    problems = _nonfinite({"A": adv}, "advantage")
    start = 0
    for group in ADVANTAGE_GROUPS:
        values = adv[start : start + len(group)].tolist()
        start += len(group)
        for ri, ai in zip(group, values, strict=True):
            for rj, aj in zip(group, values, strict=True):
                if ri < rj and ai > aj + TOL * max(1.0, abs(ai), abs(aj)):
                    problems.append(
                        f"a higher reward gets a lower advantage in probe group {group}: "
                        f"R={ri:g} -> A={ai + 0.0:.4g}, R={rj:g} -> A={aj + 0.0:.4g}"
                    )
                    return problems
    return problems


def _drift_problems(tree: Node) -> list[str]:
    d = _drift(tree)
    problems = _nonfinite(d, "drift")
    r, a = _drift_grid()
    wrong = (r == 1.0) & (a != 0) & (-d["grad"] * a <= 0)
    if bool(wrong.any()):
        i = int(wrong.nonzero()[0])
        problems.append(
            f"at r=1 the update does not move log pi in the direction of A={a[i].item():g}"
        )
    return problems + _drift_findings(tree, d)[1]


def _preference_problems(tree: Node) -> list[str]:
    problems: list[str] = []
    for beta in BETAS:
        p = _preference(tree, beta)
        problems += _nonfinite(p, f"preference (beta={beta:g})")
        if not bool((p["da"] - p["db"]).mean() < 0):
            problems.append(
                f"on the probe grid (beta={beta:g}) the loss does not fall on average when the "
                "chosen log-ratio rises against the rejected one"
            )
    return problems


def cheap_checks(kind: str, expr: Node | str) -> list[str]:
    """Problems of ``expr`` on the probes of ``kind`` (see the module docstring); [] = passed."""
    try:
        tree = _tree(kind, expr)
    except ExpressionError as err:
        return [str(err)]
    if kind == "advantage":
        return _advantage_problems(tree)
    if kind == "drift":
        return _drift_problems(tree)
    return _preference_problems(tree)
