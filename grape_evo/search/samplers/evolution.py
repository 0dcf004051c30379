"""Genome-aware genetic sampler over a typed conditional genome (DESIGN.md section 5).

The genome is a search space's axes (:class:`~grape_evo.search.space.Axis`) in declaration
order; a gene is an axis path and its value. An axis may be *conditional*: it is active only
when every axis named in its ``when`` clause is active and holds one of the listed values
(``when`` only refers to earlier axes). :class:`EvolutionSampler` is an
Optuna :class:`~optuna.samplers.BaseGASampler` that breeds whole genomes:

* generation 0 is the first ``population_size`` trials: enqueued trials (baselines) keep their
  params and are members like any other; the rest are random genomes that respect ``when``,
  except that trial ``n`` holds seed ``n mod k`` of each formula axis with ``k`` seeds (so a
  generation of at least baselines + ``k`` trials starts from every published form);
* generation ``g >= 1`` draws its parent pool from every COMPLETE trial of earlier generations:
  the elites (top ``ceil(elite_fraction * population_size)``) are copied in unchanged, the rest of
  the pool is filled by tournament selection; each child is two tournament-selected parents,
  uniform crossover, per-gene mutation, then :func:`repair`, which makes a conditional gene that
  is active in the child *inherit* its value from a parent where it was active (it is only
  sampled fresh when no parent had it).

The pure operators (:mod:`grape_evo.search.samplers.operators`) work on plain ``dict`` genomes
and a :class:`random.Random`, so they can be tested without Optuna; trials are ranked by
:mod:`grape_evo.search.samplers.ranking`. Membership is :meth:`Axis.contains` and activity
:func:`~grape_evo.search.space.values.active_axes`: the sampler, the space and the campaign
share one definition of both.

Optuna hooks: ``before_trial`` assigns the generation (``EvolutionSampler:generation``) and
computes the child genome, stored JSON-serialisable in the trial's system attrs under
``evolution:genome`` (parents' trial numbers under ``evolution:parents``);
``infer_relative_search_space`` / ``sample_relative`` return ``{}``; every ``trial.suggest_*``
call reaches ``sample_independent``, which answers from the stored genome. Enqueued
``fixed_params`` never reach the sampler (Optuna answers them first); they are also folded into
the genome before repair so the rest of the genome is consistent with them.

An expression gene is a formula, which Optuna cannot store: its parameter is a draw
(:attr:`Axis.param_name`), answered with :func:`~grape_evo.search.space.expressions.draw_of`
of the planned formula, and the formula itself is read from the stored genome by whoever
builds the candidate (``SearchSpace.suggest(trial, planned=genome)``). A trial's genes are
therefore read through :meth:`Axis.gene` (:func:`genes_of`), never from its params alone.
Two genomes are duplicates when their genes agree, formulas compared by canonical form.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from optuna.distributions import BaseDistribution
from optuna.samplers import BaseGASampler
from optuna.trial import FrozenTrial, TrialState

from grape_evo.search.samplers.operators import (
    crossover,
    mutate,
    mutate_gene,
    repair,
    sample_value,
)
from grape_evo.search.samplers.ranking import rank_trials
from grape_evo.search.space import expressions
from grape_evo.search.space.values import Axis, active_axes

if TYPE_CHECKING:
    from optuna.study import Study

__all__ = ["ELITES_KEY_PREFIX", "GENOME_KEY", "PARENTS_KEY", "EvolutionSampler", "genes_of"]

GENOME_KEY = "evolution:genome"
"""Trial system attr: the genome (axis path -> value) the sampler planned for it."""
PARENTS_KEY = "evolution:parents"
"""Trial system attr: trial numbers of the two parents (empty list in generation 0)."""
ELITES_KEY_PREFIX = "evolution:elites:"
"""Study system attr ``evolution:elites:<g>``: trial numbers of generation ``g``'s elites."""


def genes_of(axes: Sequence[Axis], trial: FrozenTrial) -> dict[str, Any]:
    """The genes ``trial`` was evaluated with: its parameters, an expression axis's draw
    turned into the formula planned in its genome (or the draw's own formula)."""
    planned = trial.system_attrs.get(GENOME_KEY)
    return {
        axis.path: axis.gene(trial.params[axis.param_name], planned)
        for axis in axes
        if axis.param_name in trial.params
    }


def _signature(axes: Sequence[Axis], genome: Mapping[str, Any]) -> tuple[Any, ...]:
    """What makes two genomes the same candidate: their genes, formulas by canonical form."""
    return tuple(
        (a.path, expressions.canonical(a.expression_kind, genome[a.path]))
        if a.expression_kind is not None
        else (a.path, genome[a.path])
        for a in axes
        if a.path in genome
    )


def _check_axes(axes: Sequence[Axis]) -> None:
    seen: set[str] = set()
    for axis in axes:
        if axis.path in seen:
            raise ValueError(f"duplicate axis path {axis.path!r}")
        for path, allowed in axis.when:
            if path not in seen:
                raise ValueError(
                    f"axis {axis.path!r}: condition on {path!r}, which is not an earlier axis"
                )
            if not isinstance(allowed, tuple):
                raise ValueError(f"axis {axis.path!r}: allowed values for {path!r} must be a tuple")
        seen.add(axis.path)


class EvolutionSampler(BaseGASampler):
    """Genetic sampler over a typed conditional genome, built on Optuna's ``BaseGASampler``.

    Args:
        axes: the genome, in declaration order (conditions refer to earlier axes); a space's
            ``SearchSpace.axes``.
        population_size: trials per generation (generation 0 = the first ``population_size``).
        elite_fraction: fraction of ``population_size`` (rounded up) kept as elites.
        tournament_size: contestants per tournament.
        mutation_rate: per-gene mutation probability; default ``1 / len(axes)``.
        crossover_rate: probability a child is a uniform crossover (else a copy of parent 1).
        seed: seed of the sampler's RNG (deterministic for a single process).
    """

    def __init__(
        self,
        axes: Sequence[Axis],
        population_size: int = 8,
        elite_fraction: float = 0.25,
        tournament_size: int = 3,
        mutation_rate: float | None = None,
        crossover_rate: float = 0.9,
        seed: int | None = None,
    ) -> None:
        axes = tuple(axes)
        if not axes:
            raise ValueError("at least one axis is required")
        _check_axes(axes)
        if population_size < 2:
            raise ValueError("population_size must be >= 2")
        if not 0.0 <= elite_fraction <= 1.0:
            raise ValueError("elite_fraction must be in [0, 1]")
        if tournament_size < 1:
            raise ValueError("tournament_size must be >= 1")
        if mutation_rate is None:
            mutation_rate = 1.0 / len(axes)
        if not 0.0 <= mutation_rate <= 1.0:
            raise ValueError("mutation_rate must be in [0, 1]")
        if not 0.0 <= crossover_rate <= 1.0:
            raise ValueError("crossover_rate must be in [0, 1]")
        super().__init__(population_size=population_size)
        self.axes = axes
        self._by_path = {a.path: a for a in axes}
        self._by_param = {a.param_name: a for a in axes}
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
        axis = self._by_param.get(param_name)
        if (
            axis is not None
            and axis.path in genome
            and axis.distribution() == param_distribution
            and axis.contains(genome[axis.path])
        ):
            if axis.kind == "expression":
                return expressions.draw_of(axis.seeds, genome[axis.path])
            return genome[axis.path]
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
            self._by_param[k].path: self._by_param[k].gene(v)
            for k, v in trial.system_attrs.get("fixed_params", {}).items()
            if k in self._by_param
        }
        parent_pool = self.get_parent_population(study, generation) if generation > 0 else []
        ranked = rank_trials(study, parent_pool)
        if not ranked:
            # Generation 0 starts from every seed formula: trial n holds seed n mod (seeds).
            child = {
                a.path: a.seeds[trial.number % len(a.seeds)]
                for a in self.axes
                if a.kind == "expression"
            }
            child.update(fixed)
            child = repair(self.axes, child, [], self._rng)
            return self._avoid_duplicate(study, child, [], set(fixed)), []
        p1 = self._tournament(ranked)
        others = [t for t in ranked if t is not p1] or ranked
        p2 = self._tournament(others)
        parents = [genes_of(self.axes, p1), genes_of(self.axes, p2)]
        child = crossover(self.axes, parents[0], parents[1], self._rng, self.crossover_rate)
        child = mutate(self.axes, child, self._rng, self.mutation_rate)
        child.update(fixed)
        child = repair(self.axes, child, parents, self._rng)
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
        seen = {
            _signature(self.axes, genes_of(self.axes, t))
            for t in study._get_trials(deepcopy=False, use_cache=True)
            if t.state in (TrialState.COMPLETE, TrialState.RUNNING, TrialState.PRUNED)
        }
        for _ in range(attempts):
            if _signature(self.axes, child) not in seen:
                break
            paths = [a.path for a in active_axes(self.axes, child) if a.path not in frozen]
            if not paths:
                break
            axis = self._by_path[paths[self._rng.randrange(len(paths))]]
            child = dict(child)
            child[axis.path] = mutate_gene(axis, child[axis.path], self._rng)
            child = repair(self.axes, child, parents, self._rng)
        return child
