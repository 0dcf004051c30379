"""Formula text -> syntax tree, through pre-checks and a strict whitelist.

Nothing in the text ever runs: after the pre-checks below, Python's ``ast.parse(mode="eval")``
is used only as a tokenizer and parser, and its tree is walked node by node; any node outside
the grammar is refused. Pre-checks, in order, before the text reaches the parser:

1. at most ``MAX_CHARS`` characters (a megabyte string is refused without being scanned
   further or echoed);
2. only ASCII letters, digits, whitespace and ``_ . + - * / ( ) , < > =`` (so no strings,
   subscripts, lambdas, dict/set displays, and no Unicode look-alikes, which Python would
   NFKC-normalise into ASCII names);
3. balanced round brackets nested at most ``MAX_BRACKET_DEPTH`` deep, counted by a scan.

Grammar: numbers (real, ``|c| <= MAX_CONSTANT``), the kind's input names, ``+ - * /``,
``x ** p`` with ``p`` a number literal, ``|p| <= MAX_EXPONENT`` (``-`` before it allowed),
unary ``-`` (a negated number becomes a constant) and ``+`` (dropped), calls of the
whitelisted functions with positional arguments, and ``where(a OP b, x, y)`` with OP one of
``< <= > >=`` (one comparison, no chains): comparisons appear nowhere else.
"""

from __future__ import annotations

import ast
import string
from functools import lru_cache

from grape_evo.objective.expression.nodes import (
    COMPARE_OPS,
    FUNCTIONS,
    MAX_BRACKET_DEPTH,
    MAX_CHARS,
    MAX_DEPTH,
    MAX_NODES,
    Binary,
    Call,
    Compare,
    Const,
    ExpressionError,
    Node,
    Var,
    check_tree,
    negate,
    quote,
)

_ALLOWED = frozenset(string.ascii_letters + string.digits + " \t\n_.+-*/(),<>=")
_BINARY = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}
_COMPARE = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}
_REFUSED = {
    ast.Attribute: "attribute access ('.') is not allowed",
    ast.Subscript: "subscripts are not allowed",
    ast.Lambda: "lambdas are not allowed",
    ast.IfExp: "'x if c else y' is not allowed; use where(c, x, y)",
    ast.BoolOp: "'and'/'or' are not allowed; use where(...)",
    ast.Starred: "starred arguments are not allowed",
    ast.Tuple: "tuples are not allowed",
    ast.GeneratorExp: "comprehensions are not allowed",
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.NamedExpr: "assignments are not allowed",
    ast.JoinedStr: "strings are not allowed",
}


def _precheck(text: str) -> None:
    if len(text) > MAX_CHARS:
        raise ExpressionError(f"expression is {len(text)} characters long (limit {MAX_CHARS})")
    if not text.strip():
        raise ExpressionError("expression is empty")
    bad = next((c for c in text if c not in _ALLOWED), None)
    if bad is not None:
        raise ExpressionError(
            f"character {bad!r} (U+{ord(bad):04X}) is not allowed; expressions use ASCII "
            "letters, digits, spaces and _ . + - * / ( ) , < > ="
        )
    level = 0
    for c in text:
        level += (c == "(") - (c == ")")
        if level < 0:
            raise ExpressionError("unbalanced ')'")
        if level > MAX_BRACKET_DEPTH:
            raise ExpressionError(f"brackets nested more than {MAX_BRACKET_DEPTH} deep")
    if level:
        raise ExpressionError("unbalanced '(': a bracket is never closed")


def _ast_depth(root: ast.AST) -> int:
    """Depth of the Python syntax tree, computed without recursion."""
    deepest, stack = 0, [(root, 1)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        stack.extend((child, d + 1) for child in ast.iter_child_nodes(node))
    return deepest


def _number(value: object) -> Const:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ExpressionError(f"{quote(repr(value))} is not a real number")
    try:
        return Const(float(value))
    except OverflowError:
        raise ExpressionError("a number is too large") from None


class _Walker:
    """Converts a whitelisted Python syntax tree into the expression tree."""

    def node(self, n: ast.AST) -> Node:
        if isinstance(n, ast.Constant):
            return _number(n.value)
        if isinstance(n, ast.Name):
            return Var(n.id)
        if isinstance(n, ast.UnaryOp):
            return self.unary(n)
        if isinstance(n, ast.BinOp):
            return self.binary(n)
        if isinstance(n, ast.Call):
            return self.call(n)
        if isinstance(n, ast.Compare):
            raise ExpressionError(
                "comparisons are allowed only as the first argument of where(cond, a, b)"
            )
        reason = _REFUSED.get(type(n), f"{type(n).__name__} is not part of the grammar")
        raise ExpressionError(reason)

    def unary(self, n: ast.UnaryOp) -> Node:
        if isinstance(n.op, ast.UAdd):
            return self.node(n.operand)
        if not isinstance(n.op, ast.USub):
            raise ExpressionError(f"operator '{_op_text(n.op)}' is not allowed")
        return negate(self.node(n.operand))

    def binary(self, n: ast.BinOp) -> Node:
        op = _BINARY.get(type(n.op))
        if op is None:
            raise ExpressionError(
                f"operator '{_op_text(n.op)}' is not allowed (operators: + - * / **)"
            )
        left = self.node(n.left)
        if op != "**":
            return Binary(op, left, self.node(n.right))
        exponent = self.node(n.right)
        if not isinstance(exponent, Const):
            raise ExpressionError("the exponent of '**' must be a number, e.g. x**2 or x**-0.5")
        return Binary(op, left, exponent)

    def call(self, n: ast.Call) -> Node:
        if not isinstance(n.func, ast.Name):
            raise ExpressionError("only named functions can be called, e.g. exp(x)")
        fn = n.func.id
        if fn not in FUNCTIONS:
            raise ExpressionError(
                f"function {quote(fn)} is not allowed (functions: {', '.join(FUNCTIONS)})"
            )
        if n.keywords:
            raise ExpressionError(f"keyword arguments are not allowed in {fn}(...)")
        if len(n.args) != FUNCTIONS[fn]:
            raise ExpressionError(f"{fn}() takes {FUNCTIONS[fn]} argument(s), got {len(n.args)}")
        if fn != "where":
            return Call(fn, tuple(self.node(a) for a in n.args))
        cond, *rest = n.args
        return Call(fn, (self.condition(cond), *(self.node(a) for a in rest)))

    def condition(self, n: ast.AST) -> Compare:
        if not isinstance(n, ast.Compare):
            raise ExpressionError("the first argument of where(...) must be a comparison")
        if len(n.ops) != 1:
            raise ExpressionError("chained comparisons (a < b < c) are not allowed")
        op = _COMPARE.get(type(n.ops[0]))
        if op is None:
            raise ExpressionError(
                f"comparison '{_op_text(n.ops[0])}' is not allowed (use {' '.join(COMPARE_OPS)})"
            )
        return Compare(op, self.node(n.left), self.node(n.comparators[0]))


def _op_text(op: ast.AST) -> str:
    names = {
        ast.FloorDiv: "//",
        ast.Mod: "%",
        ast.Not: "not",
        ast.Eq: "==",
        ast.NotEq: "!=",
        ast.Is: "is",
        ast.IsNot: "is not",
        ast.In: "in",
        ast.NotIn: "not in",
    }
    return names.get(type(op), type(op).__name__)


def parse(text: str, kind: str, *, max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES) -> Node:
    """The syntax tree of ``text`` as an expression of ``kind``; ExpressionError if refused."""
    if not isinstance(text, str):
        raise ExpressionError(f"an expression must be a string, got {type(text).__name__}")
    return _parse(text, kind, max_depth, max_nodes)


@lru_cache(maxsize=4096)
def _parse(text: str, kind: str, max_depth: int, max_nodes: int) -> Node:
    _precheck(text)
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        raise ExpressionError(f"invalid syntax: {err.msg}") from None
    except (RecursionError, MemoryError, ValueError):
        raise ExpressionError("expression is too deeply nested to parse") from None
    if _ast_depth(tree) > 2 * MAX_DEPTH + 2:
        raise ExpressionError(f"expression tree is more than {MAX_DEPTH} levels deep")
    return check_tree(_Walker().node(tree.body), kind, max_depth, max_nodes)
