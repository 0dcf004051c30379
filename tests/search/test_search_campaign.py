"""The campaign layer (DESIGN.md section 5): ``grape evolve`` / ``grape worker`` end to end.

Covers the study layout (candidates + baselines with the same budget and seeds), the result
cache, resume, a campaign killed mid-trial, failing candidates, user-facing YAML errors, workers
joining a campaign, and how baselines are projected onto the genome.

Subprocesses run with one torch thread (``OMP_NUM_THREADS=1``): the tiny models are fastest that
way, and two threads per process on a loaded two-core machine are an order of magnitude slower.
Warm starts are cached in a session folder (``GRAPE_CACHE``) shared by every test here.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from campaign_helpers import (
    TINY_BUDGET,
    cli_env,
    db_states,
    fake_result,
    fake_training,
    integrity,
    invoke,
    write_space,
)
from optuna.trial import TrialState

from grape_evo.objective import presets
from grape_evo.search.campaign import (
    REEVAL_SEED_OFFSET,
    Campaign,
    CampaignError,
    budget_used,
)
from grape_evo.search.campaign.trials import prepare
from grape_evo.search.evaluator import CandidateResult, verify_artifacts
from grape_evo.search.space import load_space, parse_space

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)

TINY: dict[str, Any] = {
    "name": "tiny",
    "tasks": ["addition"],
    "policy": {"preset": "tiny"},
    "budget": dict(TINY_BUDGET),
    "base": "grpo",
    "axes": {
        "advantage.name": {"choices": ["group_zscore", "group_mean"]},
        "surrogate.name": {"choices": ["reinforce", "ppo_clip"]},
        "surrogate.clip_high": {"low": 0.1, "high": 0.4, "when": {"surrogate.name": ["ppo_clip"]}},
    },
    "baselines": ["grpo", "dpo"],
    "search": {
        "sampler": "evolution",
        "trials": 4,
        "pruner": "median",
        "objectives": ["final_reward"],
        "population_size": 4,
    },
}


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def space_dict(**changes: Any) -> dict[str, Any]:
    """TINY with top-level keys replaced; ``budget``/``search`` mappings are merged into TINY's."""
    data = copy.deepcopy(TINY)
    for key, value in changes.items():
        if key in ("budget", "search") and isinstance(value, dict):
            data[key].update(value)
        elif value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def grape(cache: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``grape ARGS`` (as ``python -m grape_evo.cli``) in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "grape_evo.cli", *args],
        env=cli_env(cache),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def load(out: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")


def squeeze(text: str) -> str:
    """``text`` without whitespace (rich wraps long messages at the terminal width)."""
    return re.sub(r"\s+", "", text)


def file_mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def trial_snapshot(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    return {
        "state": trial.state,
        "values": trial.values,
        "params": trial.params,
        "datetime_start": trial.datetime_start,
        "datetime_complete": trial.datetime_complete,
        "user_attrs": trial.user_attrs,
    }


# ---------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _campaign_env(campaign_env: None) -> None:
    """Every test here runs with the shared cache and one thread (tests/conftest.py)."""


# ---------------------------------------------------------------------------------------------
# 1. end to end
# ---------------------------------------------------------------------------------------------


def test_evolve_end_to_end(tmp_path: Path, grape_cache: Path) -> None:
    space = write_space(tmp_path, space_dict())
    out = tmp_path / "run"
    proc = grape(grape_cache, "evolve", str(space), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr

    study = load(out, "tiny")
    trials = study.get_trials()
    assert len(trials) == 4 + 2  # candidates + baselines
    assert all(t.state in FINISHED for t in trials), [t.state for t in trials]
    assert study.user_attrs["budget"] == 6
    assert budget_used(study) == 6

    baselines = {t.user_attrs["baseline"]: t for t in trials if t.user_attrs.get("baseline")}
    assert set(baselines) == {"grpo", "dpo"}
    # Baselines are enqueued first and are never pruned (the median pruner starts after 4).
    assert sorted(t.number for t in baselines.values()) == [0, 1]
    assert all(t.state == TrialState.COMPLETE for t in baselines.values())
    assert baselines["grpo"].user_attrs["key"] == presets.get("grpo").key()
    assert baselines["dpo"].user_attrs["key"] == presets.get("dpo").key()

    # Every trial that trained ran the same budget on the same seeds.
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert any(not t.user_attrs.get("baseline") for t in complete)
    budgets = set()
    for t in complete:
        runs = t.user_attrs["runs"]
        assert [r["seed"] for r in runs] == [0, 1], (t.number, runs)
        assert all(r["status"] == "ok" for r in runs)
        assert t.user_attrs["reward"] == pytest.approx(
            sum(r["final_eval"]["reward"] for r in runs) / len(runs)
        )
        # The value is the paired fitness against GRPO (the reference) on the same seeds:
        # the mean difference of final rewards over GRPO's gain on the warm start.
        ref = [json.loads(study.user_attrs[f"reference:addition:{s}"]) for s in (0, 1)]
        gain = max(
            sum(r["final_eval"]["reward"] - r["initial_eval"]["reward"] for r in ref) / 2, 0.02
        )
        pairs = zip(runs, ref, strict=True)
        diffs = [c["final_eval"]["reward"] - r["final_eval"]["reward"] for c, r in pairs]
        assert t.values[0] == pytest.approx(sum(diffs) / 2 / gain)
        if t.user_attrs.get("baseline") == "grpo":
            assert t.values[0] == 0.0
        for r in runs:
            summary = json.loads((Path(r["out_dir"]) / "summary.json").read_text())
            assert summary["seed"] == r["seed"]
            tc = summary["train_config"]
            budgets.add(
                (
                    tc["steps"],
                    tc["eval_every"],
                    tc["batch_size"],
                    tc["eval_prompts"],
                    tc["warm_start_steps"],
                    tc["lr"],
                )
            )
    # One learning rate for every run: the best of 0.5, 1 and 2 x the budget's for GRPO.
    tuning = study.user_attrs["lr_tuning"]
    assert sorted(float(r) for r in tuning) == pytest.approx([5e-5, 1e-4, 2e-4])
    best = max(tuning, key=lambda r: tuning[r])
    assert study.user_attrs["lr"] == pytest.approx(float(best))
    assert len(budgets) == 1
    (chosen,) = budgets
    assert chosen[:5] == (2, 1, 8, 8, 5) and chosen[5] == pytest.approx(float(best))

    # Discoveries: the top-k candidates and every baseline, on fresh seeds.
    disc = json.loads((out / "discoveries.json").read_text())
    assert disc["seeds"] == [REEVAL_SEED_OFFSET, REEVAL_SEED_OFFSET + 1]
    assert all(s >= 1000 for s in disc["seeds"])
    rows = disc["candidates"]
    assert sorted(r["label"] for r in rows if r["baseline"]) == ["dpo", "grpo"]
    candidate_keys = {t.user_attrs["key"] for t in complete if not t.user_attrs.get("baseline")}
    chosen = [r for r in rows if not r["baseline"]]
    assert len(chosen) == min(2, len(candidate_keys))
    assert len({r["key"] for r in chosen}) == len(chosen)
    # The chosen ones are the best candidates by search reward.
    unchosen = [
        t.user_attrs["reward"]
        for t in complete
        if not t.user_attrs.get("baseline")
        and t.user_attrs["key"] not in {r["key"] for r in chosen}
    ]
    if unchosen:
        assert min(r["search_reward"] for r in chosen) >= max(unchosen)
    for row in rows:
        assert row["status"] == "ok", row
        low, high = row["reward_ci95"]
        assert row["reward"] is not None and low is not None and high is not None
        assert low - 1e-12 <= row["reward"] <= high + 1e-12, row
        assert len(row["rewards"]) == 2
        seed_dirs = sorted((out / "reeval" / row["label"] / "addition").iterdir())
        seeds = [json.loads((d / "summary.json").read_text())["seed"] for d in seed_dirs]
        assert sorted(seeds) == [1000, 1001]
    rewards = [r["reward"] for r in rows]
    assert rewards == sorted(rewards, reverse=True)


# ---------------------------------------------------------------------------------------------
# 2. result cache
# ---------------------------------------------------------------------------------------------


def _check_single_point_campaign(study: optuna.Study, out: Path) -> None:
    trials = sorted(study.get_trials(), key=lambda t: t.number)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    first, *rest = trials
    assert "reused_from" not in first.user_attrs
    for t in rest:
        assert t.user_attrs["reused_from"] == first.number
        assert t.values == first.values
        assert t.user_attrs["key"] == first.user_attrs["key"]
        for name in ("runs", "reward", "accuracy", "kl_to_ref"):
            assert t.user_attrs[name] == first.user_attrs[name], name
    with_outputs = sorted(
        d.name for d in (out / "trials").iterdir() if any(p.is_file() for p in d.rglob("*"))
    )
    assert with_outputs == [f"{first.number:05d}"]


def test_single_point_space_trains_once(tmp_path: Path) -> None:
    data = space_dict(
        name="one",
        axes={"advantage.name": {"choices": ["group_mean"]}},
        baselines=None,
        search={"trials": 3},
    )
    out = tmp_path / "run"
    space = parse_space(data)
    campaign = Campaign(space, out)
    study = campaign.open(create=True)
    campaign.optimize(study, 3)
    _check_single_point_campaign(study, out)


def test_objectives_that_train_alike_are_evaluated_once(tmp_path: Path) -> None:
    """PPO-clip and SAPO with GRPO's advantage, one update per batch: the ratio is exactly 1,
    so their gradients are the same (different spec keys, the same behaviour). The second
    trial reuses the first's result; REINFORCE with two epochs does not."""
    data = space_dict(
        name="alike",
        axes={"surrogate.name": {"choices": ["ppo_clip", "sapo"]}},
        baselines=None,
        search={"sampler": "grid", "trials": 2, "pruner": "none"},
    )
    campaign = Campaign(parse_space(data), tmp_path / "run")
    study = campaign.open(create=True)
    campaign.optimize(study, 2)
    first, second = sorted(study.get_trials(), key=lambda t: t.number)
    assert first.user_attrs["key"] != second.user_attrs["key"]
    assert "reused_from" not in first.user_attrs
    assert second.user_attrs["reused_from"] == first.number and second.value == first.value


def test_space_without_axes_runs_as_a_single_point(tmp_path: Path) -> None:
    """A space without axes loads fine, so `grape evolve` must run it (one point, cached)."""
    space = write_space(tmp_path, space_dict(name="none", axes=None, baselines=None))
    load_space(space)  # the loader accepts it
    out = tmp_path / "run"
    result = invoke("evolve", str(space), "--out", str(out), "--trials", "3")
    assert result.exit_code == 0, result.output
    _check_single_point_campaign(load(out, "none"), out)


# ---------------------------------------------------------------------------------------------
# 3. resume
# ---------------------------------------------------------------------------------------------


def test_resume(tmp_path: Path, grape_cache: Path) -> None:
    data = space_dict(
        name="res",
        baselines=None,
        budget={"reeval_seeds": 1, "top_k": 1},
        search={"trials": 2, "pruner": "none"},
    )
    space = write_space(tmp_path, data)
    out = tmp_path / "run"

    first = grape(grape_cache, "evolve", str(space), "--out", str(out), "--resume")
    assert first.returncode == 0, first.stderr[-3000:]
    study = load(out, "res")
    before = {t.number: trial_snapshot(t) for t in study.get_trials()}
    assert sorted(before) == [0, 1]
    assert all(s["state"] == TrialState.COMPLETE for s in before.values())
    mtimes = file_mtimes(out / "trials")
    assert mtimes

    again = grape(grape_cache, "evolve", str(space), "--out", str(out))
    assert again.returncode == 2
    assert "--resume" in squeeze(again.stderr)
    assert "Traceback" not in again.stderr
    assert len(load(out, "res").get_trials()) == 2

    more = grape(grape_cache, "evolve", str(space), "--out", str(out), "--resume", "--trials", "4")
    assert more.returncode == 0, more.stderr[-3000:]
    study = load(out, "res")
    trials = {t.number: t for t in study.get_trials()}
    assert sorted(trials) == [0, 1, 2, 3]  # only the missing trials were added
    assert all(t.state in FINISHED for t in trials.values())
    assert study.user_attrs["candidates"] == 4 and study.user_attrs["budget"] == 4
    for number, snap in before.items():
        assert trial_snapshot(trials[number]) == snap, number
    after = file_mtimes(out / "trials")
    assert {k: v for k, v in after.items() if k in mtimes} == mtimes
    assert not any(k.startswith(("00000", "00001")) for k in set(after) - set(mtimes))


def test_resumed_sampler_does_not_replay_earlier_genomes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resumed campaign (a new process, a new sampler) must not propose the genomes it already
    evaluated: with continuous axes a repeat can only be the sampler's RNG starting over."""

    fake_training(monkeypatch, fake_result)
    data = space_dict(
        name="replay",
        axes={
            "surrogate.clip_high": {"low": 0.1, "high": 0.4},
            "kl.coef": {"low": 1.0e-4, "high": 0.1, "log": True},
        },
        baselines=None,
        search={"pruner": "none", "population_size": 4},
    )
    space = parse_space(data)
    out = tmp_path / "run"
    first = Campaign(space, out)
    first.optimize(first.open(create=True), 2)
    resumed = Campaign(space, out)  # what `grape evolve --resume` builds in a new process
    study = resumed.open(create=True)
    resumed.optimize(study, 4)
    trials = sorted(study.get_trials(), key=lambda t: t.number)
    assert len(trials) == 4
    old = [t.params for t in trials[:2]]
    for t in trials[2:]:
        assert "reused_from" not in t.user_attrs, (t.number, t.params, old)
        assert t.params not in old, (t.number, t.params, old)


# ---------------------------------------------------------------------------------------------
# 4. a campaign killed mid-trial
# ---------------------------------------------------------------------------------------------

KILL_SPACE = space_dict(
    name="kill",
    baselines=None,
    budget={"steps": 30, "eval_every": 5, "reeval_seeds": 1, "top_k": 1},
    search={"trials": 5, "pruner": "none"},
)


@pytest.fixture(scope="module")
def killed_campaign(tmp_path_factory: pytest.TempPathFactory, grape_cache: Path) -> dict:
    """`grape evolve` SIGKILLed while a trial runs, after at least two trials completed."""
    root = tmp_path_factory.mktemp("killed")
    space = write_space(root, KILL_SPACE)
    out = root / "run"
    log = (root / "stderr.txt").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "grape_evo.cli", "evolve", str(space), "--out", str(out)],
        env=cli_env(grape_cache),
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    deadline = time.monotonic() + 240
    try:
        while True:
            rows = db_states(out / "study.db")
            states = [s for _, s, _ in rows]
            # Kill while the trial trains, i.e. after its worker's first heartbeat: Optuna never
            # fails a RUNNING trial that has no heartbeat record (killed right after ask()).
            beating = [n for n, s, beat in rows if s == "RUNNING" and beat is not None]
            if states.count("COMPLETE") >= 2 and states.count("RUNNING") == 1 and beating:
                break
            if proc.poll() is not None:
                pytest.fail(f"grape evolve ended (rc {proc.returncode}) before it could be killed")
            if time.monotonic() > deadline:
                pytest.fail(f"no trial running after two complete ones: {states}")
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    killed_at = time.monotonic()
    study = load(out, "kill")
    trials = study.get_trials()
    running = [t.number for t in trials if t.state == TrialState.RUNNING]
    assert len(running) == 1, [(t.number, t.state) for t in trials]
    complete = {t.number: trial_snapshot(t) for t in trials if t.state == TrialState.COMPLETE}
    assert len(complete) >= 2
    return {
        "root": root,
        "space": space,
        "killed_at": killed_at,
        "running": running[0],
        "complete": complete,
        "budget": study.user_attrs["budget"],
    }


def _copy_killed(killed: dict, dest: Path) -> tuple[Path, dict[str, int]]:
    out = dest / "run"
    shutil.copytree(killed["root"] / "run", out)
    mtimes = {
        k: v
        for n in killed["complete"]
        for k, v in file_mtimes(out / "trials").items()
        if k.startswith(f"{n:05d}")
    }
    return out, mtimes


def _check_after_resume(killed: dict, out: Path, mtimes: dict[str, int]) -> optuna.Study:
    study = load(out, "kill")
    trials = {t.number: t for t in study.get_trials()}
    # Trials complete before the kill are untouched.
    for number, snap in killed["complete"].items():
        assert trial_snapshot(trials[number]) == snap, number
    now = file_mtimes(out / "trials")
    assert {k: now.get(k) for k in mtimes} == mtimes
    # The trial that was running is failed and retried, and its retry completes.
    dead = killed["running"]
    assert trials[dead].state == TrialState.FAIL, trials[dead].state
    retries = [
        t
        for t in trials.values()
        if t.system_attrs.get("failed_trial") == dead
        or dead in t.system_attrs.get("retry_history", [])
    ]
    assert retries, "the killed trial was not retried"
    assert any(t.state == TrialState.COMPLETE for t in retries)
    # The retry keeps every gene the dead trial had drawn (the kill may land between two
    # suggestions, so the dead trial's params can be a prefix of the genome).
    assert trials[dead].params.items() <= retries[0].params.items()
    # Nothing is left running and the budget is reached, counting the retry once.
    assert [t.number for t in trials.values() if t.state == TrialState.RUNNING] == []
    assert budget_used(study) == killed["budget"]
    assert integrity(out / "study.db") == "ok"
    return study


def test_killed_campaign_resumes_through_cli(
    killed_campaign: dict, tmp_path: Path, grape_cache: Path
) -> None:
    """`grape evolve --resume` right after a kill (the default heartbeat: 30 s, grace 120 s).

    The CLI does not expose the heartbeat, so the dead worker's trial must not be left RUNNING
    by a resume that reaches the budget before the grace period ends.
    """
    out, mtimes = _copy_killed(killed_campaign, tmp_path)
    proc = grape(
        grape_cache, "evolve", str(killed_campaign["space"]), "--out", str(out), "--resume"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_after_resume(killed_campaign, out, mtimes)


def test_killed_campaign_resumes_with_short_heartbeat(
    killed_campaign: dict, tmp_path: Path
) -> None:
    out, mtimes = _copy_killed(killed_campaign, tmp_path)
    assert integrity(out / "study.db") == "ok"
    grace = 2
    time.sleep(max(0.0, killed_campaign["killed_at"] + grace + 1.5 - time.monotonic()))
    space = load_space(killed_campaign["space"])
    campaign = Campaign(space, out, heartbeat_interval=1, grace_period=grace)
    study = campaign.open(create=True)
    campaign.optimize(study, int(study.user_attrs["budget"]))
    _check_after_resume(killed_campaign, out, mtimes)


# ---------------------------------------------------------------------------------------------
# 5. failing candidates
# ---------------------------------------------------------------------------------------------


def test_failed_candidate_is_recorded_and_campaign_continues(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake(spec: Any, configs: Any, out_dir: Path) -> CandidateResult:
        if Path(out_dir).name == "00001":
            return fake_result(spec, configs, out_dir, status="failed", reason="boom")
        return fake_result(spec, configs, out_dir)

    fake_training(monkeypatch, fake)
    # A continuous KL coefficient: no two trials train alike, so none reuses another's result.
    axes = {"kl.coef": {"low": 1.0e-4, "high": 0.1, "log": True}}
    space = parse_space(
        space_dict(name="fails", axes=axes, baselines=None, search={"trials": 4, "pruner": "none"})
    )
    campaign = Campaign(space, tmp_path / "run")
    study = campaign.open(create=True)
    campaign.optimize(study, 4)
    trials = {t.number: t for t in study.get_trials()}
    assert sorted(trials) == [0, 1, 2, 3]
    assert trials[1].state == TrialState.FAIL
    assert trials[1].user_attrs["failure"] == "addition seed 0: failed: boom"
    assert trials[1].user_attrs["runs"][0]["status"] == "failed"
    assert [trials[n].state for n in (0, 2, 3)] == [TrialState.COMPLETE] * 3
    assert budget_used(study) == 4


def test_candidates_that_diverge_fail_and_baselines_still_report(tmp_path: Path) -> None:
    """A real failure: a learning rate of 1e6 makes sampling see NaNs; the baseline trains at
    the budget's learning rate and is the only discovery."""
    data = space_dict(
        name="diverge",
        axes={"optim.lr": {"choices": [1.0e6]}},
        baselines=["grpo"],
        budget={"reeval_seeds": 1, "top_k": 1},
        search={"trials": 2, "pruner": "none"},
    )
    space = write_space(tmp_path, data)
    out = tmp_path / "run"
    result = invoke("evolve", str(space), "--out", str(out))
    assert result.exit_code == 0, result.output
    trials = {t.number: t for t in load(out, "diverge").get_trials()}
    assert sorted(trials) == [0, 1, 2]
    assert trials[0].user_attrs["baseline"] == "grpo"
    assert trials[0].state == TrialState.COMPLETE
    for n in (1, 2):
        assert trials[n].state == TrialState.FAIL
        assert trials[n].user_attrs["overrides"] == {"lr": 1.0e6}
        assert trials[n].user_attrs["failure"].startswith("addition seed 0: ")
        assert "reused_from" not in trials[n].user_attrs
    rows = json.loads((out / "discoveries.json").read_text())["candidates"]
    assert [r["label"] for r in rows] == ["grpo"]


# ---------------------------------------------------------------------------------------------
# 6. bad YAML through the CLI
# ---------------------------------------------------------------------------------------------

AXES = TINY["axes"]
BAD_SPACES: dict[str, tuple[dict[str, Any], str]] = {
    "unknown_axis_path": (
        space_dict(axes={"advantage.nam": {"choices": ["group_mean"]}}),
        "axes.advantage.nam",
    ),
    "unknown_component": (
        space_dict(axes={"advantage.name": {"choices": ["group_zscore", "nope"]}}),
        "axes.advantage.name.choices",
    ),
    "empty_choices": (
        space_dict(axes={"advantage.name": {"choices": []}}),
        "axes.advantage.name.choices",
    ),
    "low_not_below_high": (
        space_dict(axes={"surrogate.clip_high": {"low": 0.4, "high": 0.1}}),
        "axes.surrogate.clip_high",
    ),
    "low_equals_high": (
        space_dict(axes={"kl.coef": {"low": 0.1, "high": 0.1}}),
        "axes.kl.coef",
    ),
    "when_on_missing_axis": (
        space_dict(
            axes={
                "advantage.name": AXES["advantage.name"],
                "surrogate.clip_high": {
                    "low": 0.1,
                    "high": 0.4,
                    "when": {"surrogate.name": ["ppo_clip"]},
                },
            }
        ),
        "axes.surrogate.clip_high.when.surrogate.name",
    ),
    "unknown_task": (space_dict(tasks=["no_such_task"]), "tasks[0]"),
    "unknown_sampler": (space_dict(search={"sampler": "annealing"}), "search.sampler"),
    "unknown_pruner": (space_dict(search={"pruner": "sometimes"}), "search.pruner"),
    "unknown_baseline": (space_dict(baselines=["grpo", "nope"]), "baselines[1]"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPACES))
def test_bad_space_is_one_error_naming_file_and_key(case: str, tmp_path: Path) -> None:
    data, key = BAD_SPACES[case]
    space = write_space(tmp_path, data)
    out = tmp_path / "run"
    result = invoke("evolve", str(space), "--out", str(out))
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert result.stdout == ""
    err = squeeze(result.stderr)
    assert err.count("error:") == 1, result.stderr
    assert squeeze(str(space)) in err
    assert f"{key}:" in err, result.stderr
    assert not out.exists(), "a bad space must not create the campaign folder"


def test_bad_space_in_a_real_process(tmp_path: Path, grape_cache: Path) -> None:
    data, key = BAD_SPACES["unknown_axis_path"]
    space = write_space(tmp_path, data)
    proc = grape(grape_cache, "evolve", str(space), "--out", str(tmp_path / "run"))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert squeeze(f"{space}: {key}:") in squeeze(proc.stderr)


@pytest.mark.parametrize("folder", ["[exp1]", "x[/y]"])
def test_error_message_keeps_brackets_in_paths(folder: str, tmp_path: Path) -> None:
    """Messages are plain text: a path with brackets must be printed as is (not read as rich
    markup, which drops ``[exp1]`` and crashes on ``[/y]``)."""
    data, key = BAD_SPACES["unknown_axis_path"]
    space = write_space(tmp_path / folder, data)
    result = invoke("evolve", str(space), "--out", str(tmp_path / "run"))
    assert result.exit_code == 2, (result.exit_code, repr(result.exception))
    assert "Traceback" not in result.output
    assert squeeze(f"{space}: {key}:") in squeeze(result.stderr), result.stderr


# ---------------------------------------------------------------------------------------------
# 7. workers
# ---------------------------------------------------------------------------------------------


def test_worker_joins_a_campaign(tmp_path: Path, grape_cache: Path) -> None:
    data = space_dict(name="wk", baselines=None, search={"trials": 1, "pruner": "none"})
    out = tmp_path / "run"
    campaign = Campaign(parse_space(data), out)
    study = campaign.open(create=True)
    campaign.optimize(study, 1)
    assert budget_used(study) == 1
    study.set_user_attr("budget", 3)  # the campaign's budget was raised
    url = f"sqlite:///{out / 'study.db'}"

    proc = grape(grape_cache, "worker", "--storage", url, "--study", "wk")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3/3" in proc.stdout
    study = load(out, "wk")
    trials = {t.number: t for t in study.get_trials()}
    assert sorted(trials) == [0, 1, 2]
    assert all(t.state in FINISHED for t in trials.values())
    assert budget_used(study) == 3
    for n in (1, 2):
        if trials[n].state == TrialState.COMPLETE and "reused_from" not in trials[n].user_attrs:
            assert (out / "trials" / f"{n:05d}" / "addition" / "seed0" / "summary.json").is_file()

    missing = invoke("worker", "--storage", url, "--study", "nope")
    assert missing.exit_code == 2, missing.output
    assert isinstance(missing.exception, SystemExit)
    assert "Traceback" not in missing.output
    err = squeeze(missing.stderr)
    assert "'nope'" in err and "['wk']" in err, missing.stderr


def test_evolve_with_jobs_runs_trials_in_parallel_processes(
    tmp_path: Path, grape_cache: Path
) -> None:
    """``--jobs 2``: the budget is run by two worker processes at once, each trial recorded
    once, every counted trial COMPLETE (no pruner), each baseline exactly once."""
    space = write_space(tmp_path, space_dict(search={"pruner": "none"}))
    out = tmp_path / "run"
    proc = grape(grape_cache, "evolve", str(space), "--out", str(out), "--jobs", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "(2 jobs)" in proc.stdout and "6/6" in proc.stdout

    study = load(out, "tiny")
    trials = study.get_trials()
    assert budget_used(study) == 6
    counted = [t for t in trials if not t.user_attrs.get("surplus")]
    assert len(counted) == 6
    assert [t.state for t in counted] == [TrialState.COMPLETE] * 6
    # A sampled trial that lost the race for the last slot is failed untrained, not counted.
    assert all(t.state == TrialState.FAIL for t in trials if t.user_attrs.get("surplus"))
    baselines = sorted(t.user_attrs["baseline"] for t in counted if t.user_attrs.get("baseline"))
    assert baselines == ["dpo", "grpo"]
    # Usually both processes run trials; on a loaded machine one may run all six before the
    # other has imported torch, so only "at most two" is certain.
    workers = {t.user_attrs["worker"] for t in counted}
    assert 1 <= len(workers) <= 2, workers
    for t in counted:
        if "reused_from" not in t.user_attrs:
            folder = out / "trials" / f"{t.number:05d}"
            assert verify_artifacts(folder, t.user_attrs["artifacts"]) == [], t.number
    assert json.loads((out / "discoveries.json").read_text())["candidates"]


def test_bad_jobs_is_one_error(tmp_path: Path) -> None:
    space = write_space(tmp_path, space_dict())
    evolve = ["evolve", str(space), "--out", str(tmp_path / "run")]
    worker = ["worker", "--storage", f"sqlite:///{tmp_path / 'run' / 'study.db'}", "--study", "s"]
    for command in (evolve, worker):
        result = invoke(*command, "--jobs", "0")
        assert result.exit_code == 2, result.output
        assert "Invalid value for '--jobs'" in result.output, result.output
    assert not (tmp_path / "run").exists()
    with pytest.raises(CampaignError, match="jobs must be an integer >= 1"):
        Campaign(parse_space(TINY), tmp_path / "run", jobs=0)


# ---------------------------------------------------------------------------------------------
# 8. baselines projected onto the genome (`SearchSpace.project`: tests/search/test_search_space.py)
# ---------------------------------------------------------------------------------------------


def test_baselines_are_enqueued_with_their_projected_genes(tmp_path: Path) -> None:
    space = parse_space(space_dict())
    study = Campaign(space, tmp_path / "run").open(create=True)
    waiting = sorted(study.get_trials(states=(TrialState.WAITING,)), key=lambda t: t.number)
    assert [t.user_attrs["baseline"] for t in waiting] == ["grpo", "dpo"]
    # grpo is a complete point of the genome; dpo is not (it has no advantage or clip gene),
    # so it gets no genes at all rather than randomly sampled ones.
    assert [t.system_attrs["fixed_params"] for t in waiting] == [
        space.project(presets.get("grpo")),
        {},
    ]
    assert [t.user_attrs["genome_complete"] for t in waiting] == [True, False]
    # Opening again (a resume) does not enqueue them twice.
    again = Campaign(space, tmp_path / "run").open(create=True)
    assert len(again.get_trials()) == 2


def test_a_trial_popped_twice_runs_once(tmp_path: Path) -> None:
    """On SQLite two workers can pop the same enqueued trial: only the first claim runs it; the
    second process's `prepare` returns None without recording anything, and its round neither
    trains nor tells the trial (the first worker tells it)."""
    campaign = Campaign(parse_space(TINY), tmp_path / "run")
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}")
    trial = study.ask()
    assert prepare(campaign, trial) is not None  # the first worker
    copy_of = optuna.Trial(study, trial._trial_id)  # a second process, same trial
    assert prepare(campaign, copy_of) is None
    study.tell(trial, 0.5)  # the first worker finished it
    assert study.trials[0].state == TrialState.COMPLETE and study.trials[0].value == 0.5
    assert study.trials[0].user_attrs["worker"].endswith(f":{os.getpid()}")
