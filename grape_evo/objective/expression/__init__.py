"""Expression components: formulas over named inputs as searchable objective components.

``parse`` (text -> typed syntax tree through a whitelist, never eval), ``to_text`` (back),
``compile_tree`` / ``compiled`` (tree -> differentiable torch function), ``to_sympy`` and
``canonical_key`` (formulas, LaTeX, deduplication), ``probe`` (cheap checks and functional
equality on fixed probe batches) and ``evolve`` (random trees, mutation, crossover).
"""

from grape_evo.objective.expression.nodes import (
    INPUTS,
    KINDS,
    MAX_DEPTH,
    MAX_NODES,
    SEARCH_DEPTH,
    Binary,
    Call,
    Compare,
    Const,
    ExpressionError,
    Node,
    Unary,
    Var,
    check_tree,
    depth,
    size,
    variables,
)
from grape_evo.objective.expression.parser import parse
from grape_evo.objective.expression.sympy_form import canonical_key, to_sympy
from grape_evo.objective.expression.text import to_text
from grape_evo.objective.expression.torch_form import compile_tree, compiled

__all__ = [
    "INPUTS",
    "KINDS",
    "MAX_DEPTH",
    "MAX_NODES",
    "SEARCH_DEPTH",
    "Binary",
    "Call",
    "Compare",
    "Const",
    "ExpressionError",
    "Node",
    "Unary",
    "Var",
    "canonical_key",
    "check_tree",
    "compile_tree",
    "compiled",
    "depth",
    "parse",
    "size",
    "to_sympy",
    "to_text",
    "variables",
]
