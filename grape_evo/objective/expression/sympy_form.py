"""Syntax tree -> sympy, for formulas and LaTeX, and a canonical key for deduplication.

Rendering uses the plain mathematical operators (``a / d``, ``log x``, ``exp x``,
``sqrt x``, ``x**p``): they agree with the protected torch operators wherever the protections
are inactive (see ``torch_form``). ``logsigmoid(x)`` renders as ``log(sigmoid(x))``, as the
preference losses do. Inputs map to the shared symbols of ``grape_evo.objective.symbolic``:
``log_r`` is ``log(r)`` and ``rho`` is ``beta * (Delta_w - Delta_l)``, so that formulas are
written in the quantities the rest of the project uses.

Canonical key: the tree is rendered with exact rational constants (``0.8`` -> 4/5), ``log_r``
and ``rho`` written out as above, comparisons rewritten as ``lhs - rhs > 0`` (or ``>= 0``),
and the result fully expanded by ``sympy.expand`` (into function arguments too); the key is
its ``srepr``. Two trees that are the same function by that algebra (``A*r`` and ``r*A``;
``(R - mean_G)/(std_G + 1e-6)`` and ``R/(std_G + 1e-6) - mean_G/(std_G + 1e-6)``) share a key.
Expansion is skipped when an upper bound on the number of expanded terms exceeds
``MAX_EXPANDED_TERMS`` (``((a + b + c)**4)**4`` and beyond), and on any sympy failure: the key
is then ``raw:`` plus the unexpanded ``srepr`` (equal only for equal trees up to sympy's
automatic ordering). Equal keys mean the same function where the protections are inactive;
``probe.same_function`` checks the protected functions themselves.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from functools import lru_cache
from math import comb

import sympy as sp

from grape_evo.objective.expression.nodes import (
    Binary,
    Call,
    Compare,
    Const,
    Node,
    Unary,
    Var,
    children,
)
from grape_evo.objective.expression.parser import parse
from grape_evo.objective.symbolic import Symbols as S
from grape_evo.objective.symbolic import clip, num, relu, sigmoid, where

MAX_EXPANDED_TERMS = 2000

_FUNCTIONS: dict[str, Callable[..., sp.Expr]] = {
    "sqrt": sp.sqrt,
    "log": sp.log,
    "exp": sp.exp,
    "abs": sp.Abs,
    "relu": relu,
    "sigmoid": sigmoid,
    "logsigmoid": lambda x: sp.log(sigmoid(x)),
    "tanh": sp.tanh,
    "clip": clip,
    "min": sp.Min,
    "max": sp.Max,
    "where": where,
}
_RELATIONS = {"<": sp.Lt, "<=": sp.Le, ">": sp.Gt, ">=": sp.Ge}
_ARITHMETIC = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}


def default_inputs(kind: str) -> dict[str, sp.Expr]:
    """Each input of ``kind`` as a sympy expression in the shared symbols."""
    if kind == "advantage":
        return {
            "R": S.R,
            "mean_G": S.mu_G,
            "std_G": S.sigma_G,
            "min_G": S.min_G,
            "max_G": S.max_G,
            "rank_G": S.rank_G,
            "p_G": S.p_G,
            "G": S.G,
        }
    if kind == "drift":
        return {"r": S.ratio, "log_r": sp.log(S.ratio), "A": S.A}
    return {
        "rho": S.beta * (S.delta_w - S.delta_l),
        "chosen_logratio": S.delta_w,
        "rejected_logratio": S.delta_l,
        "beta": S.beta,
    }


class _Renderer:
    def __init__(self, inputs: Mapping[str, sp.Expr], exact: bool) -> None:
        self.inputs = inputs
        self.exact = exact

    def number(self, value: float) -> sp.Expr:
        return sp.Rational(repr(value)) if self.exact else num(value)

    def __call__(self, node: Node) -> sp.Basic:
        if isinstance(node, Const):
            return self.number(node.value)
        if isinstance(node, Var):
            return self.inputs[node.name]
        if isinstance(node, Unary):
            return -self(node.arg)
        if isinstance(node, Compare):
            left, right = self(node.left), self(node.right)
            if not self.exact:
                return _RELATIONS[node.op](left, right)
            strict = node.op in ("<", ">")
            diff = sp.expand(left - right if node.op in (">", ">=") else right - left)
            return sp.Gt(diff, 0) if strict else sp.Ge(diff, 0)
        if isinstance(node, Binary):
            left = self(node.left)
            if node.op == "**":
                assert isinstance(node.right, Const)
                return left ** self.number(node.right.value)
            return _ARITHMETIC[node.op](left, self(node.right))
        assert isinstance(node, Call)
        return _FUNCTIONS[node.fn](*(self(a) for a in node.args))


def to_sympy(
    node: Node, kind: str, inputs: Mapping[str, sp.Expr] | None = None, exact: bool = False
) -> sp.Expr:
    """The tree as a sympy expression; ``inputs`` overrides the symbols of some inputs (the
    drift's ``A`` by the advantage's formula, the preference's ``beta`` by its value)."""
    mapping = {**default_inputs(kind), **(inputs or {})}
    render = _Renderer(mapping, exact)
    try:
        return render(node)
    except (TypeError, ValueError, ArithmeticError):
        with sp.evaluate(False):
            return render(node)


def expansion_bound(node: Node, cap: int = MAX_EXPANDED_TERMS + 1) -> tuple[int, int]:
    """(terms, work): an upper bound on the terms of ``expand(node)`` and on the largest
    expansion done anywhere inside it, both capped at ``cap``."""
    kids = [expansion_bound(c, cap) for c, _ in children(node)]
    work = max((w for _, w in kids), default=1)
    if isinstance(node, Unary):
        terms = kids[0][0]
    elif isinstance(node, Binary) and node.op in ("+", "-"):
        terms = kids[0][0] + kids[1][0]
    elif isinstance(node, Binary) and node.op == "*":
        terms = kids[0][0] * kids[1][0]
    elif isinstance(node, Binary) and node.op == "/":
        terms = kids[0][0]
    elif isinstance(node, Binary):
        assert isinstance(node.right, Const)
        p = abs(node.right.value)
        grown = comb(kids[0][0] + int(p) - 1, int(p)) if p.is_integer() and p >= 2 else 1
        terms = grown if node.right.value > 0 else 1
        work = max(work, grown)
    else:
        terms = 1
    return min(terms, cap), min(max(work, terms), cap)


@lru_cache(maxsize=4096)
def _canonical(node: Node, kind: str) -> str:
    try:
        exact = to_sympy(node, kind, exact=True)
    except Exception:  # any sympy failure: the key falls back to the tree itself
        return f"raw:{node!r}"
    if max(expansion_bound(node)) > MAX_EXPANDED_TERMS:
        return f"raw:{sp.srepr(exact)}"
    try:
        return sp.srepr(sp.expand(exact))
    except Exception:
        return f"raw:{sp.srepr(exact)}"


def canonical_key(kind: str, expr: Node | str) -> str:
    """The canonical key of a formula or tree of ``kind`` (see the module docstring)."""
    return _canonical(parse(expr, kind) if isinstance(expr, str) else expr, kind)
