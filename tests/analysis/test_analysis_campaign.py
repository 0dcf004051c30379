"""Frames, figures and the report on a small synthetic campaign folder (no training)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import optuna
import pandas as pd
import pytest
from matplotlib.figure import Figure
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from grape_evo.analysis import figures as F
from grape_evo.analysis import write_report
from grape_evo.analysis.frames import (
    discoveries_frame,
    find_run_folders,
    runs_frame,
    seed_columns,
    steps_frame,
    trials_frame,
)
from grape_evo.analysis.summaries import best_so_far, curve_summary, param_importances
from grape_evo.objective import ObjectiveSpec, presets
from grape_evo.search.campaign import load_run_study

ADV = CategoricalDistribution(["group_zscore", "group_mean"])
CLIP = FloatDistribution(0.1, 0.4)
SPACE = {"name": "synth", "axes": {"advantage.name": {}, "surrogate.clip_high": {}}}
SEEDS = (0, 1)
REEVAL_SEEDS = (1000, 1001, 1002)
# final held-out reward per search seed of each trial (trial 3 pruned, trial 4 failed)
SEARCH = {
    0: ("grpo", [0.5, 0.5], 0.02),
    1: ("dpo", [0.3, 0.5], 0.001),
    2: (None, [0.6, 0.8], 0.03),
    5: (None, [0.55, 0.65], 0.01),
}
# held-out reward at steps 0, 2, 4 for each re-evaluation seed
REEVAL_CURVES = {
    "trial-2": [[0.1, 0.2, 0.7], [0.1, 0.4, 0.8], [0.1, 0.6, 0.9]],
    "trial-5": [[0.1, 0.3, 0.6], [0.1, 0.3, 0.6], [0.1, 0.3, 0.6]],
    "grpo": [[0.1, 0.2, 0.5], [0.1, 0.2, 0.5], [0.1, 0.2, 0.4]],
    "dpo": [[0.1, 0.2, 0.3], [0.1, 0.2, 0.3], [0.1, 0.2, 0.3]],
}


def _candidate_spec(number: int) -> ObjectiveSpec:
    if number == 2:
        return presets.get("dapo").with_name("candidate-2")
    d = presets.get("grpo").to_dict()
    d["advantage"] = "group_mean"
    return ObjectiveSpec.from_dict({**d, "name": f"candidate-{number}"})


def _write_run(folder: Path, spec: ObjectiveSpec, seed: int, curve: list[float]) -> None:
    folder.mkdir(parents=True)
    records = []
    for i, step in enumerate((1, 2, 3, 4)):
        record = {"step": step, "reward": 0.1 * step, "kl_to_ref": 0.01 * step}
        if step % 2 == 0:
            record["eval_reward"] = curve[1 + i // 2]
            record["eval_accuracy"] = 0.0
        records.append(record)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = {
        "objective": spec.to_dict(),
        "objective_key": spec.key(),
        "task": {"name": "addition"},
        "seed": seed,
        "initial_eval": {"reward": curve[0], "accuracy": 0.0, "kl_to_ref": 0.0},
        "final_eval": {"reward": curve[-1], "accuracy": 0.0, "kl_to_ref": 0.02},
        "kl_to_ref": 0.02,
        "steps": 4,
        "wall_seconds": 1.0,
        "status": "ok",
        "reason": "",
    }
    (folder / "summary.json").write_text(json.dumps(summary))


def _runs_attr(run_dir: Path, number: int, finals: list[float], kl: float) -> list[dict]:
    return [
        {
            "task": "addition",
            "seed": seed,
            "status": "ok",
            "reason": "",
            "final_eval": {"reward": r, "accuracy": 0.0, "kl_to_ref": kl},
            "initial_eval": {"reward": 0.1, "accuracy": 0.0, "kl_to_ref": 0.0},
            "curve": [[2, 0.2], [4, r]],
            "wall_seconds": 1.0,
            "out_dir": str(run_dir / "trials" / f"{number:05d}" / "addition" / f"seed{seed}"),
        }
        for seed, r in zip(SEEDS, finals, strict=True)
    ]


@pytest.fixture
def campaign(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    storage = f"sqlite:///{run / 'study.db'}"
    study = optuna.create_study(study_name="synth", storage=storage, direction="maximize")
    study.set_user_attr("space", json.dumps(SPACE))
    study.set_user_attr("budget", 6)
    specs = {}
    for number in range(6):
        params: dict = {"advantage.name": "group_mean" if number in (1, 5) else "group_zscore"}
        dists: dict = {"advantage.name": ADV}
        if number in (2, 3, 4):
            params["surrogate.clip_high"] = 0.28
            dists["surrogate.clip_high"] = CLIP
        if number in SEARCH and SEARCH[number][0]:
            spec = presets.get(SEARCH[number][0])
        else:
            spec = _candidate_spec(number)
        specs[number] = spec
        attrs = {"objective": spec.to_dict(), "key": spec.key(), "overrides": {}}
        attrs["formula"] = spec.latex()
        state, value, inter = TrialState.COMPLETE, None, {}
        if number in SEARCH:
            baseline, finals, kl = SEARCH[number]
            if baseline:
                attrs["baseline"] = baseline
            value = sum(finals) / len(finals)
            attrs.update(reward=value, accuracy=0.0, kl_to_ref=kl)
            attrs["runs"] = _runs_attr(run, number, finals, kl)
            inter = {2: 0.2, 4: finals[0], 6: 0.2, 8: finals[1]}
            for seed, r in zip(SEEDS, finals, strict=True):
                folder = run / "trials" / f"{number:05d}" / "addition" / f"seed{seed}"
                _write_run(folder, spec, seed, [0.1, 0.2, r])
        elif number == 3:
            state, inter = TrialState.PRUNED, {2: 0.05}
            _write_run(run / "trials" / "00003" / "addition" / "seed0", spec, 0, [0.1, 0.05, 0.05])
        else:
            state = TrialState.FAIL
            attrs["failure"] = "addition seed 0: diverged: KL exploded"
        study.add_trial(
            create_trial(
                params=params,
                distributions=dists,
                value=value,
                user_attrs=attrs,
                intermediate_values=inter,
                state=state,
            )
        )
    # a corrupt summary (trial 2, seed 1) and a missing one (trial 5, seed 0)
    (run / "trials" / "00002" / "addition" / "seed1" / "summary.json").write_text("{not json")
    (run / "trials" / "00005" / "addition" / "seed0" / "summary.json").unlink()
    candidates = []
    for label, curves in REEVAL_CURVES.items():
        number = {"grpo": 0, "dpo": 1, "trial-2": 2, "trial-5": 5}[label]
        for seed, curve in zip(REEVAL_SEEDS, curves, strict=True):
            folder = run / "reeval" / label / "addition" / f"seed{seed}"
            _write_run(folder, specs[number], seed, curve)
        finals = [c[-1] for c in curves]
        candidates.append(
            {
                "label": label,
                "trial": number,
                "baseline": label in ("grpo", "dpo"),
                "key": specs[number].key(),
                "objective": specs[number].to_dict(),
                "search_reward": sum(SEARCH[number][1]) / 2,
                "reward": sum(finals) / 3,
                "reward_ci95": [min(finals), max(finals)],
                "accuracy": 0.0,
                "kl_to_ref": 0.02,
                "rewards": finals,
                "status": "ok",
            }
        )
    discoveries = {"seeds": list(REEVAL_SEEDS), "candidates": candidates}
    (run / "discoveries.json").write_text(json.dumps(discoveries))
    return run


# ---- frames -------------------------------------------------------------------------------
def test_trials_frame_rows_axes_status_key_and_seeds(campaign: Path):
    study = load_run_study(campaign)
    trials = trials_frame(study).set_index("number")
    assert list(trials.index) == [0, 1, 2, 3, 4, 5]
    assert list(trials["state"]) == ["COMPLETE"] * 3 + ["PRUNED", "FAIL", "COMPLETE"]
    assert list(trials["label"]) == ["grpo", "dpo", "trial-2", "trial-3", "trial-4", "trial-5"]
    assert trials.attrs["axes"] == ["advantage.name", "surrogate.clip_high"]
    assert trials.loc[5, "params.advantage.name"] == "group_mean"
    assert trials.loc[2, "params.surrogate.clip_high"] == 0.28
    assert math.isnan(trials.loc[0, "params.surrogate.clip_high"])  # inactive axis
    assert trials.loc[2, "key"] == presets.get("dapo").key()
    assert trials.loc[0, "baseline"] == "grpo" and trials.loc[2, "baseline"] == ""
    assert seed_columns(trials.reset_index()) == ["reward.addition.seed0", "reward.addition.seed1"]
    assert trials.loc[2, "reward.addition.seed0"] == 0.6
    assert trials.loc[2, "reward.addition.seed1"] == 0.8
    assert trials.loc[2, "value_0"] == pytest.approx(0.7)
    assert trials.loc[3, "last_step"] == 2 and trials.loc[3, "last_value"] == 0.05
    assert trials.loc[4, "failure"].startswith("addition seed 0: diverged")
    assert math.isnan(trials.loc[4, "reward"])


def test_best_so_far_ignores_pruned_and_failed(campaign: Path):
    trials = trials_frame(load_run_study(campaign))
    best = best_so_far(trials)
    assert best.tolist() == pytest.approx([0.5, 0.5, 0.7, 0.7, 0.7, 0.7])


def test_runs_frame_flags_missing_and_corrupt_summaries(campaign: Path):
    runs = runs_frame(campaign, load_run_study(campaign))
    # 4 complete trials x 2 seeds + 1 pruned run + 4 re-evaluated x 3 seeds
    assert len(runs) == 8 + 1 + 12
    bad = runs[runs["problem"] != ""].set_index("path")
    assert len(bad) == 2
    corrupt = str(campaign / "trials" / "00002" / "addition" / "seed1")
    missing = str(campaign / "trials" / "00005" / "addition" / "seed0")
    assert bad.loc[corrupt, "problem"].startswith("summary.json corrupt")
    assert bad.loc[missing, "problem"] == "summary.json missing"


def test_steps_frame_and_curves_from_reeval(campaign: Path):
    refs = [r for r in find_run_folders(campaign) if r.source == "reeval"]
    steps = steps_frame(refs)
    # each run: step 0 (initial eval) + 4 logged steps
    assert len(steps) == 12 * 5
    assert {"step", "reward", "eval_reward", "kl_to_ref", "label", "seed"} <= set(steps.columns)
    curves = curve_summary(steps).set_index(["label", "step"])
    row = curves.loc[("trial-2", 2)]
    # seeds 0.2, 0.4, 0.6: mean 0.4, half width t(0.975, 2) * 0.2 / sqrt(3) = 0.496828
    assert row["n"] == 3
    assert row["mean"] == pytest.approx(0.4)
    assert row["ci_high"] - row["mean"] == pytest.approx(0.496828, abs=1e-5)
    assert curves.loc[("trial-5", 4), "ci_low"] == pytest.approx(0.6)
    assert sorted(curves.index.get_level_values("step").unique()) == [0, 2, 4]


def test_discoveries_frame(campaign: Path):
    disc = discoveries_frame(campaign)
    assert list(disc["label"]) == ["trial-2", "trial-5", "grpo", "dpo"]  # best first
    top = disc.iloc[0]
    assert top["reward"] == pytest.approx(0.8) and top["n"] == 3
    assert (top["ci_low"], top["ci_high"]) == (0.7, 0.9)
    assert list(disc["baseline"]) == [False, False, True, True]


def test_discoveries_ci_recomputed_when_missing(tmp_path: Path):
    c = {"label": "x", "trial": 0, "baseline": False, "rewards": [1.0, 1.0, 1.0]}
    (tmp_path / "discoveries.json").write_text(json.dumps({"seeds": [], "candidates": [c]}))
    row = discoveries_frame(tmp_path).iloc[0]
    assert (row["reward"], row["ci_low"], row["ci_high"]) == (1.0, 1.0, 1.0)
    assert discoveries_frame(tmp_path / "nowhere") is None


def test_importances_skip_too_few_and_work_with_enough():
    study = optuna.create_study(direction="maximize")
    importances, note = param_importances(study)
    assert importances is None and "too few" in note
    for i in range(12):
        params = {"advantage.name": ADV.choices[i % 2]}
        dists: dict = {"advantage.name": ADV}
        if i % 2 == 0:  # conditional axis
            params["surrogate.clip_high"] = 0.1 + 0.02 * i
            dists["surrogate.clip_high"] = CLIP
        value = (1.0 if i % 2 == 0 else 0.0) + 0.001 * i
        study.add_trial(create_trial(params=params, distributions=dists, value=value))
    importances, note = param_importances(study)
    assert importances is not None, note
    assert set(importances) <= {"advantage.name", "surrogate.clip_high"}
    assert max(importances, key=importances.get) == "advantage.name"


# ---- figures ------------------------------------------------------------------------------
def _offsets(collection) -> int:
    return len(collection.get_offsets())


def test_figures_have_expected_artists(campaign: Path):
    study = load_run_study(campaign)
    trials = trials_frame(study)
    refs = [r for r in find_run_folders(campaign, study) if r.source == "reeval"]
    curves = curve_summary(steps_frame(refs))

    fig = F.learning_curves_figure(curves, baselines=["grpo", "dpo"])
    ax = fig.axes[0]
    assert isinstance(fig, Figure)
    assert len(ax.lines) == 4 and len(ax.collections) == 4  # a line and a CI band per label
    assert [len(line.get_xdata()) for line in ax.lines] == [3, 3, 3, 3]
    assert ax.get_xlabel() == "training step" and ax.get_title()
    assert len(ax.get_legend().get_texts()) == 4

    ax = F.learning_curves_figure(curves, baselines=["grpo"], comparison=True).axes[0]
    assert len(ax.lines) == 4 and len(ax.collections) == 0  # no bands: CIs are in the table
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "grpo (reference)" in texts and not any("discovered" in t for t in texts)
    # two references: both black, told apart by their line style
    ax = F.learning_curves_figure(curves, baselines=["grpo", "dpo"], comparison=True).axes[0]
    references = [line for line in ax.lines if "(reference)" in line.get_label()]
    assert {line.get_color() for line in references} == {"#000000"}
    assert sorted(line.get_linestyle() for line in references) == ["-", "--"]

    disc = discoveries_frame(campaign)
    ax = F.final_scores_figure(disc).axes[0]
    assert len(ax.collections[0].get_segments()) == 4  # CI whiskers
    assert _offsets(ax.collections[1]) == 4  # means
    assert _offsets(ax.collections[2]) == 12  # per-seed finals
    assert len(ax.lines) == 1  # best baseline mean

    points = trials[trials["state"] == "COMPLETE"][["label", "reward", "kl_to_ref", "baseline"]]
    ax = F.pareto_figure(points).axes[0]
    # (kl, reward): grpo (0.02, 0.5) dominated by trial-5 (0.01, 0.6); dpo (0.001, 0.4),
    # trial-5 and trial-2 (0.03, 0.7) on the front
    assert _offsets(ax.collections[0]) == 1
    assert _offsets(ax.collections[1]) == 3
    assert _offsets(ax.collections[2]) == 2  # baselines ringed
    assert len(ax.lines) == 1 and len(ax.lines[0].get_xdata()) == 3
    assert "KL to reference" in ax.get_xlabel()

    ax = F.history_figure(trials, best_so_far(trials)).axes[0]
    assert len(ax.lines) == 1 and len(ax.lines[0].get_xdata()) == 6
    assert [_offsets(c) for c in ax.collections] == [2, 2, 1, 1]  # done, baseline, pruned, fail
    assert "1 pruned, 1 failed" in ax.get_title()

    ax = F.importance_figure({"a": 0.7, "b": 0.3}).axes[0]
    assert len(ax.patches) == 2

    fig = F.formula_figure(presets.get("grpo").latex())
    assert isinstance(fig, Figure) and fig.get_figwidth() > 2
    with pytest.raises(ValueError):
        F.formula_figure(r"\frac{1}{")


def test_empty_frames_draw_without_error():
    empty = curve_summary(pd.DataFrame())
    assert isinstance(F.learning_curves_figure(empty), Figure)
    points = pd.DataFrame(columns=["label", "reward", "kl_to_ref"])
    assert isinstance(F.pareto_figure(points), Figure)


# ---- report -------------------------------------------------------------------------------
def test_write_report(campaign: Path):
    path = write_report(campaign)
    out = campaign / "report"
    assert path == out / "report.md"
    text = path.read_text()
    for heading in (
        "## Learning curves",
        "## Final held-out scores",
        "## Reward vs KL to reference",
        "## Optimisation history",
        "## Axis importance",
        "## Top objectives",
        "## Data problems",
    ):
        assert heading in text
    csv = pd.read_csv(out / "trials.csv")
    assert len(csv) == 6 and list(csv["number"]) == list(range(6))
    for name in ("curves_addition", "final_scores", "pareto", "history", "formula_trial-2"):
        png = out / f"{name}.png"
        assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
        assert f"]({name}.png)" in text
    problems = text.split("## Data problems", 1)[1]
    assert "trials/00002/addition/seed1`: summary.json corrupt" in problems
    assert "trials/00005/addition/seed0`: summary.json missing" in problems
    # importances skipped with a note (2 completed candidates), not a crash
    assert "Skipped: too few completed candidate trials" in text
    assert not (out / "importance.png").exists()
    # top objective: dapo-like candidate, nearest baseline grpo
    assert "### 1. trial-2" in text
    top = text.split("### 1. trial-2", 1)[1].split("###", 1)[0]
    assert "**grpo**" in top and "clip_high 0.28" in top and "KL off" in top
    assert "```yaml" in top and "name: candidate-2" in top


def test_write_report_without_discoveries_uses_trials(campaign: Path, tmp_path: Path):
    (campaign / "discoveries.json").unlink()
    shutil.rmtree(campaign / "reeval")
    path = write_report(campaign, tmp_path / "elsewhere")
    text = path.read_text()
    assert path.parent == tmp_path / "elsewhere"
    assert "search runs (`trials/`)" in text
    assert "No `discoveries.json`" in text
    assert "### 1. trial-2" in text and "### 2. trial-5" in text
    assert (tmp_path / "elsewhere" / "curves_addition.png").is_file()
    assert "Data problems" in text


@pytest.mark.parametrize(("gain", "caveat"), [(0.02, True), (0.15, False)])
def test_report_flags_fitness_divided_by_the_gain_floor(
    campaign: Path, gain: float, caveat: bool
) -> None:
    """A trial whose fitness on a task was divided by the floor 0.02 (the reference did not
    learn) gets the report's caveat naming the task; a learning reference does not."""
    study = optuna.load_study(study_name="synth", storage=f"sqlite:///{campaign / 'study.db'}")
    part = {"task": "addition", "n": 2, "raw_effect": -0.04, "raw_se": 0.01, "gain": gain}
    part.update(effect=-0.04 / gain, se=0.01 / gain)
    fitness = {"value": -0.04 / gain, "guarded": False, "n_seeds": 2, "tasks": [part]}
    study.add_trial(create_trial(value=-0.04 / gain, user_attrs={"fitness": fitness}))
    text = write_report(campaign).read_text()
    assert ("**Fitness caveat:** on addition" in text) is caveat


@pytest.mark.parametrize(("counts", "suffix"), [((5, 5, 5), ""), ((5, 5, 4), " (4 where")])
def test_curve_title_says_when_fewer_seeds_reached_a_point(counts, suffix) -> None:
    rows = [
        {"label": "a", "step": step, "n": n, "mean": 0.1, "ci_low": 0.0, "ci_high": 0.2}
        for step, n in zip((0, 25, 50), counts, strict=True)
    ]
    title = F.learning_curves_figure(pd.DataFrame(rows)).axes[0].get_title()
    assert "mean over 5 seeds" in title
    assert (" (4 where runs stopped early)" in title) is bool(suffix)
