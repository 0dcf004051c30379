"""Genome-aware genetic sampler over a typed conditional genome (DESIGN.md section 5).

A search space is a list of :class:`Gene` objects in declaration order. A gene may be
*conditional*: it is active only when every gene named in its ``when`` clause is active and holds
one of the listed values (``when`` only refers to earlier genes). :class:`EvolutionSampler` is an
Optuna :class:`~optuna.samplers.BaseGASampler` that breeds whole genomes:

* generation 0 is the first ``population_size`` trials: enqueued trials (baselines) keep their
  params and are members like any other; the rest are random genomes that respect ``when``;
* generation ``g >= 1`` draws its parent pool from every COMPLETE trial of earlier generations:
  the elites (top ``ceil(elite_fraction * population_size)``) are copied in unchanged, the rest of
  the pool is filled by tournament selection; each child is two tournament-selected parents,
  uniform crossover, per-gene mutation, then :func:`repair`, which makes a conditional gene that
  is active in the child *inherit* its value from a parent where it was active (it is only
  sampled fresh when no parent had it).

The pure operators :func:`crossover`, :func:`mutate` and :func:`repair` (collected in
:data:`GENETIC_OPERATORS`) work on plain ``dict`` genomes and a :class:`random.Random`, so they can
be tested without Optuna.

Optuna hooks: ``before_trial`` assigns the generation (``EvolutionSampler:generation``) and
computes the child genome, stored JSON-serialisable in the trial's system attrs under
``evolution:genome`` (parents' trial numbers under ``evolution:parents``);
``infer_relative_search_space`` / ``sample_relative`` return ``{}``; every ``trial.suggest_*``
call reaches ``sample_independent``, which answers from the stored genome. Enqueued
``fixed_params`` never reach the sampler (Optuna answers them first); they are also folded into
the genome before repair so the rest of the genome is consistent with them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import BaseGASampler
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

if TYPE_CHECKING:
    from optuna.study import Study

__all__ = [
    "ELITES_KEY_PREFIX",
    "GENETIC_OPERATORS",
    "GENOME_KEY",
    "PARENTS_KEY",
    "EvolutionSampler",
    "Gene",
    "active_genes",
    "contains",
    "crossover",
    "mutate",
    "random_genome",
    "rank_trials",
    "repair",
    "sample_value",
]

GENOME_KEY = "evolution:genome"
"""Trial system attr: the genome (gene name -> external value) the sampler planned for it."""
PARENTS_KEY = "evolution:parents"
"""Trial system attr: trial numbers of the two parents (empty list in generation 0)."""
ELITES_KEY_PREFIX = "evolution:elites:"
"""Study system attr ``evolution:elites:<g>``: trial numbers of generation ``g``'s elites."""

Condition = tuple[tuple[str, tuple[Any, ...]], ...]


@dataclass(frozen=True)
class Gene:
    """One searchable axis: a name, an Optuna distribution, and an optional condition.

    ``when`` is a tuple of ``(gene_name, allowed_values)`` pairs; the gene is active only if
    every referenced gene is active and its value is one of ``allowed_values``. Referenced genes
    must be declared earlier in the gene list.
    """

    name: str
    distribution: BaseDistribution
    when: Condition = ()


def active_genes(genes: Sequence[Gene], values: Mapping[str, Any]) -> list[Gene]:
    """Genes active under ``values``, in declaration order.

    A gene is active when every gene in its ``when`` clause is active and has one of the listed
    values (a missing value counts as not matching).
    """
    active: list[Gene] = []
    active_names: set[str] = set()
    for gene in genes:
        if all(
            name in active_names and name in values and _value_in(values[name], allowed)
            for name, allowed in gene.when
        ):
            active.append(gene)
            active_names.add(gene.name)
    return active


def _value_in(value: Any, allowed: Sequence[Any]) -> bool:
    # Type-aware membership: ``True in (1,)`` must not hold for a categorical gene.
    return any(type(value) is type(a) and value == a for a in allowed) or any(
        _is_number(value) and _is_number(a) and value == a for a in allowed
    )


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _check_genes(genes: Sequence[Gene]) -> None:
    seen: set[str] = set()
    for gene in genes:
        if gene.name in seen:
            raise ValueError(f"duplicate gene name {gene.name!r}")
        for name, allowed in gene.when:
            if name not in seen:
                raise ValueError(
                    f"gene {gene.name!r}: condition on {name!r}, which is not an earlier gene"
                )
            if not isinstance(allowed, tuple):
                raise ValueError(f"gene {gene.name!r}: allowed values for {name!r} must be a tuple")
        seen.add(gene.name)


def contains(distribution: BaseDistribution, value: Any) -> bool:
    """Whether ``value`` (external representation) is a legal value of ``distribution``."""
    if isinstance(distribution, CategoricalDistribution):
        return _value_in(value, distribution.choices)
    if not _is_number(value):
        return False
    if isinstance(distribution, IntDistribution) and float(value) != int(value):
        return False
    try:
        return bool(distribution._contains(distribution.to_internal_repr(value)))
    except (ValueError, TypeError):
        return False


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


def _mutate_value(d: BaseDistribution, value: Any, rng: random.Random) -> Any:
    if isinstance(d, CategoricalDistribution):
        others = [c for c in d.choices if not (_value_in(c, (value,)) and _value_in(value, (c,)))]
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


# ---------------------------------------------------------------------------------------------
# Genetic operators on plain dict genomes.
# ---------------------------------------------------------------------------------------------


def _active_values(genes: Sequence[Gene], values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` restricted to genes that are active in it and hold a legal value."""
    return {
        g.name: values[g.name]
        for g in active_genes(genes, values)
        if g.name in values and contains(g.distribution, values[g.name])
    }


def random_genome(genes: Sequence[Gene], rng: random.Random) -> dict[str, Any]:
    """A random genome: every active gene sampled from its distribution, in order."""
    return repair(genes, {}, [], rng)


def crossover(
    genes: Sequence[Gene],
    parent_a: Mapping[str, Any],
    parent_b: Mapping[str, Any],
    rng: random.Random,
    rate: float,
) -> dict[str, Any]:
    """Uniform crossover of two genomes.

    With probability ``rate`` each gene comes from parent A or B with equal chance; otherwise
    the child copies parent A. A gene only counts as present in a parent where it was active;
    when the chosen parent lacked the gene, the other parent's value is used (if it had it).
    The result may hold genes that are inactive in the child: :func:`repair` resolves that.
    """
    a = _active_values(genes, parent_a)
    b = _active_values(genes, parent_b)
    do_cross = rng.random() < rate
    child: dict[str, Any] = {}
    for gene in genes:
        first, second = (a, b)
        if do_cross and rng.random() < 0.5:
            first, second = (b, a)
        if gene.name in first:
            child[gene.name] = first[gene.name]
        elif gene.name in second:
            child[gene.name] = second[gene.name]
    return child


def mutate(
    genes: Sequence[Gene], values: Mapping[str, Any], rng: random.Random, rate: float
) -> dict[str, Any]:
    """Mutate each present gene with probability ``rate``.

    Categorical: a different choice, uniformly. Float: a Gaussian step of 0.1 x range in
    (log-)space, clipped to the bounds and snapped to ``step``. Int: a step of at least one
    ``step`` (Gaussian size, 0.1 x range), clipped. Genes absent from ``values`` are untouched.
    """
    out = dict(values)
    for gene in genes:
        if gene.name in out and rng.random() < rate:
            out[gene.name] = _mutate_value(gene.distribution, out[gene.name], rng)
    return out


def repair(
    genes: Sequence[Gene],
    child: Mapping[str, Any],
    parents: Sequence[Mapping[str, Any]],
    rng: random.Random,
) -> dict[str, Any]:
    """Make ``child`` a consistent genome.

    Walk the genes in order: a gene inactive in the child is dropped; an active gene keeps the
    child's value when it has a legal one, else inherits the value of the first parent (in the
    given order) in which the gene was active, else is sampled fresh.
    """
    parent_values = [_active_values(genes, p) for p in parents]
    out: dict[str, Any] = {}
    active_names: set[str] = set()
    for gene in genes:
        if not all(
            name in active_names and _value_in(out[name], allowed) for name, allowed in gene.when
        ):
            continue
        if gene.name in child and contains(gene.distribution, child[gene.name]):
            value = child[gene.name]
        else:
            inherited = [p[gene.name] for p in parent_values if gene.name in p]
            value = inherited[0] if inherited else sample_value(gene.distribution, rng)
        out[gene.name] = _plain(value)
        active_names.add(gene.name)
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


# ---------------------------------------------------------------------------------------------
# Ranking.
# ---------------------------------------------------------------------------------------------


def _nondomination_rank(loss: np.ndarray) -> np.ndarray:
    try:
        from optuna.study._multi_objective import _fast_non_domination_rank
    except ImportError:  # pragma: no cover - private API moved
        n = len(loss)
        ranks = np.full(n, -1, dtype=int)
        remaining = set(range(n))
        rank = 0
        while remaining:
            front = [
                i
                for i in remaining
                if not any(
                    np.all(loss[j] <= loss[i]) and np.any(loss[j] < loss[i])
                    for j in remaining
                    if j != i
                )
            ]
            for i in front:
                ranks[i] = rank
            remaining -= set(front)
            rank += 1
        return ranks
    return _fast_non_domination_rank(loss)


def _crowding_distance(loss: np.ndarray) -> np.ndarray:
    n, m = loss.shape
    dist = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for k in range(m):
        order = np.argsort(loss[:, k], kind="stable")
        col = loss[order, k]
        dist[order[0]] = dist[order[-1]] = np.inf
        span = col[-1] - col[0]
        if span == 0 or not np.isfinite(span):
            continue
        dist[order[1:-1]] += (col[2:] - col[:-2]) / span
    return dist


def rank_trials(study: Study, trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """Complete trials sorted best first.

    Single objective: by value in the study's direction. Multi-objective: by non-domination rank,
    then by crowding distance (larger first). Ties go to the earlier trial.
    """
    trials = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None]
    if not trials:
        return []
    signs = np.array([-1.0 if d == StudyDirection.MAXIMIZE else 1.0 for d in study.directions])
    loss = np.array([t.values for t in trials], dtype=float) * signs
    loss = np.nan_to_num(loss, nan=np.inf)
    if loss.shape[1] == 1:
        keys = [(float(loss[i, 0]), 0.0, t.number) for i, t in enumerate(trials)]
    else:
        ranks = _nondomination_rank(loss)
        crowd = np.zeros(len(trials))
        for r in np.unique(ranks):
            idx = np.flatnonzero(ranks == r)
            crowd[idx] = _crowding_distance(loss[idx])
        keys = [(float(ranks[i]), -float(crowd[i]), t.number) for i, t in enumerate(trials)]
    order = sorted(range(len(trials)), key=lambda i: keys[i])
    return [trials[i] for i in order]


# ---------------------------------------------------------------------------------------------
# The sampler.
# ---------------------------------------------------------------------------------------------


class EvolutionSampler(BaseGASampler):
    """Genetic sampler over a typed conditional genome, built on Optuna's ``BaseGASampler``.

    Args:
        genes: the genome, in declaration order (conditions refer to earlier genes).
        population_size: trials per generation (generation 0 = the first ``population_size``).
        elite_fraction: fraction of ``population_size`` (rounded up) kept as elites.
        tournament_size: contestants per tournament.
        mutation_rate: per-gene mutation probability; default ``1 / len(genes)``.
        crossover_rate: probability a child is a uniform crossover (else a copy of parent 1).
        seed: seed of the sampler's RNG (deterministic for a single process).
    """

    def __init__(
        self,
        genes: Sequence[Gene],
        population_size: int = 8,
        elite_fraction: float = 0.25,
        tournament_size: int = 3,
        mutation_rate: float | None = None,
        crossover_rate: float = 0.9,
        seed: int | None = None,
    ) -> None:
        genes = tuple(genes)
        if not genes:
            raise ValueError("at least one gene is required")
        _check_genes(genes)
        if population_size < 2:
            raise ValueError("population_size must be >= 2")
        if not 0.0 <= elite_fraction <= 1.0:
            raise ValueError("elite_fraction must be in [0, 1]")
        if tournament_size < 1:
            raise ValueError("tournament_size must be >= 1")
        if mutation_rate is None:
            mutation_rate = 1.0 / len(genes)
        if not 0.0 <= mutation_rate <= 1.0:
            raise ValueError("mutation_rate must be in [0, 1]")
        if not 0.0 <= crossover_rate <= 1.0:
            raise ValueError("crossover_rate must be in [0, 1]")
        super().__init__(population_size=population_size)
        self.genes = genes
        self._by_name = {g.name: g for g in genes}
        self.elite_fraction = elite_fraction
        self.n_elites = math.ceil(elite_fraction * population_size)
        self.tournament_size = tournament_size
        self.mutation_rate = mutation_rate
        self.crossover_rate = crossover_rate
        self._rng = random.Random(seed)

    # -- Optuna sampler interface -------------------------------------------------------------

    def reseed_rng(self) -> None:
        self._rng.seed()

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._ensure_genome(study, trial)

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        genome = self._ensure_genome(study, trial)
        if param_name in genome and contains(param_distribution, genome[param_name]):
            return genome[param_name]
        # Not planned (unknown name, unexpected activation, or a changed distribution).
        return sample_value(param_distribution, self._rng)

    # -- GA interface ------------------------------------------------------------------------

    def select_parent(self, study: Study, generation: int) -> list[FrozenTrial]:
        """Parent pool of ``generation``: elites + tournament picks from all earlier trials.

        The pool holds at most ``population_size`` trials. Elite trial numbers are stored in the
        study system attr ``evolution:elites:<generation>``.
        """
        pool = [
            t
            for t in study._get_trials(deepcopy=False, states=[TrialState.COMPLETE], use_cache=True)
            if t.system_attrs.get(self._get_generation_key(), -1) < generation
        ]
        ranked = rank_trials(study, pool)
        assert self.population_size is not None
        elites = ranked[: min(self.n_elites, len(ranked))]
        study._storage.set_study_system_attr(
            study._study_id, ELITES_KEY_PREFIX + str(generation), [t.number for t in elites]
        )
        rest = ranked[len(elites) :]
        chosen = list(elites)
        while rest and len(chosen) < self.population_size:
            picked = self._tournament(rest)
            chosen.append(picked)
            rest.remove(picked)
        return chosen

    def get_elites(self, study: Study, generation: int) -> list[FrozenTrial]:
        """The elites of ``generation`` (best first); empty for generation 0."""
        if generation == 0:
            return []
        self.get_parent_population(study, generation)  # makes sure selection has run
        numbers = study._storage.get_study_system_attrs(study._study_id).get(
            ELITES_KEY_PREFIX + str(generation), []
        )
        by_number = {t.number: t for t in study._get_trials(deepcopy=False, use_cache=False)}
        return [by_number[n] for n in numbers if n in by_number]

    # -- internals -----------------------------------------------------------------------------

    def _tournament(self, ranked: Sequence[FrozenTrial]) -> FrozenTrial:
        """Best of ``tournament_size`` draws (without replacement) from a best-first list."""
        k = min(self.tournament_size, len(ranked))
        return ranked[min(self._rng.sample(range(len(ranked)), k))]

    def _ensure_genome(self, study: Study, trial: FrozenTrial) -> dict[str, Any]:
        genome = trial.system_attrs.get(GENOME_KEY)
        if genome is None:
            genome = study._storage.get_trial_system_attrs(trial._trial_id).get(GENOME_KEY)
        if genome is not None:
            return genome
        genome, parents = self._make_genome(study, trial)
        storage = study._storage
        storage.set_trial_system_attr(trial._trial_id, GENOME_KEY, genome)
        storage.set_trial_system_attr(trial._trial_id, PARENTS_KEY, [p.number for p in parents])
        return genome

    def _make_genome(
        self, study: Study, trial: FrozenTrial
    ) -> tuple[dict[str, Any], list[FrozenTrial]]:
        generation = self.get_trial_generation(study, trial)
        fixed = {
            k: v
            for k, v in trial.system_attrs.get("fixed_params", {}).items()
            if k in self._by_name
        }
        parent_pool = self.get_parent_population(study, generation) if generation > 0 else []
        ranked = rank_trials(study, parent_pool)
        if not ranked:
            child = dict(fixed)
            return repair(self.genes, child, [], self._rng), []
        p1 = self._tournament(ranked)
        others = [t for t in ranked if t is not p1] or ranked
        p2 = self._tournament(others)
        child = crossover(self.genes, p1.params, p2.params, self._rng, self.crossover_rate)
        child = mutate(self.genes, child, self._rng, self.mutation_rate)
        child.update(fixed)
        parents = [p1.params, p2.params]
        child = repair(self.genes, child, parents, self._rng)
        return self._avoid_duplicate(study, child, parents, set(fixed)), [p1, p2]

    def _avoid_duplicate(
        self,
        study: Study,
        child: dict[str, Any],
        parents: Sequence[Mapping[str, Any]],
        frozen: set[str],
        attempts: int = 8,
    ) -> dict[str, Any]:
        """Re-mutate one random non-fixed gene while ``child`` duplicates an existing trial."""
        seen = [
            t.params
            for t in study._get_trials(deepcopy=False, use_cache=True)
            if t.state in (TrialState.COMPLETE, TrialState.RUNNING, TrialState.PRUNED)
        ]
        for _ in range(attempts):
            if child not in seen:
                break
            names = [g.name for g in active_genes(self.genes, child) if g.name not in frozen]
            if not names:
                break
            gene = self._by_name[names[self._rng.randrange(len(names))]]
            child = dict(child)
            child[gene.name] = _mutate_value(gene.distribution, child[gene.name], self._rng)
            child = repair(self.genes, child, parents, self._rng)
        return child
