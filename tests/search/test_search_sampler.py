"""Tests for the genome-aware evolution sampler (grape_evo.search.samplers) over space axes."""

from __future__ import annotations

import math
import random

import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grape_evo.search.samplers import EvolutionSampler, make_pruner, make_sampler
from grape_evo.search.samplers.evolution import ELITES_KEY_PREFIX, GENOME_KEY, PARENTS_KEY
from grape_evo.search.samplers.operators import (
    GENETIC_OPERATORS,
    crossover,
    mutate,
    random_genome,
    repair,
)
from grape_evo.search.space import Axis, SearchSpace, parse_space
from grape_evo.search.space.values import active_axes

optuna.logging.set_verbosity(optuna.logging.WARNING)

SURROGATES = ("reinforce", "ppo_clip", "gspo", "cispo")

GENES = (
    Axis("advantage", "categorical", choices=("group_zscore", "group_mean", "rloo", "rank")),
    Axis("surrogate", "categorical", choices=SURROGATES),
    Axis("clip_high", "float", low=0.1, high=0.4, when=(("surrogate", ("ppo_clip", "gspo")),)),
    Axis(
        "clip_mode",
        "categorical",
        choices=("sym", "asym"),
        when=(("surrogate", ("ppo_clip", "gspo")),),
    ),
    Axis("clip_low", "float", low=0.05, high=0.3, step=0.05, when=(("clip_mode", ("asym",)),)),
    Axis("kl_coef", "float", low=1e-4, high=0.1, log=True),
    Axis("group", "int", low=2, high=16, step=2),
    Axis("epochs", "int", low=1, high=64, log=True),
)


def assert_consistent(axes, genome):
    active = {a.path for a in active_axes(axes, genome)}
    assert set(genome) == active, (genome, active)
    by_path = {a.path: a for a in axes}
    for path, value in genome.items():
        assert by_path[path].contains(value), (path, value)


def suggest_genome(trial, axes=GENES):
    """What the campaign does: suggest active axes only, in declaration order."""
    values = {}
    for axis in axes:
        if axis in active_axes(axes, values):
            values[axis.path] = trial._suggest(axis.path, axis.distribution())
    return values


# ---------------------------------------------------------------------------------------------
# Pure operators.
# ---------------------------------------------------------------------------------------------


def test_active_axes_follows_conditions():
    assert [a.path for a in active_axes(GENES, {"surrogate": "reinforce"})] == [
        "advantage",
        "surrogate",
        "kl_coef",
        "group",
        "epochs",
    ]
    names = [a.path for a in active_axes(GENES, {"surrogate": "gspo", "clip_mode": "asym"})]
    assert "clip_high" in names and "clip_low" in names
    # clip_low's condition refers to clip_mode, which is inactive under reinforce.
    names = [a.path for a in active_axes(GENES, {"surrogate": "cispo", "clip_mode": "asym"})]
    assert "clip_low" not in names and "clip_mode" not in names


def test_operator_registry():
    assert GENETIC_OPERATORS["crossover"] is crossover
    assert GENETIC_OPERATORS["mutate"] is mutate
    assert GENETIC_OPERATORS["repair"] is repair


@settings(max_examples=300, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    cross_rate=st.floats(0, 1),
    mut_rate=st.floats(0, 1),
)
def test_offspring_satisfy_conditions(seed, cross_rate, mut_rate):
    rng = random.Random(seed)
    a, b = random_genome(GENES, rng), random_genome(GENES, rng)
    assert_consistent(GENES, a)
    assert_consistent(GENES, b)
    child = crossover(GENES, a, b, rng, cross_rate)
    child = mutate(GENES, child, rng, mut_rate)
    child = repair(GENES, child, [a, b], rng)
    assert_consistent(GENES, child)


def test_crossover_takes_each_gene_from_a_parent():
    rng = random.Random(0)
    seen_from = {"a": 0, "b": 0}
    for _ in range(200):
        a, b = random_genome(GENES, rng), random_genome(GENES, rng)
        child = repair(GENES, crossover(GENES, a, b, rng, 1.0), [a, b], rng)
        child = mutate(GENES, child, rng, 0.0)
        for name in set(a) & set(b) & set(child):
            assert child[name] in (a[name], b[name])
            if a[name] != b[name]:
                seen_from["a" if child[name] == a[name] else "b"] += 1
    assert seen_from["a"] > 100 and seen_from["b"] > 100


def test_crossover_rate_zero_copies_parent_a():
    rng = random.Random(1)
    for _ in range(50):
        a, b = random_genome(GENES, rng), random_genome(GENES, rng)
        assert repair(GENES, crossover(GENES, a, b, rng, 0.0), [a, b], rng) == a


def test_conditional_gene_is_inherited_not_rerandomised():
    a = {"advantage": "rloo", "surrogate": "ppo_clip", "clip_high": 0.15, "clip_mode": "sym"}
    a |= {"kl_coef": 0.01, "group": 4, "epochs": 2}
    b = {"advantage": "rank", "surrogate": "gspo", "clip_high": 0.35, "clip_mode": "sym"}
    b |= {"kl_coef": 0.001, "group": 8, "epochs": 8}
    seen = set()
    for seed in range(200):
        rng = random.Random(seed)
        child = mutate(GENES, crossover(GENES, a, b, rng, 1.0), rng, 0.0)
        child = repair(GENES, child, [a, b], rng)
        assert child["surrogate"] in ("ppo_clip", "gspo")
        seen.add(child["clip_high"])
    assert seen == {0.15, 0.35}


def test_repair_inherits_from_the_parent_where_the_gene_was_active():
    rng = random.Random(0)
    a = {"advantage": "rloo", "surrogate": "reinforce", "kl_coef": 0.01, "group": 4, "epochs": 2}
    b = {"advantage": "rank", "surrogate": "gspo", "clip_high": 0.33, "clip_mode": "asym"}
    b |= {"clip_low": 0.1, "kl_coef": 0.001, "group": 8, "epochs": 8}
    # The child's surrogate mutated to ppo_clip: the clip genes come from b, not from chance.
    child = dict(a, surrogate="ppo_clip")
    fixed = repair(GENES, child, [a, b], rng)
    assert fixed["clip_high"] == 0.33 and fixed["clip_mode"] == "asym" and fixed["clip_low"] == 0.1
    # Preference order follows the parents argument.
    c = dict(b, clip_high=0.2)
    assert repair(GENES, child, [c, b], rng)["clip_high"] == 0.2
    # Neither parent had it: sampled fresh within the distribution.
    fresh = repair(GENES, child, [a, a], rng)
    assert 0.1 <= fresh["clip_high"] <= 0.4
    assert_consistent(GENES, fresh)
    # Inactive genes are dropped.
    dropped = repair(GENES, dict(b, surrogate="cispo"), [b], rng)
    assert "clip_high" not in dropped and "clip_low" not in dropped
    assert_consistent(GENES, dropped)


def test_mutation_respects_bounds_steps_and_changes_categoricals():
    rng = random.Random(3)
    for _ in range(300):
        g = random_genome(GENES, rng)
        m = mutate(GENES, g, rng, 1.0)
        assert set(m) == set(g)
        for axis in GENES:
            if axis.path in m:
                assert axis.contains(m[axis.path]), (axis.path, m[axis.path])
        assert m["advantage"] != g["advantage"] and m["surrogate"] != g["surrogate"]
        assert m["group"] % 2 == 0 and m["group"] != g["group"]
        assert isinstance(m["epochs"], int) and m["epochs"] != g["epochs"]
        if "clip_low" in m:
            assert math.isclose(round(m["clip_low"] / 0.05) * 0.05, m["clip_low"])
    assert mutate(GENES, g, rng, 0.0) == g


def test_invalid_axis_lists_are_rejected():
    with pytest.raises(ValueError, match="earlier axis"):
        EvolutionSampler([Axis("a", "float", low=0.0, high=1.0, when=(("b", (1,)),))])
    with pytest.raises(ValueError, match="duplicate"):
        EvolutionSampler([Axis("a", "float", low=0.0, high=1.0)] * 2)
    with pytest.raises(ValueError, match="at least one axis"):
        EvolutionSampler([])


# ---------------------------------------------------------------------------------------------
# Through Optuna.
# ---------------------------------------------------------------------------------------------

TOY = (
    Axis("x", "float", low=0.0, high=1.0),
    Axis("y", "categorical", choices=("a", "b", "c")),
    Axis("c", "float", low=0.0, high=1.0, when=(("y", ("a", "b")),)),
    Axis("n", "int", low=1, high=10),
)


def toy_objective(trial):
    p = suggest_genome(trial, TOY)
    value = -((p["x"] - 0.3) ** 2) - (p["y"] == "b") - 0.1 * abs(p["n"] - 7) / 10
    if "c" in p:
        value += 0.2 - (p["c"] - 0.6) ** 2
    return value


def run_study(seed=0, n_trials=48, **kwargs):
    sampler = EvolutionSampler(TOY, population_size=8, seed=seed, **kwargs)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(toy_objective, n_trials=n_trials)
    return study, sampler


def generation_of(sampler, trial):
    return trial.system_attrs[sampler._get_generation_key()]


def test_elitism_keeps_the_best_and_improves():
    study, sampler = run_study(seed=0)
    trials = study.trials
    gens = [generation_of(sampler, t) for t in trials]
    assert gens == sorted(gens) and gens[:8] == [0] * 8 and max(gens) == 5
    for t in trials:
        assert_consistent(TOY, t.params)
        assert t.params == t.system_attrs[GENOME_KEY]
    prev_best = -math.inf
    for g in range(1, 6):
        pool = sampler.get_parent_population(study, g)
        best_pool = max(t.value for t in pool)
        assert best_pool >= prev_best
        prev_best = best_pool
        earlier = [t for t in trials if generation_of(sampler, t) < g]
        best_earlier = max(earlier, key=lambda t: t.value)
        elites = sampler.get_elites(study, g)
        assert len(elites) == 2
        assert elites[0].params == best_earlier.params
        numbers = study._storage.get_study_system_attrs(study._study_id)[ELITES_KEY_PREFIX + str(g)]
        assert numbers == [t.number for t in elites]
        assert {t.number for t in elites} <= {t.number for t in pool}
        for t in trials:
            if generation_of(sampler, t) == g:
                assert set(t.system_attrs[PARENTS_KEY]) <= {p.number for p in pool}
    best_gen0 = max(t.value for t in trials if generation_of(sampler, t) == 0)
    assert study.best_value > best_gen0


def test_deterministic_given_seed():
    s1, _ = run_study(seed=7, n_trials=24)
    s2, _ = run_study(seed=7, n_trials=24)
    assert [t.params for t in s1.trials] == [t.params for t in s2.trials]
    s3, _ = run_study(seed=8, n_trials=24)
    assert [t.params for t in s1.trials] != [t.params for t in s3.trials]


def test_enqueued_trials_are_kept_and_used_as_parents():
    sampler = EvolutionSampler(TOY, population_size=4, seed=1, mutation_rate=0.0)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    best = {"x": 0.3, "y": "a", "c": 0.6, "n": 7}
    partial = {"y": "c", "x": 0.9}
    study.enqueue_trial(best)
    study.enqueue_trial(partial)
    study.optimize(toy_objective, n_trials=12)
    t0, t1 = study.trials[:2]
    assert t0.params == best
    assert {k: t1.params[k] for k in partial} == partial
    assert set(t1.params) == {"x", "y", "n"}  # c is inactive under y == "c"
    assert generation_of(sampler, t0) == generation_of(sampler, t1) == 0
    assert sampler.get_elites(study, 1)[0].number == 0
    gen1 = [t for t in study.trials if generation_of(sampler, t) == 1]
    assert any(0 in t.system_attrs[PARENTS_KEY] for t in gen1)


def test_enqueued_partial_params_steer_the_rest_of_a_child_genome():
    sampler = EvolutionSampler(TOY, population_size=2, seed=0)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(toy_objective, n_trials=2)
    study.enqueue_trial({"y": "b"})
    study.optimize(toy_objective, n_trials=1)
    t = study.trials[-1]
    assert generation_of(sampler, t) == 1 and t.params["y"] == "b"
    assert_consistent(TOY, t.params)


def test_minimize_direction():
    sampler = EvolutionSampler(TOY, population_size=6, seed=2)
    study = optuna.create_study(direction="minimize", sampler=sampler)
    study.optimize(lambda t: -toy_objective(t), n_trials=30)
    best_gen0 = min(t.value for t in study.trials[:6])
    elites = sampler.get_elites(study, 1)
    assert elites[0].value == best_gen0
    assert study.best_value <= best_gen0


def test_multi_objective():
    sampler = EvolutionSampler(TOY, population_size=6, seed=3)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)

    def objective(trial):
        v = toy_objective(trial)
        return v, trial.params["n"]

    study.optimize(objective, n_trials=30)
    assert max(generation_of(sampler, t) for t in study.trials) == 4
    for t in study.trials:
        assert_consistent(TOY, t.params)
    earlier = [t for t in study.trials if generation_of(sampler, t) < 4]

    def dominated(t):
        return any(
            o.values[0] >= t.values[0] and o.values[1] <= t.values[1] and o.values != t.values
            for o in earlier
        )

    elites = sampler.get_elites(study, 4)
    assert len(elites) == 2 and not any(dominated(t) for t in elites)


def test_ask_tell_with_failures_and_pruned_trials():
    sampler = EvolutionSampler(TOY, population_size=4, seed=4)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for i in range(20):
        trial = study.ask()
        value = toy_objective(trial)
        if i % 5 == 1:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        elif i % 5 == 2:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, value)
    complete = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert len(complete) == 12
    assert max(generation_of(sampler, t) for t in complete) >= 2


def test_unexpected_parameter_falls_back_to_random():
    sampler = EvolutionSampler(TOY, population_size=2, seed=5)
    study = optuna.create_study(sampler=sampler)

    def objective(trial):
        p = suggest_genome(trial, TOY)
        extra = trial.suggest_int("extra", 0, 3)
        c = trial.suggest_float("c", 0.0, 1.0)  # even when inactive in the planned genome
        assert 0 <= extra <= 3 and 0.0 <= c <= 1.0
        return p["x"]

    study.optimize(objective, n_trials=6)


def test_a_changed_distribution_is_not_answered_from_the_genome():
    sampler = EvolutionSampler(TOY, population_size=2, seed=6)
    study = optuna.create_study(sampler=sampler)
    trial = study.ask()
    planned = study._storage.get_trial_system_attrs(trial._trial_id)[GENOME_KEY]
    assert 0.0 <= planned["x"] <= 1.0
    # "x" asked on another range: the planned value lies outside it, so a fresh one is drawn.
    assert 2.0 <= trial.suggest_float("x", 2.0, 3.0) <= 3.0
    # "y" asked as declared: the planned value.
    assert trial.suggest_categorical("y", ["a", "b", "c"]) == planned["y"]


# ---------------------------------------------------------------------------------------------
# make_sampler / make_pruner.
# ---------------------------------------------------------------------------------------------

SPACE = {
    "tasks": ["addition", "reverse"],
    "base": "grpo",
    "budget": {"steps": 40, "seeds": 3, "eval_every": 10},
    "axes": {
        "surrogate.name": {"choices": ["ppo_clip", "reinforce"]},
        "surrogate.clip_high": {
            "low": 0.1,
            "high": 0.3,
            "step": 0.1,
            "when": {"surrogate.name": ["ppo_clip"]},
        },
        "epochs": {"low": 1, "high": 2},
    },
    "search": {"trials": 4, "population_size": 5, "seed": 11},
}


def space_with(**search) -> SearchSpace:
    return parse_space({**SPACE, "search": {**SPACE["search"], **search}})


def first_genomes(sampler, n=6):
    study = optuna.create_study(sampler=sampler)
    space = space_with()
    for _ in range(n):
        trial = study.ask()
        space.suggest(trial)
        study.tell(trial, 0.0)
    return [t.params for t in study.trials]


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("evolution", EvolutionSampler),
        ("tpe", optuna.samplers.TPESampler),
        ("nsga2", optuna.samplers.NSGAIISampler),
        ("cmaes", optuna.samplers.CmaEsSampler),
        ("random", optuna.samplers.RandomSampler),
        ("grid", optuna.samplers.GridSampler),
    ],
)
def test_make_sampler_builds_the_named_sampler(name, kind):
    sampler = make_sampler(space_with(sampler=name))
    # The grid sampler is Optuna's, without its study.stop(): campaigns ask and tell.
    assert type(sampler) is kind if name != "grid" else isinstance(sampler, kind)


def test_the_evolution_sampler_breeds_the_space_axes():
    space = space_with()
    sampler = make_sampler(space)
    assert sampler.axes == space.axes and sampler.population_size == 5
    # The seed is search.seed unless given.
    assert first_genomes(make_sampler(space)) == first_genomes(make_sampler(space, seed=11))
    assert first_genomes(make_sampler(space)) != first_genomes(make_sampler(space, seed=12))


def test_the_grid_sampler_walks_every_axis_value():
    sampler = make_sampler(space_with(sampler="grid"))
    assert sampler._search_space == {
        "surrogate.name": ["ppo_clip", "reinforce"],
        "surrogate.clip_high": [0.1, 0.2, 0.3],
        "epochs": [1, 2],
    }


def test_a_space_without_axes_gets_a_random_sampler():
    space = parse_space({**SPACE, "axes": None})
    assert type(make_sampler(space)) is optuna.samplers.RandomSampler


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # WilcoxonPruner
def test_make_pruner_reads_the_budget():
    # 40 steps a run, 3 seeds, 2 tasks: a trial reports 240 global steps, 4 evaluations a run.
    median = make_pruner(space_with(pruner="median"))
    assert type(median) is optuna.pruners.MedianPruner
    assert (median._n_startup_trials, median._n_warmup_steps) == (5, 40)
    hyperband = make_pruner(space_with(pruner="hyperband"))
    assert (hyperband._min_resource, hyperband._max_resource) == (40, 240)
    wilcoxon = make_pruner(space_with(pruner="wilcoxon"))
    assert (wilcoxon._n_startup_steps, wilcoxon._p_threshold) == (4, 0.1)
    assert type(make_pruner(space_with(pruner="none"))) is optuna.pruners.NopPruner
