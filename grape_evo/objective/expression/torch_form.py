"""Syntax tree -> a differentiable torch function of named tensors (broadcasting).

Protected operators (the exact definitions; ``sympy_form`` renders the plain operator, which
agrees wherever the protection is inactive):

* ``a / d``: ``d`` is replaced by ``max(d, 1e-6)`` when ``d >= 0`` and by ``min(d, -1e-6)``
  when ``d < 0`` (a sign-preserving clamp away from 0; ``d = 0`` counts as positive). The
  gradient through the denominator is 0 where the clamp is active.
* ``log(x)`` = ``log(max(|x|, 1e-6))``;
* ``exp(x)`` = ``exp(min(x, 20))``;
* ``sqrt(x)`` = ``sqrt(|x|)``, with gradient 0 at ``x = 0`` (not infinite);
* ``x ** p``: ``x^p`` for an integer ``p >= 0``; ``|x|^p`` (gradient 0 at 0, as sqrt) for a
  non-integer ``p > 0``; ``1 / x^|p|`` (resp. ``1 / |x|^|p|``) through the protected division
  for ``p < 0``.

Unprotected: ``abs relu sigmoid logsigmoid tanh``, ``clip(x, lo, hi)`` = ``min(max(x, lo),
hi)`` (torch.clamp semantics: ``hi`` wins when ``lo > hi``), ``min``, ``max``,
``where(a OP b, x, y)`` (gradient flows only into the chosen branch). Products and powers can
still overflow to inf; the compiled function never checks (no host sync): a non-finite value
surfaces as a non-finite loss, which the trainer reports as a diverged run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from grape_evo.objective.expression.nodes import (
    Binary,
    Call,
    Compare,
    Const,
    Node,
    Unary,
    Var,
)
from grape_evo.objective.expression.parser import parse

DIV_EPS = 1e-6
LOG_EPS = 1e-6
EXP_MAX = 20.0
MAIN_INPUT = {"advantage": "R", "drift": "r", "preference": "rho"}


@dataclass(frozen=True)
class _Scope:
    env: Mapping[str, Tensor]
    dtype: torch.dtype
    device: torch.device

    def const(self, value: float) -> Tensor:
        return torch.full((), value, dtype=self.dtype, device=self.device)


_Fn = Callable[[_Scope], Tensor]


def protected_denominator(d: Tensor) -> Tensor:
    """``d`` clamped away from 0 keeping its sign (``|d| >= 1e-6``; 0 -> +1e-6)."""
    return torch.where(d >= 0, d.clamp(min=DIV_EPS), d.clamp(max=-DIV_EPS))


def _abs_pow(x: Tensor, q: float) -> Tensor:
    """``|x|^q`` for ``q > 0``, with value and gradient 0 at ``x = 0``."""
    ax = x.abs()
    positive = ax > 0
    safe = torch.where(positive, ax, torch.ones_like(ax))
    powered = safe.sqrt() if q == 0.5 else safe**q
    return torch.where(positive, powered, torch.zeros_like(ax))


def protected_pow(x: Tensor, p: float) -> Tensor:
    if p.is_integer() and p >= 0:
        return x ** int(p)
    base = x ** int(-p) if p.is_integer() else _abs_pow(x, abs(p))
    return 1.0 / protected_denominator(base) if p < 0 else base


_UNARY: dict[str, Callable[[Tensor], Tensor]] = {
    "sqrt": lambda x: _abs_pow(x, 0.5),
    "log": lambda x: torch.log(x.abs().clamp(min=LOG_EPS)),
    "exp": lambda x: torch.exp(x.clamp(max=EXP_MAX)),
    "abs": torch.abs,
    "relu": torch.relu,
    "sigmoid": torch.sigmoid,
    "logsigmoid": F.logsigmoid,
    "tanh": torch.tanh,
}
_ARITHMETIC: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "+": torch.add,
    "-": torch.sub,
    "*": torch.mul,
    "/": lambda a, d: a / protected_denominator(d),
}
_COMPARE: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "<": torch.lt,
    "<=": torch.le,
    ">": torch.gt,
    ">=": torch.ge,
}
_CALLS: dict[str, Callable[..., Tensor]] = {
    "clip": lambda x, lo, hi: torch.clamp(x, lo, hi),
    "min": torch.minimum,
    "max": torch.maximum,
    "where": torch.where,
}


def _build(node: Node) -> _Fn:
    if isinstance(node, Const):
        value = node.value
        return lambda s: s.const(value)
    if isinstance(node, Var):
        name = node.name
        return lambda s: s.env[name]
    if isinstance(node, Unary):
        arg = _build(node.arg)
        return lambda s: -arg(s)
    if isinstance(node, Binary):
        left = _build(node.left)
        if node.op == "**":
            assert isinstance(node.right, Const)
            p = node.right.value
            return lambda s: protected_pow(left(s), p)
        right, op = _build(node.right), _ARITHMETIC[node.op]
        return lambda s: op(left(s), right(s))
    if isinstance(node, Compare):
        left, right, cmp = _build(node.left), _build(node.right), _COMPARE[node.op]
        return lambda s: cmp(left(s), right(s))
    assert isinstance(node, Call)
    args = [_build(a) for a in node.args]
    if node.fn in _UNARY:
        fn1, (arg,) = _UNARY[node.fn], args
        return lambda s: fn1(arg(s))
    fn = _CALLS[node.fn]
    return lambda s: fn(*(a(s) for a in args))


def compile_tree(node: Node, kind: str) -> Callable[[Mapping[str, Tensor]], Tensor]:
    """``f(env) -> Tensor``: ``env`` maps input names to tensors (broadcastable); constants
    take the dtype and device of the kind's main input (``MAIN_INPUT``), and the result is
    broadcast to at least that input's shape."""
    body = _build(node)
    main = MAIN_INPUT[kind]

    def evaluate(env: Mapping[str, Tensor]) -> Tensor:
        ref = env[main]
        out = body(_Scope(env, ref.dtype, ref.device))
        return torch.broadcast_to(out, torch.broadcast_shapes(out.shape, ref.shape))

    return evaluate


@lru_cache(maxsize=1024)
def compiled(kind: str, text: str) -> Callable[[Mapping[str, Tensor]], Tensor]:
    """The compiled function of a formula (parsed with the user limits), cached by text."""
    return compile_tree(parse(text, kind), kind)
