"""Search over functions (issue 16): expression axes in a space, their genetic operators, the
evolution sampler and other samplers on them, staged evaluation in a campaign, the report's
formula table, and the shipped ``functions.yaml``."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import optuna
import pytest
import sympy as sp
from campaign_helpers import TINY_BUDGET, fake_result, fake_training, invoke, write_space
from optuna.trial import TrialState

from grape_evo.objective import ObjectiveSpec
from grape_evo.objective.expression import depth
from grape_evo.objective.expression import parse as parse_formula
from grape_evo.objective.expression.probe import distance
from grape_evo.objective.expression.published import PUBLISHED
from grape_evo.search.campaign import Campaign, budget_used
from grape_evo.search.evaluator import CandidateResult
from grape_evo.search.samplers import make_sampler
from grape_evo.search.samplers.evolution import GENOME_KEY, EvolutionSampler, genes_of
from grape_evo.search.samplers.operators import crossover, mutate_gene, repair, sample_gene
from grape_evo.search.space import SpaceError, load_space, parse_space
from grape_evo.search.space.expressions import DRAWS, from_draw

ROOT = Path(__file__).resolve().parents[2]
PPO_DRIFT = "relu((r - clip(r, 0.8, 1.2))*A)"


def formula_space(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "formulas",
        "tasks": ["addition"],
        "policy": {"preset": "tiny"},
        "budget": {**TINY_BUDGET, "seeds": 1, "reeval_seeds": 1, "top_k": 1},
        "base": {
            "group_size": 4,
            "advantage": {"name": "expression"},
            "surrogate": {"name": "drift"},
            "epochs": 2,
        },
        "axes": {
            "advantage.expr": {"expression": {"max_depth": 5}},
            "surrogate.expr": {"expression": {}},
        },
        "baselines": None,
        "search": {
            "sampler": "evolution",
            "trials": 8,
            "pruner": "none",
            "population_size": 4,
            "seed": 0,
        },
    }
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def space_of(data: dict[str, Any]):
    return parse_space(data)


# ---- the axis in a space ---------------------------------------------------------------------
def test_expression_axis_defaults_to_the_published_forms():
    space = space_of(formula_space())
    adv, drift = space.axis("advantage.expr"), space.axis("surrogate.expr")
    assert adv.kind == drift.kind == "expression"
    assert adv.seeds == tuple(PUBLISHED["advantage"].values())
    assert drift.seeds == tuple(PUBLISHED["drift"].values())
    assert adv.max_depth == 5
    # LPO's drift is 9 levels deep: the default depth grows to hold every seed
    assert drift.max_depth == max(depth(parse_formula(s, "drift")) for s in drift.seeds) == 9
    assert adv.param_name == "advantage.expr#draw"
    assert parse_space(space.to_dict()).axes == space.axes


@pytest.mark.parametrize(
    ("axis", "needle"),
    [
        ({"kl.coef": {"expression": {}}}, "axes.kl.coef: only formula fields take an expression"),
        (
            {"advantage.expr": {"expression": {"seeds": ["__import__('os').system('x')"]}}},
            "axes.advantage.expr.expression.seeds[0]:",
        ),
        (
            {"advantage.expr": {"expression": {"seeds": ["R.__class__"]}}},
            "attribute access",
        ),
        (
            {"advantage.expr": {"expression": {"seeds": ["[R for R in G]"]}}},
            "axes.advantage.expr.expression.seeds[0]:",
        ),
        (
            {"advantage.expr": {"expression": {"seeds": ["lambda R: R"]}}},
            "axes.advantage.expr.expression.seeds[0]:",
        ),
        (
            {"advantage.expr": {"expression": {"seeds": ["(" * 10000 + "R" + ")" * 10000]}}},
            "axes.advantage.expr.expression.seeds[0]:",
        ),
        (
            {"advantage.expr": {"expression": {"seeds": ["R" + " + R" * 500_000]}}},
            "characters long",
        ),
        (
            {"advantage.expr": {"expression": {"seeds": ["r * A"]}}},
            "name 'r' is not an input of advantage",
        ),
        (
            {"advantage.expr": {"expression": {"seeds": ["R - mean_G"], "max_depth": 1}}},
            "is 2 levels deep, deeper than the axis's max_depth (1)",
        ),
        ({"advantage.expr": {"expression": {"seeds": []}}}, "must not be empty"),
        ({"advantage.expr": {"expression": {"seeds": ["R", "R"]}}}, "lists 'R' twice"),
        ({"advantage.expr": {"expression": {"depth": 3}}}, "depth"),
        ({"advantage.expr": {"expression": {}, "choices": ["R"]}}, "cannot be combined"),
        ({"advantage.expr": {"expression": {"max_depth": 99}}}, "must be <= 32"),
    ],
)
def test_bad_expression_axes_are_one_error_naming_the_key(axis, needle):
    with pytest.raises(SpaceError) as info:
        space_of(formula_space(axes=axis))
    message = str(info.value)
    assert needle in message and "\n" not in message, message


def test_hostile_seed_in_a_file_exits_2_with_one_line(tmp_path):
    data = formula_space(axes={"advantage.expr": {"expression": {"seeds": ["().__class__"]}}})
    path = write_space(tmp_path, data)
    result = invoke("evolve", str(path), "--out", str(tmp_path / "run"))
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and str(path) in lines[0], result.output
    assert "axes.advantage.expr.expression.seeds[0]" in lines[0] and "attribute" in lines[0]
    assert not (tmp_path / "run").exists()


# ---- draws: what samplers other than evolution see -------------------------------------------
def test_draws_below_the_seed_count_are_the_seeds_and_others_grow_formulas():
    seeds = ("R - mean_G", "R")
    assert [from_draw("advantage", seeds, 4, d) for d in (0, 1)] == list(seeds)
    grown = [from_draw("advantage", seeds, 4, d) for d in range(2, 400)]
    assert grown == [from_draw("advantage", seeds, 4, d) for d in range(2, 400)]  # reproducible
    assert all(depth(parse_formula(g, "advantage")) <= 4 for g in grown)
    share = sum(g in seeds for g in grown) / len(grown)
    assert 0.4 < share < 0.6  # a seed with probability 1/2 (binomial sd 0.025 at n = 398)
    assert len(set(grown) - set(seeds)) > 100


def test_random_and_grid_samplers_draw_formulas():
    space = space_of(formula_space())
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    texts = []
    for _ in range(10):
        trial = study.ask()
        genes = space.suggest(trial)
        assert 0 <= trial.params["advantage.expr#draw"] <= DRAWS
        assert genes["advantage.expr"] == from_draw(
            "advantage", space.axis("advantage.expr").seeds, 5, trial.params["advantage.expr#draw"]
        )
        texts.append(genes["surrogate.expr"])
        study.tell(trial, 0.0)
    assert len(set(texts)) > 3
    grid = space.grid()
    assert grid["advantage.expr#draw"] == [0, 1, 2, 3] and grid["surrogate.expr#draw"] == [0, 1, 2]


# ---- genetic operators ------------------------------------------------------------------------
def test_operators_keep_formulas_valid_and_within_depth():
    axis = space_of(formula_space()).axis("advantage.expr")
    rng = random.Random(0)
    for _ in range(200):
        text = sample_gene(axis, rng)
        child = mutate_gene(axis, text, rng)
        assert axis.contains(text) and axis.contains(child)
        assert child != text
        assert depth(parse_formula(child, "advantage")) <= axis.max_depth


def test_crossover_exchanges_subtrees_of_the_parents():
    space = space_of(formula_space())
    axes = space.axes
    a = {"advantage.expr": "(R - mean_G)/(std_G + 1e-6)", "surrogate.expr": PPO_DRIFT}
    b = {"advantage.expr": "R*p_G - min_G", "surrogate.expr": "0"}
    rng = random.Random(1)
    mixed = set()
    for _ in range(100):
        child = repair(axes, crossover(axes, a, b, rng, rate=1.0), [a, b], rng)
        assert all(axis.contains(child[axis.path]) for axis in axes)
        text = child["advantage.expr"]
        if text not in (a["advantage.expr"], b["advantage.expr"]):
            mixed.add(text)
    # a subtree exchange: part of A's tree with part of B's (e.g. R*p_G over a z-score)
    assert mixed
    assert any("p_G" in t or "min_G" in t for t in mixed)
    assert any("mean_G" in t or "std_G" in t for t in mixed)


# ---- the evolution sampler with a fitness over formulas ---------------------------------------
def test_evolution_finds_a_formula_closer_to_a_target_than_any_seed():
    """Fitness: 1 - the probe distance to PPO's clip at 0.35; seeds: PPO at 0.2 and the plain
    ratio. Constant perturbation and the other operators must find a closer function."""
    target = "relu((r - clip(r, 0.65, 1.35))*A)"
    seeds = [PPO_DRIFT, "0"]
    data = formula_space(axes={"surrogate.expr": {"expression": {"seeds": seeds}}})
    space = space_of(data)
    sampler = EvolutionSampler(space.axes, population_size=8, seed=0)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    best_seed = max(1.0 - distance("drift", s, target) for s in seeds)
    for _ in range(64):
        trial = study.ask()
        planned = study._storage.get_trial_system_attrs(trial._trial_id)[GENOME_KEY]
        genes = space.suggest(trial, planned=planned)
        assert genes == planned
        study.tell(trial, 1.0 - distance("drift", genes["surrogate.expr"], target))
    frozen = study.trials
    assert all(genes_of(space.axes, t) == t.system_attrs[GENOME_KEY] for t in frozen)
    assert study.best_value > best_seed + 0.01, (study.best_value, best_seed)


def test_duplicates_are_recognised_by_canonical_form():
    from grape_evo.search.samplers.evolution import _signature

    axes = space_of(formula_space()).axes
    a = {"advantage.expr": "R - mean_G", "surrogate.expr": "relu((r - 1)*A)"}
    b = {"advantage.expr": "-mean_G + R", "surrogate.expr": "relu(A*(r - 1))"}
    c = {"advantage.expr": "R - mean_G", "surrogate.expr": "relu((r - 1)*A*2)"}
    assert _signature(axes, a) == _signature(axes, b) != _signature(axes, c)


# ---- staged evaluation in a campaign -----------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def _campaign_env(campaign_env: None) -> None:
    """The shared cache and one thread (tests/conftest.py)."""


def test_broken_formulas_fail_before_training_and_the_rest_train(tmp_path, monkeypatch):
    trained: list[dict[str, Any]] = []

    def fake(spec: Any, configs: Any, out_dir: Path) -> CandidateResult:
        trained.append(spec.to_dict())
        return fake_result(spec, configs, out_dir)

    fake_training(monkeypatch, fake)
    seeds = ["R - mean_G", "mean_G - R", "2*R"]  # the second gives a lower reward a higher A
    data = formula_space(
        axes={"advantage.expr": {"expression": {"seeds": seeds}}},
        search={"sampler": "grid", "trials": 3, "pruner": "none"},
    )
    campaign = Campaign(space_of(data), tmp_path / "run")
    study = campaign.open(create=True)
    campaign.optimize(study, 3)
    by_formula = {t.user_attrs["genes"]["advantage.expr"]: t for t in study.get_trials()}
    assert set(by_formula) == set(seeds)
    bad = by_formula["mean_G - R"]
    assert bad.state == TrialState.FAIL
    assert bad.user_attrs["failure"].startswith(
        "cheap checks: advantage.expr: a higher reward gets a lower advantage"
    )
    assert "runs" not in bad.user_attrs  # never trained
    assert sorted(d["advantage"]["expr"] for d in trained) == ["2*R", "R - mean_G"]
    # Rejected formulas are free toward the budget of 3: further trials took their place (the
    # grid is exhausted, so they repeat its points; a trained one reuses its result).
    trials = study.get_trials()
    rejected = [t for t in trials if t.user_attrs.get("rejected")]
    assert rejected and all(t.state == TrialState.FAIL for t in rejected)
    assert budget_used(study) == 3 and len(trials) == 3 + len(rejected)
    assert [t.state for t in trials].count(TrialState.COMPLETE) == 3
    for text in ("R - mean_G", "2*R"):
        t = by_formula[text]
        assert t.state == TrialState.COMPLETE
        assert t.user_attrs["objective"]["advantage"]["expr"] == text
        assert t.user_attrs["checks"]["problems"] == []
        assert t.user_attrs["checks"]["drift_conditions"] == {
            "nonnegative": True,
            "zero_at_one": True,
            "flat_at_one": True,
        }


def test_the_median_pruner_judges_formula_candidates_from_their_first_evaluation():
    from grape_evo.search.samplers import make_pruner

    data = formula_space(search={"sampler": "evolution", "trials": 8, "pruner": "median"})
    data["budget"] = {**data["budget"], "steps": 40, "eval_every": 10}
    assert make_pruner(space_of(data))._n_warmup_steps == 10
    plain = {**data, "axes": {"epochs": {"choices": [1, 2]}}}
    assert make_pruner(space_of(plain))._n_warmup_steps == 40


def test_sampler_of_a_formula_space_is_the_evolution_sampler():
    assert isinstance(make_sampler(space_of(formula_space())), EvolutionSampler)


# ---- the report's formula table ---------------------------------------------------------------
def test_formula_readings_name_the_nearest_published_form_and_the_difference():
    from grape_evo.analysis.formulas import read_formulas

    spec = ObjectiveSpec.from_dict(
        {
            "group_size": 2,
            "preference": {"name": "expression", "expr": "-logsigmoid(rho) + 0.1*rho**2"},
        }
    )
    (reading,) = read_formulas(spec)
    assert reading.field == "preference.expr" and reading.nearest == "DPO"
    beta, dw, dl = sp.symbols("beta delta_w delta_l")
    expected = sp.Rational(1, 10) * (beta * (dw - dl)) ** 2
    assert (
        sp.simplify(
            sp.sympify(reading.difference, locals={"beta": beta, "delta_w": dw, "delta_l": dl})
            - expected
        )
        == 0
    )

    same = ObjectiveSpec.from_dict(
        {
            "group_size": 4,
            "advantage": {"name": "expression", "expr": "-mean_G + R"},
            "surrogate": {"name": "drift", "expr": "relu(A*(r - clip(r, 0.8, 1.2)))"},
        }
    )
    readings = {r.field: r for r in read_formulas(same)}
    assert readings["advantage.expr"].nearest == "Dr. GRPO"
    assert readings["surrogate.expr"].nearest == "PPO-clip"
    assert {r.difference for r in readings.values()} == {"0"}
    assert {r.distance for r in readings.values()} == {0.0}


def test_report_of_a_formula_campaign_shows_the_formula_table(tmp_path, monkeypatch):
    fake_training(monkeypatch, fake_result)
    data = formula_space(
        axes={"advantage.expr": {"expression": {"seeds": ["(R - mean_G)/(std_G + 0.1)"]}}},
        search={"sampler": "grid", "trials": 1, "pruner": "none"},
    )
    out = tmp_path / "run"
    campaign = Campaign(space_of(data), out)
    study = campaign.open(create=True)
    campaign.optimize(study, 1)
    campaign.reevaluate(study)
    result = invoke("report", str(out))
    assert result.exit_code == 0, result.output
    text = (out / "report" / "report.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| advantage.expr"))
    assert "`(R - mean_G)/(std_G + 0.1)`" in row and "GRPO" in row
    assert "(R - mu_G)/(sigma_G + 0.1) - (R - mu_G)/(sigma_G + 1.0e-6)" in row
    # the discovered objective's YAML, as the report prints it, trains with `grape train`
    section = text.split("## Top objectives", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    objective = tmp_path / "discovered.yaml"
    objective.write_text(block)
    args = ["--steps", "1", "--batch-size", "8", "--eval-every", "1", "--warm-start-steps", "5"]
    result = invoke("train", "--objective", str(objective), "--out", str(tmp_path / "t"), *args)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert summary["status"] == "ok"
    assert summary["objective"]["advantage"]["expr"] == "(R - mean_G)/(std_G + 0.1)"


# ---- the shipped space --------------------------------------------------------------------------
def test_functions_space_has_the_three_formula_axes_and_the_regime_axes():
    space = load_space(ROOT / "search_spaces" / "functions.yaml")
    kinds = {a.path: a.kind for a in space.axes}
    assert {p for p, k in kinds.items() if k == "expression"} == {
        "advantage.expr",
        "surrogate.expr",
        "preference.expr",
    }
    assert {"epochs", "minibatches", "staleness"} <= set(kinds)
    space.validate_points()


@pytest.mark.parametrize(
    ("complete", "rejected", "surplus", "counted"),
    [
        (2, 3, 0, 2),  # rejections within the free allowance: only trained candidates count
        (1, 15, 0, 6),  # 10 free per counted trial: 1 + (15 - 10)
        (0, 12, 0, 2),  # nothing trained: 10 free, then every rejection counts
        (3, 0, 2, 3),  # surplus trials never count
    ],
)
def test_rejected_candidates_are_free_toward_the_budget_up_to_a_cap(
    complete: int, rejected: int, surplus: int, counted: int
) -> None:
    from optuna.trial import create_trial

    from grape_evo.search.campaign.ledger import count_budget

    trials = [create_trial(value=0.5) for _ in range(complete)]
    trials += [create_trial(state=TrialState.FAIL, user_attrs={"rejected": True})] * rejected
    trials += [create_trial(state=TrialState.FAIL, user_attrs={"surplus": True})] * surplus
    assert count_budget(trials, count_running=False) == counted
