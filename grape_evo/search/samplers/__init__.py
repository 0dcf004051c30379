"""The sampler and the pruner of a search space's study.

:func:`make_sampler` turns ``search.sampler`` into an Optuna sampler: ``evolution`` is ours
(:class:`~grape_evo.search.samplers.evolution.EvolutionSampler`, over the space's axes), the
others are Optuna's. :func:`make_pruner` turns ``search.pruner`` into an Optuna pruner.
"""

from __future__ import annotations

import warnings
from typing import Any

import optuna

from grape_evo.search.samplers.evolution import EvolutionSampler
from grape_evo.search.space import SAMPLERS, SearchSpace, SpaceError

__all__ = ["EvolutionSampler", "make_pruner", "make_sampler"]


def make_sampler(space: SearchSpace, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """The space's sampler, seeded with ``seed`` (default ``search.seed``); a space without
    axes is a single point (nothing to sample)."""
    settings = space.search
    seed = settings.seed if seed is None else seed
    name = settings.sampler
    if not space.axes:
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "evolution":
        return EvolutionSampler(space.axes, population_size=settings.population_size, seed=seed)
    if name == "tpe":
        with warnings.catch_warnings():  # `multivariate` and `group` are marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=settings.population_size, seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return _GridSampler(space.grid(), seed=seed)
    raise SpaceError(
        f"{space.source}: search.sampler: unknown sampler '{name}'; valid: {list(SAMPLERS)}"
    )


def make_pruner(space: SearchSpace) -> optuna.pruners.BasePruner:
    """The space's pruner. Reports are indexed by a global step over (task, seed, step), so a
    candidate always completes its first run (one task, one seed) before it can be pruned.

    In a space with formula axes the median pruner judges from the first evaluation on: that
    short run is the second stage of a formula's evaluation (after its cheap checks), since
    most grown formulas that pass the checks still do not learn."""
    name = space.search.pruner
    run_steps = space.budget.steps
    total_steps = run_steps * space.budget.seeds * len(space.tasks)
    if name == "median":
        formulas = any(a.kind == "expression" for a in space.axes)
        warmup = min(space.budget.eval_every, run_steps) if formulas else run_steps
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=warmup)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=run_steps, max_resource=total_steps)
    if name == "wilcoxon":
        evals_per_run = max(1, run_steps // space.budget.eval_every)
        return optuna.pruners.WilcoxonPruner(p_threshold=0.1, n_startup_steps=evals_per_run)
    return optuna.pruners.NopPruner()


class _GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler without its ``study.stop()`` once the grid is covered: campaigns
    ask and tell their trials (stop is for ``study.optimize`` only) and stop at their budget;
    a point asked again is evaluated once (the campaign reuses its result)."""

    def after_trial(self, *_args: Any, **_kwargs: Any) -> None:
        return None
