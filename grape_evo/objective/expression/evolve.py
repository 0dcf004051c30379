"""Pure evolution operators on syntax trees, deterministic given a ``random.Random``.

* :func:`random_tree`: a tree grown from the kind's grammar (inputs, constants from
  ``CONSTANTS``, every operator and function; ``clip`` gets constant bounds, ``**`` an exponent
  from ``EXPONENTS``), at most ``max_depth`` deep and ``MAX_NODES`` nodes, never a lone leaf
  when ``max_depth >= 2``;
* :func:`mutate`: one of, chosen at random: subtree replacement (a random node, or a
  comparison, by a fresh random tree that fits the depth left), constant perturbation (a
  number scaled by exp(N(0, 0.5)) or shifted by N(0, 0.5), to 3 significant digits; an
  exponent swapped for another of ``EXPONENTS``), operator swap (``+ - * /`` among
  themselves, one-argument functions among themselves, ``min`` <-> ``max``, comparison
  operators among themselves) and hoisting (a node replaced by one of its own subtrees);
* :func:`crossover`: the subtree at a random node of ``a`` replaced by a subtree of ``b`` of
  the same slot kind (expression or comparison) that fits the limits.

Every result is a valid tree within ``max_depth`` and ``MAX_NODES``. An operator that has
nothing to act on, or produces the parent unchanged or out of limits, is retried (up to
``ATTEMPTS`` times); ``mutate`` then falls back to a fresh random tree and ``crossover`` to
``a`` itself.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable

from grape_evo.objective.expression.nodes import (
    ARITHMETIC,
    COMPARE_OPS,
    INPUTS,
    MAX_CONSTANT,
    MAX_DEPTH,
    MAX_NODES,
    SEARCH_DEPTH,
    UNARY_FUNCTIONS,
    Binary,
    Call,
    Compare,
    Const,
    ExpressionError,
    Node,
    Path,
    Slot,
    Var,
    check_tree,
    children,
    depth,
    negate,
    positions,
    replace,
    size,
    subtree,
)

CONSTANTS = (0.1, 0.2, 0.5, 1.0, 2.0, 3.0)
EXPONENTS = (-2.0, -1.0, 0.5, 2.0, 3.0)
ATTEMPTS = 20
_P_LEAF = 0.35
_P_VAR = 0.75
# (family, weight, least depth it needs)
_FAMILIES = (
    ("arithmetic", 4.0, 2),
    ("function", 3.0, 2),
    ("negate", 0.5, 2),
    ("power", 0.5, 2),
    ("minmax", 1.0, 2),
    ("clip", 0.5, 2),
    ("where", 0.5, 3),
)


def _check_depth(max_depth: int) -> None:
    if not 1 <= max_depth <= MAX_DEPTH:
        raise ExpressionError(f"max_depth must be in [1, {MAX_DEPTH}], got {max_depth}")


def _leaf(kind: str, rng: random.Random) -> Node:
    if rng.random() < _P_VAR:
        return Var(rng.choice(INPUTS[kind]))
    return Const(rng.choice(CONSTANTS))


def _compare(kind: str, rng: random.Random, room: int) -> Compare:
    """A comparison at most ``room`` deep (room >= 2)."""
    return Compare(rng.choice(COMPARE_OPS), _grow(kind, rng, room - 1), _leaf(kind, rng))


def _grow(kind: str, rng: random.Random, room: int, leaf_ok: bool = True) -> Node:
    """A random expression at most ``room`` deep."""
    if room <= 1 or (leaf_ok and rng.random() < _P_LEAF):
        return _leaf(kind, rng)
    families = [(name, w) for name, w, least in _FAMILIES if room >= least]
    family = rng.choices([f for f, _ in families], weights=[w for _, w in families])[0]
    sub = room - 1
    if family == "arithmetic":
        return Binary(rng.choice(ARITHMETIC), _grow(kind, rng, sub), _grow(kind, rng, sub))
    if family == "function":
        return Call(rng.choice(UNARY_FUNCTIONS), (_grow(kind, rng, sub),))
    if family == "negate":
        return negate(_grow(kind, rng, sub))
    if family == "power":
        return Binary("**", _grow(kind, rng, sub), Const(rng.choice(EXPONENTS)))
    if family == "minmax":
        args = (_grow(kind, rng, sub), _grow(kind, rng, sub))
        return Call(rng.choice(("min", "max")), args)
    if family == "clip":
        lo, hi = sorted(rng.sample(CONSTANTS, 2))
        return Call("clip", (_grow(kind, rng, sub), Const(lo), Const(hi)))
    return Call("where", (_compare(kind, rng, sub), _grow(kind, rng, sub), _grow(kind, rng, sub)))


def random_tree(kind: str, rng: random.Random, max_depth: int = SEARCH_DEPTH) -> Node:
    """A random valid tree of ``kind`` (see the module docstring)."""
    _check_depth(max_depth)
    if kind not in INPUTS:
        raise ExpressionError(f"unknown expression kind {kind!r}")
    least = min(max_depth, 2)
    for _ in range(ATTEMPTS):
        tree = _grow(kind, rng, max_depth, leaf_ok=max_depth < 2)
        if size(tree) <= MAX_NODES and depth(tree) >= least:
            return tree
    leaf = Var(rng.choice(INPUTS[kind]))
    return leaf if max_depth < 2 else negate(leaf)


def _paths(tree: Node, slots: tuple[Slot, ...]) -> list[tuple[Path, Slot]]:
    return [(p, s) for p, s in positions(tree) if s in slots]


def _replace_subtree(tree: Node, kind: str, rng: random.Random, max_depth: int) -> Node | None:
    path, slot = rng.choice(_paths(tree, ("expr", "cond")))
    room = max_depth - len(path)
    if slot == "cond":
        return replace(tree, path, _compare(kind, rng, room)) if room >= 2 else None
    return replace(tree, path, _grow(kind, rng, room))


def _perturb(value: float, rng: random.Random) -> float:
    moved = (
        value * math.exp(rng.gauss(0.0, 0.5)) if rng.random() < 0.5 else value + rng.gauss(0.0, 0.5)
    )
    return max(-MAX_CONSTANT, min(MAX_CONSTANT, float(f"{moved:.3g}")))


def _perturb_constant(tree: Node, kind: str, rng: random.Random, max_depth: int) -> Node | None:
    consts = [(p, s) for p, s in positions(tree) if isinstance(subtree(tree, p), Const)]
    if not consts:
        return None
    path, slot = rng.choice(consts)
    old = subtree(tree, path)
    assert isinstance(old, Const)
    if slot == "exponent":
        new = rng.choice([e for e in EXPONENTS if e != old.value])
    else:
        new = _perturb(old.value, rng)
    return replace(tree, path, Const(new))


def _swap_options(node: Node) -> tuple[str, ...]:
    """The operators ``node``'s own operator may be swapped for (empty: none)."""
    if isinstance(node, Binary) and node.op in ARITHMETIC:
        group, current = ARITHMETIC, node.op
    elif isinstance(node, Compare):
        group, current = COMPARE_OPS, node.op
    elif isinstance(node, Call) and node.fn in UNARY_FUNCTIONS:
        group, current = UNARY_FUNCTIONS, node.fn
    elif isinstance(node, Call) and node.fn in ("min", "max"):
        group, current = ("min", "max"), node.fn
    else:
        return ()
    return tuple(o for o in group if o != current)


def _swap_operator(tree: Node, kind: str, rng: random.Random, max_depth: int) -> Node | None:
    swappable = [p for p, _ in positions(tree) if _swap_options(subtree(tree, p))]
    if not swappable:
        return None
    path = rng.choice(swappable)
    node = subtree(tree, path)
    op = rng.choice(_swap_options(node))
    swapped = (
        dataclasses.replace(node, fn=op)
        if isinstance(node, Call)
        else dataclasses.replace(node, op=op)
    )
    return replace(tree, path, swapped)


def _hoist(tree: Node, kind: str, rng: random.Random, max_depth: int) -> Node | None:
    internal = [p for p, s in _paths(tree, ("expr",)) if children(subtree(tree, p))]
    if not internal:
        return None
    path = rng.choice(internal)
    inner = [p for p, _ in _paths(subtree(tree, path), ("expr",)) if p]
    return replace(tree, path, subtree(subtree(tree, path), rng.choice(inner)))


_MUTATIONS: tuple[Callable[[Node, str, random.Random, int], Node | None], ...] = (
    _replace_subtree,
    _perturb_constant,
    _swap_operator,
    _hoist,
)


def _valid(tree: Node, kind: str | None, max_depth: int) -> bool:
    if depth(tree) > max_depth or size(tree) > MAX_NODES:
        return False
    if kind is None:
        return True
    try:
        check_tree(tree, kind, max_depth)
    except ExpressionError:
        return False
    return True


def mutate(tree: Node, kind: str, rng: random.Random, max_depth: int = SEARCH_DEPTH) -> Node:
    """A mutated copy of ``tree`` (one operator chosen at random; see the module docstring)."""
    _check_depth(max_depth)
    for _ in range(ATTEMPTS):
        child = rng.choice(_MUTATIONS)(tree, kind, rng, max_depth)
        if child is not None and child != tree and _valid(child, kind, max_depth):
            return child
    return random_tree(kind, rng, max_depth)


def crossover(a: Node, b: Node, rng: random.Random, max_depth: int = SEARCH_DEPTH) -> Node:
    """``a`` with one subtree replaced by a subtree of ``b`` of the same slot kind (two trees
    of the same kind give a tree of that kind)."""
    _check_depth(max_depth)
    targets = _paths(a, ("expr", "cond"))
    donors = _paths(b, ("expr", "cond"))
    for _ in range(ATTEMPTS):
        path, slot = rng.choice(targets)
        room = max_depth - len(path)
        budget = MAX_NODES - size(a) + size(subtree(a, path))
        fits = [
            p
            for p, s in donors
            if s == slot and depth(subtree(b, p)) <= room and size(subtree(b, p)) <= budget
        ]
        if not fits:
            continue
        child = replace(a, path, subtree(b, rng.choice(fits)))
        if child != a and _valid(child, None, max_depth):
            return child
    return a
