"""Each experiment script's ``--quick`` smoke run works end to end and resumes."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_script(name: str, out: Path, cache: Path, script: str = "run.py") -> str:
    env = {**os.environ, "GRAPE_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "experiments" / name / script),
            "--quick",
            "--out",
            str(out),
            "--jobs",
            "1",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_baselines_quick_runs_writes_tables_and_resumes(tmp_path: Path, grape_cache: Path) -> None:
    out = tmp_path / "baselines"
    stdout = run_script("baselines", out, grape_cache)
    assert "total compute:" in stdout
    results = out / "results"
    readme = (results / "README.md").read_text()
    assert "<!-- results:begin -->" in readme and "### addition" in readme
    # quick: addition (grpo, dpo, sft) and preference (grpo, dpo; sft excluded), 2 seeds each.
    finals = rows(results / "results.csv")
    assert len(finals) == (3 + 2) * 2
    assert {r["label"] for r in finals if r["task"] == "preference"} == {"grpo", "dpo"}
    tuning = rows(results / "tuning.csv")
    assert len(tuning) == 3 and {r["task"] for r in tuning} == {"addition"}
    assert (results / "curves_addition.png").stat().st_size > 0
    again = run_script("baselines", out, grape_cache)
    assert "(0 run now, 10 reused from earlier)" in again


def test_ablation_quick_run_pairs_every_variant(tmp_path: Path, grape_cache: Path) -> None:
    out = tmp_path / "ablation"
    stdout = run_script("grpo_ablation", out, grape_cache)
    assert "total compute:" in stdout
    effects = rows(out / "results" / "effects.csv")
    assert len(effects) == 9  # nine variants on one task
    against = {r["label"]: r["against"] for r in effects}
    assert against["two_epochs_no_clip"] == "two_epochs" and against["no_kl"] == "grpo"
    assert all(r["n"] == "2" for r in effects)
    # With one update per batch the ratio is exactly 1, so removing the clip changes nothing.
    no_clip = next(r for r in effects if r["label"] == "no_clip")
    assert float(no_clip["effect"]) == 0.0 and no_clip["agrees"] == "confirmed"


def test_transfer_quick_run(tmp_path: Path, grape_cache: Path) -> None:
    out = tmp_path / "transfer"
    stdout = run_script("transfer", out, grape_cache)
    assert "total compute:" in stdout
    assert (out / "campaign" / "discoveries.json").is_file()
    finals = rows(out / "results" / "results.csv")
    # quick: the top 2 candidates and grpo on one target, 2 seeds each.
    assert len(finals) == 3 * 2 and {r["target"] for r in finals} == {"sort"}
    readme = (out / "results" / "README.md").read_text()
    assert "### The discovered objectives" in readme and "**sort**" in readme


def test_regime_quick_run_writes_the_separation_table(tmp_path: Path, grape_cache: Path) -> None:
    out = tmp_path / "regime"
    stdout = run_script("regime", out, grape_cache)
    assert "total compute:" in stdout
    separation = rows(out / "results" / "separation.csv")
    assert list(separation[0]) == [
        "task", "regime", "objective_a", "objective_b", "n_seeds", "effect", "ci_low", "ci_high",
    ]  # fmt: skip
    # quick: 2 tasks x 3 regimes x 3 pairs of 3 objectives, each paired over 2 seeds.
    assert len(separation) == 2 * 3 * 3 and all(r["n_seeds"] == "2" for r in separation)
    # Every run of a (task, regime, seed) trained in one lockstep batch of the three objectives.
    finals = rows(out / "results" / "results.csv")
    assert len(finals) == 2 * (3 * 2 * 3 + 2)
    assert len(rows(out / "results" / "aa.csv")) == 2
    # each later regime against one_update, per objective: the mean paired difference
    changes = rows(out / "results" / "regime_effects.csv")
    assert len(changes) == 2 * 3 * 2
    for change in changes:

        def reward(stage: str, change: dict[str, str] = change) -> dict[str, float]:
            return {
                r["seed"]: float(r["reward"])
                for r in finals
                if (r["task"], r["label"], r["stage"])
                == (change["task"], change["objective"], stage)
                and r["status"] == "ok"
            }

        now, before = reward(change["regime"]), reward("one_update")
        seeds = sorted(set(now) & set(before))
        expected = sum(now[s] - before[s] for s in seeds) / len(seeds)
        assert float(change["effect"]) == pytest.approx(expected, abs=1e-9)
    readme = (out / "results" / "README.md").read_text()
    assert "### Admission" in readme and "| admitted |" in readme
    assert "regime_effects.csv" in readme
    for task in ("long_sort", "proxy"):  # learning curves: one figure per regime
        for regime in ("one_update", "four_by_four", "stale_4"):
            assert (out / "results" / f"curves_{task}_{regime}.png").stat().st_size > 0
            assert f"](curves_{task}_{regime}.png)" in readme


def test_discovery_quick_run_meta_tests_the_top(tmp_path: Path, grape_cache: Path) -> None:
    out = tmp_path / "discovery"
    run_script("discovery", out, grape_cache)
    results = out / "results"
    # quick: the top 2 candidates, grpo and ppo on 2 meta-train tasks, 1 held-out task and the
    # small policy on 1 task, 2 seeds each.
    finals = rows(results / "results.csv")
    kinds = {r["target"]: r["kind"] for r in finals}
    assert kinds == {  # the first meta-train task as quick's meta_train_labels names it
        "addition_3digit": "meta-train",
        "addition": "meta-train",
        "long_sort": "held-out",
        "long_addition_3digit_small": "larger policy",
    }
    assert len(finals) == 4 * 4 * 2
    labels = {r["label"] for r in finals}
    assert {"grpo", "ppo"} < labels and len(labels) == 4
    assert {r["policy"] for r in finals if r["kind"] == "larger policy"} == {"small"}
    # the held-out task never trained in the campaign
    campaign_tasks = {p.parent.name for p in (out / "campaign").rglob("seed*") if p.is_dir()}
    assert "long_sort" not in campaign_tasks
    assert campaign_tasks == {"long_addition-max_digits3-min_digits3", "addition"}
    # every candidate against both references on every target, paired over 2 seeds
    effects = rows(results / "effects.csv")
    assert len(effects) == 2 * 2 * 4 and all(r["n"] == "2" for r in effects)
    assert {r["reference"] for r in effects} == {"grpo", "ppo"}
    # the search's trials: quick's 3 candidates and 2 baselines trained, each with its fitness
    # at its one rung of seeds (quick's budget: 1 seed); formulas rejected by the cheap checks
    # (free toward the budget) are listed as FAIL with the reason
    trials = rows(results / "campaign_trials.csv")
    trained = [r for r in trials if not r["stopped"].startswith("cheap checks:")]
    assert sorted(r["label"] for r in trained)[:2] == ["grpo", "ppo"] and len(trained) == 5
    assert all(r["state"] == "COMPLETE" and r["fitness_1_seeds"] != "" for r in trained)
    assert all(r["state"] == "FAIL" for r in trials if r not in trained)
    readme = (results / "README.md").read_text()
    for heading in ("### The discovered objectives", "### Meta-train", "### Held-out"):
        assert heading in readme
    for name in ("effects_grpo.png", "effects_ppo.png", "curves_long_sort.png"):
        assert (results / name).stat().st_size > 0
    again = run_script("discovery", out, grape_cache)
    assert "(0 run now, 32 reused from earlier)" in again


def test_small_warm_start_quick_run_writes_the_curves(tmp_path: Path, grape_cache: Path) -> None:
    out = tmp_path / "warm"
    run_script("discovery", out, grape_cache, script="small_warm_start.py")
    curves = rows(out / "results" / "small_warm_start.csv")
    # quick: one task, one rate, 4 SFT steps evaluated every 2 from the untrained policy
    assert [(r["task"], r["lr"], r["step"]) for r in curves] == [
        ("long_addition_3digit", "0.0010", str(step)) for step in (0, 2, 4)
    ]
    assert all(0.0 <= float(r["reward"]) <= 1.0 for r in curves)
