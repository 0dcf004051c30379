"""Expression genes: a formula-valued axis (``advantage.expr``, ``surrogate.expr``,
``preference.expr``) and its operators.

A gene's value is the formula's text. Optuna cannot store text that is not one of a fixed list
of choices, so the Optuna parameter of an expression axis is an integer *draw*
(``<path>#draw`` in ``[0, DRAWS]``) and the text is the trial's recorded genes:

* a sampler that plans whole genomes (the evolution sampler) plans the text itself, by
  mutation (subtree replacement, constant perturbation, operator swap, hoisting) and crossover
  (subtree exchange) of its parents' formulas;
* every other sampler (TPE, random, CMA-ES, NSGA-II, grid) draws the integer and
  :func:`from_draw` turns it into a formula: draws ``0 .. n-1`` are the ``n`` seeds (the grid
  sampler enumerates exactly those); a larger draw seeds a generator that picks a seed with
  probability 1/2 and otherwise grows a random tree from the grammar.

The seeds of an axis default to the published forms
(:data:`~grape_evo.objective.expression.published.PUBLISHED`), so a space written
``advantage.expr: {expression: {}}`` starts from GRPO, Dr. GRPO, RLOO and REINFORCE.
"""

from __future__ import annotations

import hashlib
import random

from grape_evo.objective.expression import (
    MAX_DEPTH,
    ExpressionError,
    canonical_key,
    depth,
    parse,
    to_text,
)
from grape_evo.objective.expression.evolve import crossover, mutate, random_tree

__all__ = [
    "DRAWS",
    "DRAW_SUFFIX",
    "EXPRESSION_KINDS",
    "canonical",
    "cross",
    "draw_of",
    "from_draw",
    "is_formula",
    "mutate_formula",
    "sample_formula",
    "seed_problem",
]

EXPRESSION_KINDS: dict[str, str] = {
    "advantage.expr": "advantage",
    "surrogate.expr": "drift",
    "preference.expr": "preference",
}
"""Axis path -> expression kind (grammar and inputs: :mod:`grape_evo.objective.expression`)."""

DRAWS = 2**31 - 2
"""Largest draw of an expression axis's Optuna parameter (draws are ``0 .. DRAWS``)."""
DRAW_SUFFIX = "#draw"
"""An expression axis's Optuna parameter is its path plus this suffix."""

_P_SEED = 0.5


def is_formula(kind: str, text: object) -> bool:
    """Whether ``text`` is a string that parses as an expression of ``kind`` (within the
    global limits)."""
    if not isinstance(text, str):
        return False
    try:
        parse(text, kind)
    except ExpressionError:
        return False
    return True


def seed_problem(kind: str, text: object, max_depth: int) -> str | None:
    """Why ``text`` cannot seed an axis of ``kind`` searched to ``max_depth`` (None: it can)."""
    if not isinstance(text, str):
        return f"must be a formula string, got {type(text).__name__}"
    try:
        tree = parse(text, kind)
    except ExpressionError as err:
        return str(err)
    if depth(tree) > max_depth:
        return f"is {depth(tree)} levels deep, deeper than the axis's max_depth ({max_depth})"
    return None


def sample_formula(kind: str, seeds: tuple[str, ...], max_depth: int, rng: random.Random) -> str:
    """A seed (probability 1/2, uniformly among ``seeds``) or a random tree of the grammar."""
    if seeds and rng.random() < _P_SEED:
        return seeds[rng.randrange(len(seeds))]
    return to_text(random_tree(kind, rng, min(max_depth, MAX_DEPTH)))


def from_draw(kind: str, seeds: tuple[str, ...], max_depth: int, draw: int) -> str:
    """The formula an integer draw stands for: ``seeds[draw]`` for ``draw < len(seeds)``,
    otherwise :func:`sample_formula` with ``random.Random(draw)``."""
    if 0 <= draw < len(seeds):
        return seeds[draw]
    return sample_formula(kind, seeds, max_depth, random.Random(draw))


def draw_of(seeds: tuple[str, ...], text: str) -> int:
    """An integer draw recorded for a planned formula: its seed index, else a stable hash."""
    if text in seeds:
        return seeds.index(text)
    digest = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
    return len(seeds) + digest % (DRAWS + 1 - len(seeds))


def mutate_formula(kind: str, text: str, max_depth: int, rng: random.Random) -> str:
    """One mutation of ``text`` (see :func:`grape_evo.objective.expression.evolve.mutate`)."""
    return to_text(mutate(parse(text, kind), kind, rng, max_depth))


def cross(kind: str, a: str, b: str, max_depth: int, rng: random.Random) -> str:
    """``a`` with one subtree replaced by a subtree of ``b`` (subtree exchange)."""
    return to_text(crossover(parse(a, kind), parse(b, kind), rng, max_depth))


def canonical(kind: str, text: str) -> str:
    """The sympy canonical key of ``text``: two formulas with one key are one function."""
    return canonical_key(kind, text)
