"""Render a syntax tree back to formula text that parses to the same tree.

Parentheses are written only where the grammar needs them: ``**`` binds tightest (right of a
unary minus: ``-x**2`` is ``-(x**2)``), then unary minus, then ``* /``, then ``+ -``; the
binary operators group left to right, so a right operand of the same precedence is
parenthesised (``a - (b - c)``, and also ``a + (b + c)``, which is a different tree from
``a + b + c``). Numbers are written with Python's shortest round-tripping ``repr``
(integers without a decimal point); a negative number is parenthesised wherever a unary
minus would be.
"""

from __future__ import annotations

from grape_evo.objective.expression.nodes import Binary, Call, Compare, Const, Node, Unary, Var

_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2, "**": 4}
_UNARY = 3
_ATOM = 5


def format_number(value: float) -> str:
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _precedence(node: Node) -> int:
    if isinstance(node, Binary):
        return _PRECEDENCE[node.op]
    if isinstance(node, Unary) or (isinstance(node, Const) and node.value < 0):
        return _UNARY
    if isinstance(node, Compare):
        return 0
    return _ATOM


def _wrap(node: Node, parenthesise: bool) -> str:
    text = to_text(node)
    return f"({text})" if parenthesise else text


def to_text(node: Node) -> str:
    """The formula text of ``node``; ``parse(to_text(t), kind) == t`` for every valid tree."""
    if isinstance(node, Const):
        return format_number(node.value)
    if isinstance(node, Var):
        return node.name
    if isinstance(node, Unary):
        return "-" + _wrap(node.arg, _precedence(node.arg) <= _UNARY)
    if isinstance(node, Call):
        return f"{node.fn}({', '.join(to_text(a) for a in node.args)})"
    if isinstance(node, Compare):
        return f"{to_text(node.left)} {node.op} {to_text(node.right)}"
    own = _PRECEDENCE[node.op]
    if node.op == "**":
        left = _wrap(node.left, _precedence(node.left) <= own)
        return f"{left}**{_wrap(node.right, _precedence(node.right) < _ATOM)}"
    left = _wrap(node.left, _precedence(node.left) < own)
    right = _wrap(node.right, _precedence(node.right) <= own)
    return f"{left} {node.op} {right}"
