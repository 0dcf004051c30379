"""Pure genetic operators on genomes: plain ``dict`` (axis path -> value) and a seeded RNG.

A genome holds a value for every axis that is active in it (:func:`active_axes`), each a value
its axis contains (:meth:`Axis.contains`). :func:`crossover` and :func:`mutate` may break that;
:func:`repair` restores it, inheriting a conditional gene from a parent where it was active
before sampling it fresh. No Optuna study is needed: :class:`EvolutionSampler` calls these.

A gene of an expression axis is a formula: it is sampled as a seed or a random tree, mutated
by the tree operators and crossed by subtree exchange
(:mod:`grape_evo.search.space.expressions`); every other gene through its distribution.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from grape_evo.search.space import expressions
from grape_evo.search.space.values import Axis, active_axes, value_in

__all__ = [
    "GENETIC_OPERATORS",
    "crossover",
    "mutate",
    "mutate_gene",
    "mutate_value",
    "random_genome",
    "repair",
    "sample_gene",
    "sample_value",
]


# ---------------------------------------------------------------------------------------------
# Sampling and mutation of single values.
# ---------------------------------------------------------------------------------------------


def _snap_float(d: FloatDistribution, v: float) -> float:
    if d.step is not None:
        n = round((v - d.low) / d.step)
        n_max = round((d.high - d.low) / d.step)
        v = d.low + min(max(n, 0), n_max) * d.step
    return float(min(max(v, d.low), d.high))


def _snap_int(d: IntDistribution, v: float) -> int:
    n = round((v - d.low) / d.step)
    n_max = (d.high - d.low) // d.step
    return int(d.low + min(max(n, 0), n_max) * d.step)


def sample_value(distribution: BaseDistribution, rng: random.Random) -> Any:
    """Draw one value uniformly from ``distribution`` (log-uniformly when ``log=True``)."""
    d = distribution
    if isinstance(d, CategoricalDistribution):
        return d.choices[rng.randrange(len(d.choices))]
    if isinstance(d, FloatDistribution):
        if d.low == d.high:
            return float(d.low)
        if d.log:
            return _snap_float(d, math.exp(rng.uniform(math.log(d.low), math.log(d.high))))
        if d.step is not None:
            n_max = round((d.high - d.low) / d.step)
            return _snap_float(d, d.low + rng.randint(0, n_max) * d.step)
        return _snap_float(d, rng.uniform(d.low, d.high))
    if isinstance(d, IntDistribution):
        if d.log:
            lo, hi = math.log(d.low - 0.5), math.log(d.high + 0.5)
            return _snap_int(d, math.exp(rng.uniform(lo, hi)))
        return int(d.low + rng.randint(0, (d.high - d.low) // d.step) * d.step)
    raise TypeError(f"unsupported distribution {d!r}")


def mutate_value(d: BaseDistribution, value: Any, rng: random.Random) -> Any:
    if isinstance(d, CategoricalDistribution):
        others = [c for c in d.choices if not value_in(c, (value,))]
        return others[rng.randrange(len(others))] if others else value
    if isinstance(d, FloatDistribution):
        if d.low == d.high:
            return float(d.low)
        if d.log:
            lo, hi = math.log(d.low), math.log(d.high)
            x = math.log(max(float(value), d.low)) + rng.gauss(0.0, 0.1 * (hi - lo))
            return _snap_float(d, math.exp(min(max(x, lo), hi)))
        new = _snap_float(d, float(value) + rng.gauss(0.0, 0.1 * (d.high - d.low)))
        if d.step is not None and new == value:  # a too-small step rounds back: move one step
            sign = 1 if rng.random() < 0.5 else -1
            new = _snap_float(d, float(value) + sign * d.step)
            if new == value:
                new = _snap_float(d, float(value) - sign * d.step)
        return new
    if isinstance(d, IntDistribution):
        value = int(value)
        if d.low == d.high:
            return value
        if d.log:
            lo, hi = math.log(d.low), math.log(d.high)
            x = math.log(max(value, d.low)) + rng.gauss(0.0, 0.1 * (hi - lo))
            new = _snap_int(d, math.exp(min(max(x, lo), hi)))
        else:
            n_steps = (d.high - d.low) // d.step
            k = max(1, round(abs(rng.gauss(0.0, 0.1 * n_steps))))
            new = _snap_int(d, value + (1 if rng.random() < 0.5 else -1) * k * d.step)
        if new == value:  # at a bound, or the step rounded to nothing: move one step inward
            new = value + d.step if value + d.step <= d.high else value - d.step
            new = _snap_int(d, new)
        return new
    raise TypeError(f"unsupported distribution {d!r}")


def sample_gene(axis: Axis, rng: random.Random) -> Any:
    """A fresh value of ``axis``: a formula (a seed or a random tree) on an expression axis,
    else a draw from its distribution."""
    if axis.kind == "expression":
        kind = expressions.EXPRESSION_KINDS[axis.path]
        return expressions.sample_formula(kind, axis.seeds, axis.max_depth, rng)
    return sample_value(axis.distribution(), rng)


def mutate_gene(axis: Axis, value: Any, rng: random.Random) -> Any:
    """A mutation of ``value`` on ``axis`` (a tree mutation of a formula, else
    :func:`mutate_value`)."""
    if axis.kind == "expression":
        kind = expressions.EXPRESSION_KINDS[axis.path]
        return expressions.mutate_formula(kind, value, axis.max_depth, rng)
    return mutate_value(axis.distribution(), value, rng)


# ---------------------------------------------------------------------------------------------
# Genetic operators on plain dict genomes.
# ---------------------------------------------------------------------------------------------


def _active_values(axes: Sequence[Axis], values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` restricted to axes that are active in it and hold a value they contain."""
    return {
        a.path: values[a.path]
        for a in active_axes(axes, values)
        if a.path in values and a.contains(values[a.path])
    }


def random_genome(axes: Sequence[Axis], rng: random.Random) -> dict[str, Any]:
    """A random genome: every active axis sampled from its distribution, in order."""
    return repair(axes, {}, [], rng)


def crossover(
    axes: Sequence[Axis],
    parent_a: Mapping[str, Any],
    parent_b: Mapping[str, Any],
    rng: random.Random,
    rate: float,
) -> dict[str, Any]:
    """Uniform crossover of two genomes.

    With probability ``rate`` each gene comes from parent A or B with equal chance; otherwise
    the child copies parent A. A gene only counts as present in a parent where it was active;
    when the chosen parent lacked the gene, the other parent's value is used (if it had it).
    In a crossing, a formula both parents hold (and that differs) is, with probability 1/2,
    the chosen parent's with one subtree exchanged for one of the other's.
    The result may hold genes that are inactive in the child: :func:`repair` resolves that.
    """
    a = _active_values(axes, parent_a)
    b = _active_values(axes, parent_b)
    do_cross = rng.random() < rate
    child: dict[str, Any] = {}
    for axis in axes:
        first, second = (a, b)
        if do_cross and rng.random() < 0.5:
            first, second = (b, a)
        if axis.path in first:
            child[axis.path] = first[axis.path]
            if (
                axis.kind == "expression"
                and do_cross
                and first[axis.path] != second.get(axis.path, first[axis.path])
                and rng.random() < 0.5
            ):
                kind = expressions.EXPRESSION_KINDS[axis.path]
                child[axis.path] = expressions.cross(
                    kind, first[axis.path], second[axis.path], axis.max_depth, rng
                )
        elif axis.path in second:
            child[axis.path] = second[axis.path]
    return child


def mutate(
    axes: Sequence[Axis], values: Mapping[str, Any], rng: random.Random, rate: float
) -> dict[str, Any]:
    """Mutate each present gene with probability ``rate``.

    Categorical: a different choice, uniformly. Float: a Gaussian step of 0.1 x range in
    (log-)space, clipped to the bounds and snapped to ``step``. Int: a step of at least one
    ``step`` (Gaussian size, 0.1 x range), clipped. Expression: one tree mutation. Genes absent
    from ``values`` are untouched.
    """
    out = dict(values)
    for axis in axes:
        if axis.path in out and rng.random() < rate:
            out[axis.path] = mutate_gene(axis, out[axis.path], rng)
    return out


def repair(
    axes: Sequence[Axis],
    child: Mapping[str, Any],
    parents: Sequence[Mapping[str, Any]],
    rng: random.Random,
) -> dict[str, Any]:
    """Make ``child`` a consistent genome.

    Walk the axes in order: an axis inactive in the child is dropped; an active axis keeps the
    child's value when it contains it, else inherits the value of the first parent (in the
    given order) in which the axis was active, else is sampled fresh.
    """
    parent_values = [_active_values(axes, p) for p in parents]
    out: dict[str, Any] = {}
    for axis in axes:
        if not axis.is_active(out):  # ``out`` holds active axes only
            continue
        if axis.path in child and axis.contains(child[axis.path]):
            value = child[axis.path]
        else:
            inherited = [p[axis.path] for p in parent_values if axis.path in p]
            value = inherited[0] if inherited else sample_gene(axis, rng)
        out[axis.path] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    """JSON-friendly Python scalar (numpy scalars -> builtins)."""
    if isinstance(value, np.generic):
        return value.item()
    return value


GENETIC_OPERATORS: dict[str, Callable[..., dict[str, Any]]] = {
    "crossover": crossover,
    "mutate": mutate,
    "repair": repair,
}
