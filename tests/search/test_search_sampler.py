"""Tests for the genome-aware evolution sampler (grape_evo.search.sampler)."""

from __future__ import annotations

import math
import random

import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from grape_evo.search.sampler import (
    ELITES_KEY_PREFIX,
    GENETIC_OPERATORS,
    GENOME_KEY,
    PARENTS_KEY,
    EvolutionSampler,
    Gene,
    active_genes,
    contains,
    crossover,
    mutate,
    random_genome,
    repair,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

SURROGATES = ("reinforce", "ppo_clip", "gspo", "cispo")

GENES = (
    Gene("advantage", CategoricalDistribution(["group_zscore", "group_mean", "rloo", "rank"])),
    Gene("surrogate", CategoricalDistribution(list(SURROGATES))),
    Gene("clip_high", FloatDistribution(0.1, 0.4), when=(("surrogate", ("ppo_clip", "gspo")),)),
    Gene(
        "clip_mode",
        CategoricalDistribution(["sym", "asym"]),
        when=(("surrogate", ("ppo_clip", "gspo")),),
    ),
    Gene("clip_low", FloatDistribution(0.05, 0.3, step=0.05), when=(("clip_mode", ("asym",)),)),
    Gene("kl_coef", FloatDistribution(1e-4, 0.1, log=True)),
    Gene("group", IntDistribution(2, 16, step=2)),
    Gene("epochs", IntDistribution(1, 64, log=True)),
)


def assert_consistent(genes, genome):
    active = {g.name for g in active_genes(genes, genome)}
    assert set(genome) == active, (genome, active)
    by_name = {g.name: g for g in genes}
    for name, value in genome.items():
        assert contains(by_name[name].distribution, value), (name, value)


def suggest_genome(trial, genes=GENES):
    """What the lead's objective does: suggest active genes only, in declaration order."""
    values = {}
    for gene in genes:
        if gene in active_genes(genes, values):
            values[gene.name] = trial._suggest(gene.name, gene.distribution)
    return values


# ---------------------------------------------------------------------------------------------
# Pure operators.
# ---------------------------------------------------------------------------------------------


def test_active_genes_follows_conditions():
    assert [g.name for g in active_genes(GENES, {"surrogate": "reinforce"})] == [
        "advantage",
        "surrogate",
        "kl_coef",
        "group",
        "epochs",
    ]
    names = [g.name for g in active_genes(GENES, {"surrogate": "gspo", "clip_mode": "asym"})]
    assert "clip_high" in names and "clip_low" in names
    # clip_low's condition refers to clip_mode, which is inactive under reinforce.
    names = [g.name for g in active_genes(GENES, {"surrogate": "cispo", "clip_mode": "asym"})]
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
        for gene in GENES:
            if gene.name in m:
                assert contains(gene.distribution, m[gene.name]), (gene.name, m[gene.name])
        assert m["advantage"] != g["advantage"] and m["surrogate"] != g["surrogate"]
        assert m["group"] % 2 == 0 and m["group"] != g["group"]
        assert isinstance(m["epochs"], int) and m["epochs"] != g["epochs"]
        if "clip_low" in m:
            assert math.isclose(round(m["clip_low"] / 0.05) * 0.05, m["clip_low"])
    assert mutate(GENES, g, rng, 0.0) == g


def test_invalid_gene_lists_are_rejected():
    with pytest.raises(ValueError, match="earlier gene"):
        EvolutionSampler([Gene("a", FloatDistribution(0, 1), when=(("b", (1,)),))])
    with pytest.raises(ValueError, match="duplicate"):
        EvolutionSampler([Gene("a", FloatDistribution(0, 1)), Gene("a", FloatDistribution(0, 1))])


# ---------------------------------------------------------------------------------------------
# Through Optuna.
# ---------------------------------------------------------------------------------------------

TOY = (
    Gene("x", FloatDistribution(0.0, 1.0)),
    Gene("y", CategoricalDistribution(["a", "b", "c"])),
    Gene("c", FloatDistribution(0.0, 1.0), when=(("y", ("a", "b")),)),
    Gene("n", IntDistribution(1, 10)),
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
