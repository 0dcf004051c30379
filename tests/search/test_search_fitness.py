"""The paired fitness (issue 15): its arithmetic by hand, successive halving over seeds, the
learning-rate tuning step, and the claims of the fresh-seed re-evaluation (paired t-intervals,
Bonferroni, verdicts), with the calibration of that procedure under a null and a planted
effect."""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from campaign_helpers import TINY_BUDGET, fake_training, invoke, write_space
from optuna.trial import TrialState
from scipy import stats

from grape_evo.analysis.stats import paired_interval, verdict
from grape_evo.search.campaign import Campaign
from grape_evo.search.evaluator import CandidateResult
from grape_evo.search.fitness import GAIN_FLOOR, measure_of, paired_fitness
from grape_evo.search.records import RunResult, TrialRecord
from grape_evo.search.space import parse_space


def run(task: str, seed: int, final: float, initial: float = 0.0, curve=()) -> RunResult:
    return RunResult(
        task=task,
        seed=seed,
        status="ok",
        reason="",
        initial_eval={"reward": initial, "accuracy": 0.0, "kl_to_ref": 0.0},
        final_eval={"reward": final, "accuracy": 0.0, "kl_to_ref": 0.0},
        curve=list(curve),
        wall_seconds=0.0,
        out_dir="",
    )


# ---- the arithmetic -------------------------------------------------------------------------
def test_one_task_effect_is_the_mean_paired_difference_over_the_reference_gain():
    mine = [run("a", s, f) for s, f in enumerate([0.5, 0.6, 0.7])]
    ref = {
        ("a", s): run("a", s, f, i) for s, (f, i) in enumerate([(0.4, 0.1), (0.5, 0.1), (0.5, 0.2)])
    }
    fitness = paired_fitness(mine, ref)
    # differences 0.1, 0.1, 0.2: mean 2/15; gain mean(0.3, 0.4, 0.3) = 1/3; effect 0.4
    (task,) = fitness.tasks
    assert task.n == 3 and task.gain == pytest.approx(1 / 3)
    assert task.raw_effect == pytest.approx(2 / 15) and fitness.value == pytest.approx(0.4)
    # sd(0.1, 0.1, 0.2) = 0.1/sqrt(3); se = sd/sqrt(3) = 1/30; normalised 0.1
    assert task.se == pytest.approx(0.1)
    assert fitness.n_seeds == 3 and not fitness.guarded


def test_a_reference_that_does_not_learn_is_floored():
    mine = [run("a", 0, 0.3), run("a", 1, 0.3)]
    ref = {("a", s): run("a", s, 0.25, 0.25) for s in (0, 1)}
    assert paired_fitness(mine, ref).value == pytest.approx(0.05 / GAIN_FLOOR)


def test_a_task_where_the_candidate_is_clearly_worse_sets_the_fitness():
    ref = {(t, s): run(t, s, 0.5, 0.0) for t in ("a", "b") for s in range(3)}  # gain 0.5
    better_a = [run("a", s, 0.5 + d) for s, d in enumerate([0.2, 0.25, 0.3])]  # +0.5 effect
    worse_b = [run("b", s, 0.5 + d) for s, d in enumerate([-0.1, -0.15, -0.2])]  # -0.3
    fitness = paired_fitness(better_a + worse_b, ref)
    b = fitness.tasks[1]
    assert b.effect == pytest.approx(-0.3) and b.effect + b.se < 0
    assert fitness.guarded and fitness.value == pytest.approx(-0.3)
    # within one standard error of the reference on b: the mean over tasks
    near_b = [run("b", s, 0.5 + d) for s, d in enumerate([0.1, -0.1, -0.03])]
    fitness = paired_fitness(better_a + near_b, ref)
    assert not fitness.guarded
    assert fitness.value == pytest.approx((0.5 + (-0.01 / 0.5)) / 2)


def test_unpaired_seeds_are_left_out_and_a_task_without_pairs_is_nan():
    ref = {("a", 0): run("a", 0, 0.5, 0.0), ("a", 1): run("a", 1, 0.5, 0.0)}
    mine = [run("a", 0, 0.6), run("a", 1, 0.7), run("a", 2, 0.9)]
    assert paired_fitness(mine, ref).tasks[0].n == 2
    assert paired_fitness(mine, ref).value == pytest.approx(0.15 / 0.5)
    assert math.isnan(paired_fitness([run("b", 0, 0.1)], ref).value)


def test_auc_is_the_trapezoid_mean_of_the_curve_from_the_warm_start():
    r = run("a", 0, 0.8, 0.2, curve=[(10, 0.4), (30, 0.8)])
    # trapezoids: 10 * (0.2 + 0.4) / 2 + 20 * (0.4 + 0.8) / 2 = 3 + 12 = 15 over 30 steps
    assert measure_of(r, "auc") == pytest.approx(0.5)
    assert measure_of(r, "final") == 0.8


# ---- campaigns with fake training ------------------------------------------------------------
def seeded_noise(*parts: Any) -> float:
    """A deterministic standard normal draw from ``parts``."""
    digest = hashlib.sha256(json.dumps(parts, default=str).encode()).digest()
    return float(np.random.default_rng(int.from_bytes(digest[:8], "big")).standard_normal())


def noisy_training(monkeypatch: pytest.MonkeyPatch, quality) -> None:
    """Fake training: final reward = 0.5 + quality(spec, lr) + 0.05 x (seed noise shared by
    every objective) + 0.01 x (noise of this objective and seed); warm start 0.2."""

    def per_candidate(spec: Any, configs: Any, out_dir: Path) -> CandidateResult:
        runs = []
        for config in configs:
            shared = seeded_noise("seed", config.seed)
            own = seeded_noise(spec.key(), config.seed)
            final = 0.5 + quality(spec, config.lr) + 0.05 * shared + 0.01 * own
            runs.append(run("addition", config.seed, final, 0.2))
        return CandidateResult(runs)

    fake_training(monkeypatch, per_candidate)


def space(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "fit",
        "tasks": ["addition"],
        "policy": {"preset": "tiny"},
        "budget": {**TINY_BUDGET, "seeds": 2},
        "base": "grpo",
        "axes": {"kl.coef": {"low": 1.0e-4, "high": 0.1, "log": True}},
        "baselines": ["grpo"],
        "search": {"sampler": "random", "trials": 8, "pruner": "none", "tune_lr": []},
    }
    for key, value in changes.items():
        if key in ("budget", "search"):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


def kl_quality(spec: Any, lr: float) -> float:
    """Candidates with a larger KL coefficient learn less (0 at GRPO's own spec)."""
    return -0.5 * spec.kl.coef


def test_successive_halving_gives_seeds_to_the_best_and_records_every_rung(tmp_path, monkeypatch):
    noisy_training(monkeypatch, kl_quality)
    data = space(budget={"seeds": [2, 4, 8]}, search={"keep": 0.5, "trials": 12})
    campaign = Campaign(parse_space(data), tmp_path / "run")
    study = campaign.open(create=True)
    campaign.optimize(study, 12)
    trials = study.get_trials()
    reference = {
        (r.task, r.seed): r
        for r in (
            RunResult.from_dict(json.loads(v))
            for k, v in study.user_attrs.items()
            if k.startswith("reference:")
        )
    }
    seen_counts = set()
    for t in trials:
        record = TrialRecord.of(t)
        seeds = [r.seed for r in record.runs]
        seen_counts.add(len(seeds))
        assert seeds == list(range(len(seeds))) and len(seeds) in (2, 4, 8)
        assert all((r.task, r.seed) in reference for r in record.runs)
        assert sorted(record.rungs, key=int) == [str(n) for n in (2, 4, 8) if n <= len(seeds)]
        for rung, value in record.rungs.items():  # the fitness on the first `rung` seeds
            diffs = [
                r.final_eval["reward"] - reference[(r.task, r.seed)].final_eval["reward"]
                for r in record.runs[: int(rung)]
            ]
            gains = [
                reference[("addition", s)].final_eval["reward"] - 0.2 for s in range(int(rung))
            ]
            expected = statistics.fmean(diffs) / max(statistics.fmean(gains), GAIN_FLOOR)
            assert value == pytest.approx(expected)
        if len(seeds) == 8:
            assert t.state == TrialState.COMPLETE
            assert t.value == pytest.approx(record.rungs["8"])
        else:
            assert t.state == TrialState.PRUNED
            assert record.failure.startswith("successive halving:")
        if record.baseline:
            assert len(seeds) == 8  # the yardstick is never halved
    assert seen_counts == {2, 4, 8}
    # One trial at a time: a candidate goes on from rung 2 iff it is in the better half of the
    # candidates that reached rung 2 so far, itself included (with one or two of them: the best).
    so_far: list[float] = []
    for t in sorted(trials, key=lambda t: t.number):
        record = TrialRecord.of(t)
        if record.baseline:
            continue
        so_far.append(record.rungs["2"])
        best_first = sorted(so_far, reverse=True)
        cut = best_first[max(1, len(so_far) // 2) - 1]
        assert ("4" in record.rungs) == (record.rungs["2"] >= cut)


def test_the_learning_rate_is_tuned_on_the_reference_and_used_everywhere(tmp_path, monkeypatch):
    def lr_quality(spec: Any, lr: float) -> float:
        return -0.2 * abs(math.log(lr / 2e-4))  # best at 2e-4, twice the budget's

    noisy_training(monkeypatch, lr_quality)
    data = space(search={"tune_lr": [0.5, 1, 2], "trials": 3})
    campaign = Campaign(parse_space(data), tmp_path / "run")
    study = campaign.open(create=True)
    campaign.optimize(study, 3)
    assert study.user_attrs["lr"] == pytest.approx(2e-4)
    assert set(study.user_attrs["lr_tuning"]) == {"5e-05", "0.0001", "0.0002"}
    for t in study.get_trials():
        for r in TrialRecord.of(t).runs:
            summary_lr = campaign.config(r.seed).lr
            assert summary_lr == pytest.approx(2e-4)
    # a space whose genome holds the rate is not tuned
    axes = {"optim.lr": {"low": 1e-5, "high": 1e-3, "log": True}}
    data = space(name="genome", axes=axes, search={"tune_lr": [0.5, 1, 2], "trials": 2})
    other = Campaign(parse_space(data), tmp_path / "genome")
    study = other.open(create=True)
    other.optimize(study, 2)
    assert "lr" not in study.user_attrs and other.lr == 1e-4


def test_reevaluation_reports_paired_effects_with_bonferroni_t_intervals(tmp_path, monkeypatch):
    noisy_training(monkeypatch, kl_quality)
    data = space(budget={"reeval_seeds": 10, "top_k": 2}, search={"trials": 4})
    campaign = Campaign(parse_space(data), tmp_path / "run")
    study = campaign.open(create=True)
    campaign.optimize(study, 4)
    campaign.reevaluate(study)
    document = json.loads((tmp_path / "run" / "discoveries.json").read_text())
    assert document["reference"] == "grpo" and len(document["seeds"]) == 10
    reference = document["reference_rewards"]
    rows = {r["label"]: r for r in document["candidates"]}
    assert rows["grpo"]["verdict"] is None and rows["grpo"]["paired_effect"] is None
    compared = [r for r in rows.values() if r["label"] != "grpo"]
    assert len(compared) == 2
    for row in compared:
        diffs = np.array(row["rewards"]) - np.array(reference)
        half = stats.t.ppf(1 - 0.05 / (2 * 2), 9) * diffs.std(ddof=1) / math.sqrt(10)
        assert row["reference"] == "grpo" and row["n_seeds"] == 10
        assert row["paired_effect"] == pytest.approx(diffs.mean())
        assert row["ci_low"] == pytest.approx(diffs.mean() - half)
        assert row["ci_high"] == pytest.approx(diffs.mean() + half)
        expected = (
            "better" if row["ci_low"] > 0 else "worse" if row["ci_high"] < 0 else "unresolved"
        )
        assert row["verdict"] == expected
    result = invoke("report", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    text = (tmp_path / "run" / "report" / "report.md").read_text()
    assert "paired" in text and "verdict" in text


def test_a_planted_better_candidate_is_found_and_confirmed(tmp_path, monkeypatch):
    """A grid over entropy bonuses where 0.01 is planted 0.05 better than GRPO (noise sd
    0.014 per paired difference): the search ranks it first and the re-evaluation says
    better; the others stay unresolved or worse."""

    def quality(spec: Any, lr: float) -> float:
        return 0.05 if spec.entropy_coef == 0.01 else 0.0

    noisy_training(monkeypatch, quality)
    data = space(
        axes={"entropy_coef": {"choices": [0.0, 0.001, 0.01]}},
        budget={"reeval_seeds": 10, "top_k": 2},
        search={"sampler": "grid", "trials": 3},
    )
    out = tmp_path / "run"
    result = invoke("evolve", str(write_space(tmp_path, data)), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "verdict" in result.output and "grpo" in result.output
    rows = json.loads((out / "discoveries.json").read_text())["candidates"]
    top = rows[0]
    assert top["objective"]["entropy_coef"] == 0.01
    assert top["verdict"] == "better" and top["ci_low"] > 0
    assert all(r["verdict"] != "better" for r in rows[1:])


# ---- calibration of the claims procedure -----------------------------------------------------
def simulate(effects: list[float], n: int, sd: float, rng: np.random.Generator) -> list[str]:
    """Verdicts for candidates with true paired ``effects`` on n seeds (paired differences
    with sd ``sd``), Bonferroni over the candidates."""
    reference = rng.normal(0.5, 0.1, n)
    out = []
    for effect in effects:
        mine = reference + effect + rng.normal(0.0, sd, n)
        out.append(verdict(paired_interval(list(mine), list(reference), comparisons=len(effects))))
    return out


def test_null_candidates_are_called_better_in_at_most_5_percent_of_campaigns():
    rng = np.random.default_rng(0)
    repeats = 2000
    any_better = sum("better" in simulate([0.0] * 4, 10, 0.02, rng) for _ in range(repeats))
    # Bonferroni over 4: P(any better) <= 4 x 0.025 / 4 = 0.025 under the null; binomial sd
    # at p = 0.025, n = 2000 is 0.0035
    assert any_better / repeats <= 0.025 + 3 * math.sqrt(0.025 * 0.975 / repeats)


def test_power_against_a_planted_effect_matches_the_noncentral_t():
    rng = np.random.default_rng(1)
    repeats, n, sd, effect, m = 2000, 10, 0.02, 0.03, 4
    hits = sum(simulate([effect, 0.0, 0.0, 0.0], n, sd, rng)[0] == "better" for _ in range(repeats))
    critical = stats.t.ppf(1 - 0.05 / (2 * m), n - 1)
    power = 1 - stats.nct.cdf(critical, n - 1, effect / (sd / math.sqrt(n)))
    assert abs(hits / repeats - power) < 4 * math.sqrt(power * (1 - power) / repeats)
    assert power > 0.8  # 10 paired seeds resolve 1.5 paired sd of effect after Bonferroni


# ---- end to end, trained -----------------------------------------------------------------------
@pytest.mark.slow  # about a minute: warm starts that score above 0, so rung values differ
def test_a_trained_campaign_with_halving_and_a_population_runs_end_to_end(tmp_path):
    """Real training (tiny budget): rungs of 1 and 2 seeds, lockstep batches of 4, the reference
    tuned and paired; every trial ends COMPLETE at 2 seeds or PRUNED by halving at 1, and the
    claims name the reference."""
    data = space(
        budget={
            **TINY_BUDGET,
            "seeds": [1, 2],
            "reeval_seeds": 2,
            "top_k": 1,
            "lr": 0.01,
            "warm_start_steps": 150,
        },
        axes={"entropy_coef": {"choices": [0.0, 0.1, 0.5, 1.0]}},  # far apart at lr 0.01
        search={"sampler": "grid", "trials": 4, "keep": 0.5, "tune_lr": [0.5, 1]},
    )
    out = tmp_path / "run"
    result = invoke("evolve", str(write_space(tmp_path, data)), "--out", str(out),
                    "--population", "4")  # fmt: skip
    assert result.exit_code == 0, result.output
    campaign = Campaign(parse_space(data), out)
    study = campaign.open(create=False)
    assert study.user_attrs["lr"] in (0.005, 0.01)
    assert max(TrialRecord.of(t).trained_with for t in study.get_trials()) > 1
    states = [t.state for t in study.get_trials()]
    assert TrialState.PRUNED in states and TrialState.COMPLETE in states
    for t in study.get_trials():
        record = TrialRecord.of(t)
        seeds = sorted(r.seed for r in record.runs)
        if t.state == TrialState.COMPLETE:
            assert seeds == [0, 1] and set(record.rungs) == {"1", "2"}
        else:
            assert t.state == TrialState.PRUNED and seeds == [0]
            assert record.failure.startswith("successive halving:")
    document = json.loads((out / "discoveries.json").read_text())
    assert document["reference"] == "grpo" and len(document["reference_rewards"]) == 2
