"""Faults: unwritable or full output folders fail at start; a campaign SIGKILLed at any point
resumes (SQLite intact, nothing recorded lost); stored checksums catch files changed later.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import warnings
from collections import namedtuple
from pathlib import Path
from typing import Any

import optuna
import pytest
from campaign_helpers import cli_env, integrity, invoke, write_space
from optuna.trial import TrialState

from grape_evo import cli
from grape_evo.analysis import write_report
from grape_evo.search.campaign import Campaign, budget_used, fail_stale_trials, make_storage
from grape_evo.search.evaluator import verify_artifacts
from grape_evo.search.space import parse_space

SPACE: dict[str, Any] = {
    "name": "faults",
    "tasks": ["addition"],
    "policy": {"preset": "tiny"},
    "budget": {
        "steps": 4,
        "seeds": 2,
        "eval_every": 2,
        "eval_prompts": 8,
        "batch_size": 8,
        "warm_start_steps": 5,
        "reeval_seeds": 1,
        "top_k": 1,
    },
    "base": "grpo",
    "axes": {
        "advantage.name": {"choices": ["group_zscore", "group_mean"]},
        "surrogate.clip_high": {"low": 0.1, "high": 0.4},
    },
    "baselines": ["grpo", "dpo"],
    "search": {"sampler": "evolution", "trials": 4, "pruner": "none", "population_size": 4},
}


def one_line_error(result: Any, *needles: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output, repr(result.exception))
    assert "Traceback" not in result.output
    text = "".join(result.stderr.split())  # rich wraps long lines, even inside a path
    assert text.count("error:") == 1, result.stderr
    for needle in needles:
        assert "".join(needle.split()) in text, result.stderr


# ---- output folder checked at start ---------------------------------------------------------


def test_unwritable_output_folder_fails_at_start(tmp_path: Path) -> None:
    space = write_space(tmp_path, SPACE)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = blocker / "run"  # as root chmod does not stop writes; a path under a file does
    one_line_error(invoke("evolve", str(space), "--out", str(out)), "not writable", str(out))

    campaign = Campaign(parse_space(SPACE), tmp_path / "ok")
    campaign.open(create=True)
    url = campaign.url
    result = invoke("worker", "--storage", url, "--study", "faults", "--out", str(out))
    one_line_error(result, "not writable")
    assert budget_used(optuna.load_study(study_name="faults", storage=url)) == 0


def test_full_disk_fails_at_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    space = write_space(tmp_path, SPACE)
    out = tmp_path / "run"
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(cli.shutil, "disk_usage", lambda _: usage(10**9, 10**9 - 2**20, 2**20))
    one_line_error(invoke("evolve", str(space), "--out", str(out)), "1 MB free", "100 MB")
    assert not (out / "study.db").exists(), "nothing may start on a full disk"
    monkeypatch.undo()
    monkeypatch.setenv("GRAPE_MIN_FREE_MB", str(10**12))  # the threshold is configurable
    one_line_error(invoke("evolve", str(space), "--out", str(out)), "GRAPE_MIN_FREE_MB")


# ---- a campaign killed at any point resumes --------------------------------------------------


def test_campaign_killed_at_any_point_resumes(tmp_path: Path, grape_cache: Path) -> None:
    """`grape evolve` SIGKILLed again and again (while importing, creating the study, enqueueing
    baselines, training, re-evaluating), resumed each time: the study ends complete, nothing
    recorded before a kill is lost or changed, and the SQLite file is never corrupt."""
    space = write_space(tmp_path, SPACE)
    out = tmp_path / "run"
    env = cli_env(grape_cache)
    cmd = [sys.executable, "-m", "grape_evo.cli", "evolve", str(space), "--out", str(out)]
    cmd += ["--resume", "--heartbeat", "1"]
    db = out / "study.db"
    recorded: dict[int, Any] = {}
    kills = 0
    for delay in (1.0, 2.2, 3.0, 4.5, 6.0):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        assert proc.returncode in (0, -signal.SIGKILL), proc.stderr.read().decode()[-3000:]
        proc.stderr.close()
        if db.exists():
            assert integrity(db) == "ok"
            try:
                study = optuna.load_study(study_name="faults", storage=f"sqlite:///{db}")
            except KeyError:  # killed before the study was created
                assert not recorded
                continue
            now = {t.number: t for t in study.get_trials()}
            for number, (state, values, attrs) in recorded.items():
                assert (now[number].state, now[number].values) == (state, values), number
                assert now[number].user_attrs == attrs, number
            recorded = {
                t.number: (t.state, t.values, t.user_attrs)
                for t in now.values()
                if t.state.is_finished()
            }
    assert kills >= 3
    final = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert final.returncode == 0, final.stderr[-3000:]
    assert integrity(db) == "ok"
    study = optuna.load_study(study_name="faults", storage=f"sqlite:///{db}")
    trials = study.get_trials()
    assert budget_used(study) == study.user_attrs["budget"] == 6
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    baselines = [t.user_attrs["baseline"] for t in trials if t.user_attrs.get("baseline")]
    assert sorted(set(baselines)) == ["dpo", "grpo"]
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.user_attrs["baseline"] for t in done if t.user_attrs.get("baseline")) == [
        "dpo",
        "grpo",
    ]
    for t in done:
        if t.user_attrs.get("reused_from") is None:
            folder = out / "trials" / f"{t.number:05d}"
            assert verify_artifacts(folder, t.user_attrs["artifacts"]) == []
    rows = json.loads((out / "discoveries.json").read_text())["candidates"]
    assert {"dpo", "grpo"} <= {r["label"] for r in rows}


# ---- checksums ------------------------------------------------------------------------------


def test_report_verifies_trial_checksums(tmp_path: Path) -> None:
    data = dict(SPACE, baselines=["grpo"], search={**SPACE["search"], "trials": 1})
    out = tmp_path / "run"
    campaign = Campaign(parse_space(data), out)
    study = campaign.open(create=True)
    campaign.optimize(study, 2)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for t in trials:
        sums = t.user_attrs["artifacts"]
        folder = out / "trials" / f"{t.number:05d}"
        assert sorted(sums) == [
            f"addition/seed{s}/{f}" for s in (0, 1) for f in ("metrics.jsonl", "summary.json")
        ]
        assert json.loads((folder / "artifacts.json").read_text())["sha256"] == sums
    clean = invoke("report", str(out))
    assert clean.exit_code == 0, clean.output
    problems = (out / "report" / "report.md").read_text().split("## Data problems", 1)[1]
    assert "checksums of 2 trials' run files match" in problems

    # tamper: a metrics line appended, a summary edited, the checksum file replaced
    with (out / "trials/00000/addition/seed1/metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 99, "eval_reward": 1.0}) + "\n")
    summary = out / "trials/00001/addition/seed0/summary.json"
    summary.write_text(summary.read_text().replace('"status": "ok"', '"status": "ok" '))
    (out / "trials/00001/artifacts.json").write_text('{"sha256": {}}')
    path = write_report(out)
    problems = path.read_text().split("## Data problems", 1)[1]
    assert "trial 0 (`trials/00000`): addition/seed1/metrics.jsonl: checksum mismatch" in problems
    assert "trial 1 (`trials/00001`): addition/seed0/summary.json: checksum mismatch" in problems
    assert "trial 1 (`trials/00001`): artifacts.json differs" in problems
    assert "seed0/metrics.jsonl: checksum" not in problems.split("trial 1", 1)[0]


def test_trial_killed_before_its_first_heartbeat_is_retried(tmp_path: Path) -> None:
    """A worker killed between creating a trial and its first heartbeat leaves a RUNNING trial
    without a heartbeat; Optuna alone never fails it (a resume would wait forever)."""
    storage = make_storage(f"sqlite:///{tmp_path / 'study.db'}", heartbeat_interval=1)
    study = optuna.create_study(study_name="silent", storage=storage)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})  # no heartbeat thread
    fail_stale_trials(study)
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING]  # not yet stale
    time.sleep(2.5)  # the grace period: 2 heartbeats
    fail_stale_trials(study)
    dead, retry = study.get_trials()
    assert dead.state == TrialState.FAIL
    assert retry.state == TrialState.WAITING and retry.system_attrs["failed_trial"] == 0
