"""The typed syntax tree of an expression, its grammar and its limits.

A tree is built from frozen dataclasses (structural equality, hashable):

* ``Const(value)``: a finite real number, ``|value| <= MAX_CONSTANT``;
* ``Var(name)``: one of the inputs of the expression's kind (``INPUTS``);
* ``Unary("-", arg)``: negation, the only unary operator (named one-argument functions are
  ``Call`` nodes); a negated number is always folded into a ``Const``;
* ``Binary(op, left, right)``: ``op`` in ``+ - * / **``; the right side of ``**`` is a
  ``Const`` with ``|p| <= MAX_EXPONENT``;
* ``Call(fn, args)``: a whitelisted function of fixed arity (``FUNCTIONS``);
* ``Compare(op, left, right)``: ``op`` in ``< <= > >=``, allowed only as the first argument of
  ``where(cond, a, b)``.

Depth counts nodes on the longest root-to-leaf path (a lone input has depth 1); size counts
every node. Every refusal is an :class:`ExpressionError` with a one-line reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from grape_evo.objective.registry import ObjectiveError

KINDS = ("advantage", "drift", "preference")
INPUTS: dict[str, tuple[str, ...]] = {
    "advantage": ("R", "mean_G", "std_G", "min_G", "max_G", "rank_G", "p_G", "G"),
    "drift": ("r", "log_r", "A"),
    "preference": ("rho", "chosen_logratio", "rejected_logratio", "beta"),
}
UNARY_FUNCTIONS = ("sqrt", "log", "exp", "abs", "relu", "sigmoid", "logsigmoid", "tanh")
FUNCTIONS: dict[str, int] = {
    **{name: 1 for name in UNARY_FUNCTIONS},
    "clip": 3,
    "min": 2,
    "max": 2,
    "where": 3,
}
ARITHMETIC = ("+", "-", "*", "/")
BINARY_OPS = (*ARITHMETIC, "**")
COMPARE_OPS = ("<", "<=", ">", ">=")

MAX_CHARS = 2000
MAX_BRACKET_DEPTH = 64
MAX_DEPTH = 32
MAX_NODES = 256
SEARCH_DEPTH = 8
MAX_EXPONENT = 4.0
MAX_CONSTANT = 1e6


class ExpressionError(ObjectiveError):
    """An expression refused at load time (grammar, inputs or limits); one-line message."""


@dataclass(frozen=True)
class Const:
    value: float


@dataclass(frozen=True)
class Var:
    name: str


@dataclass(frozen=True)
class Unary:
    op: str
    arg: Node


@dataclass(frozen=True)
class Binary:
    op: str
    left: Node
    right: Node


@dataclass(frozen=True)
class Call:
    fn: str
    args: tuple[Node, ...]


@dataclass(frozen=True)
class Compare:
    op: str
    left: Node
    right: Node


Node = Const | Var | Unary | Binary | Call | Compare
Slot = Literal["expr", "cond", "exponent"]
Path = tuple[int, ...]


def negate(node: Node) -> Node:
    """``-node``, with a negated number folded into the constant (as the parser does)."""
    if isinstance(node, Const):
        return Const(-node.value)
    return Unary("-", node)


def children(node: Node) -> tuple[tuple[Node, Slot], ...]:
    """The node's children with the kind of slot each occupies."""
    if isinstance(node, Unary):
        return ((node.arg, "expr"),)
    if isinstance(node, Binary):
        return ((node.left, "expr"), (node.right, "exponent" if node.op == "**" else "expr"))
    if isinstance(node, Compare):
        return ((node.left, "expr"), (node.right, "expr"))
    if isinstance(node, Call):
        first: Slot = "cond" if node.fn == "where" else "expr"
        return tuple((a, first if i == 0 else "expr") for i, a in enumerate(node.args))
    return ()


def with_children(node: Node, new: tuple[Node, ...]) -> Node:
    """A copy of ``node`` with its children replaced (same order as :func:`children`)."""
    if isinstance(node, Unary):
        return negate(new[0])
    if isinstance(node, Binary):
        return Binary(node.op, new[0], new[1])
    if isinstance(node, Compare):
        return Compare(node.op, new[0], new[1])
    if isinstance(node, Call):
        return Call(node.fn, tuple(new))
    return node


def depth(node: Node) -> int:
    return 1 + max((depth(c) for c, _ in children(node)), default=0)


def size(node: Node) -> int:
    return 1 + sum(size(c) for c, _ in children(node))


def variables(node: Node) -> frozenset[str]:
    """The input names the tree reads."""
    if isinstance(node, Var):
        return frozenset((node.name,))
    return frozenset().union(*(variables(c) for c, _ in children(node)))


def positions(node: Node, path: Path = (), slot: Slot = "expr") -> Iterator[tuple[Path, Slot]]:
    """Every node's path from the root (pre-order) and the slot it fills."""
    yield path, slot
    for i, (child, child_slot) in enumerate(children(node)):
        yield from positions(child, (*path, i), child_slot)


def subtree(node: Node, path: Path) -> Node:
    for i in path:
        node = children(node)[i][0]
    return node


def replace(node: Node, path: Path, new: Node) -> Node:
    """The tree with the subtree at ``path`` replaced by ``new``."""
    if not path:
        return new
    kids = [c for c, _ in children(node)]
    kids[path[0]] = replace(kids[path[0]], path[1:], new)
    return with_children(node, tuple(kids))


def check_tree(
    node: Node, kind: str, max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES
) -> Node:
    """Return ``node`` if it is a valid tree of ``kind`` within the limits, else raise."""
    if kind not in INPUTS:
        raise ExpressionError(f"unknown expression kind {kind!r}; kinds: {list(KINDS)}")
    _check_node(node, kind, "expr")
    n = size(node)
    if n > max_nodes:
        raise ExpressionError(f"expression has {n} nodes (limit {max_nodes})")
    d = depth(node)
    if d > max_depth:
        raise ExpressionError(f"expression is nested {d} deep (limit {max_depth})")
    return node


def _check_node(node: Node, kind: str, slot: Slot) -> None:
    if slot == "cond" and not isinstance(node, Compare):
        raise ExpressionError("the first argument of where(...) must be a comparison")
    if slot != "cond" and isinstance(node, Compare):
        raise ExpressionError("comparisons are allowed only as the first argument of where(...)")
    if slot == "exponent":
        if not isinstance(node, Const) or abs(node.value) > MAX_EXPONENT:
            raise ExpressionError(f"an exponent must be a number with |p| <= {MAX_EXPONENT:g}")
        return
    problem = _node_problem(node, kind)
    if problem:
        raise ExpressionError(problem)
    for child, child_slot in children(node):
        _check_node(child, kind, child_slot)


def _node_problem(node: Node, kind: str) -> str | None:
    if isinstance(node, Const):
        value = node.value
        if not isinstance(value, float) or not abs(value) <= MAX_CONSTANT:
            return f"constant {value!r} must be a finite float with |c| <= {MAX_CONSTANT:g}"
    elif isinstance(node, Var):
        if node.name not in INPUTS[kind]:
            return (
                f"name {quote(node.name)} is not an input of {kind} expressions "
                f"(inputs: {', '.join(INPUTS[kind])})"
            )
    elif isinstance(node, Unary):
        if node.op != "-" or isinstance(node.arg, Const):
            return "the only unary operator is '-', and a negated number is a constant"
    elif isinstance(node, Binary | Compare):
        ops = BINARY_OPS if isinstance(node, Binary) else COMPARE_OPS
        if node.op not in ops:
            return f"operator {quote(node.op)} is not allowed (operators: {' '.join(ops)})"
    elif isinstance(node, Call):
        if FUNCTIONS.get(node.fn) is None:
            return f"function {quote(node.fn)} is not allowed (functions: {', '.join(FUNCTIONS)})"
        if len(node.args) != FUNCTIONS[node.fn]:
            return f"{node.fn}() takes {FUNCTIONS[node.fn]} argument(s), got {len(node.args)}"
    else:
        return f"not an expression node: {type(node).__name__}"
    return None


def quote(text: str, limit: int = 40) -> str:
    """``text`` quoted for a message, cut to ``limit`` characters."""
    return repr(text if len(text) <= limit else text[:limit] + "...")
