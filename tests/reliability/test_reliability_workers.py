"""Parallel ``grape worker`` processes on one study, with workers SIGKILLed mid-trial.

Each study is created with 8 fixed points enqueued (a budget of exactly 8), N workers run it
concurrently, and the result is checked: every point is recorded exactly once as COMPLETE
(lost 0, duplicates 0), no point is trained twice, a killed worker's trial is failed by its
stale heartbeat and retried by another worker, every trial's checksummed files verify, and the
best value equals the one a single in-process run over the same points finds. SQLite is checked
with ``PRAGMA integrity_check`` after the kills. The PostgreSQL test (marker ``db``) runs a real
server on loopback (see conftest.py).

Set ``GRAPE_RELIABILITY_TABLE=PATH`` to append each run's row (workers, trials, kills, lost,
duplicates) to PATH as JSON lines: the table in docs/reliability.md comes from there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from campaign_helpers import cli_env, integrity
from optuna.trial import TrialState

from grape_evo.search.campaign import Campaign, budget_used
from grape_evo.search.campaign.scheduler import run_round
from grape_evo.search.evaluator import verify_artifacts
from grape_evo.search.space import parse_space

ZSCORE, MEAN = "group_zscore", "group_mean"
POINTS: list[dict[str, Any]] = [
    {"advantage.name": a, "surrogate.name": "reinforce"} for a in (ZSCORE, MEAN)
] + [
    {"advantage.name": a, "surrogate.name": "ppo_clip", "surrogate.clip_high": c}
    for a in (ZSCORE, MEAN)
    for c in (0.15, 0.25, 0.35)
]


def space_data(name: str, steps: int) -> dict[str, Any]:
    return {
        "name": name,
        "tasks": ["addition"],
        "policy": {"preset": "tiny"},
        "budget": {
            "steps": steps,
            "seeds": 2,
            "eval_every": 2,
            "eval_prompts": 8,
            "batch_size": 8,
            "warm_start_steps": 5,
        },
        # Two updates per batch: the ratio moves, so every point trains differently (at one
        # update PPO-clip and REINFORCE train alike, and the campaign would evaluate them once).
        "base": {
            "group_size": 4,
            "advantage": "group_zscore",
            "surrogate": "ppo_clip",
            "epochs": 2,
        },
        "axes": {
            "advantage.name": {"choices": [ZSCORE, MEAN]},
            "surrogate.name": {"choices": ["reinforce", "ppo_clip"]},
            "surrogate.clip_high": {
                "low": 0.1,
                "high": 0.4,
                "when": {"surrogate.name": ["ppo_clip"]},
            },
        },
        "search": {"sampler": "random", "trials": len(POINTS), "pruner": "none"},
    }


def create_study(name: str, out: Path, url: str | None, steps: int) -> Campaign:
    """A campaign whose budget is exactly the enqueued POINTS."""
    campaign = Campaign(parse_space(space_data(name, steps)), out, storage_url=url)
    study = campaign.open(create=True)
    for point in POINTS:
        study.enqueue_trial(point)
    study.set_user_attr("candidates", len(POINTS))
    study.set_user_attr("budget", len(POINTS))
    return campaign


def start_worker(
    cache: Path, url: str, name: str, out: Path, log: Path, *extra: str
) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "grape_evo.cli", "worker", "--storage", url, "--study", name]
    cmd += ["--out", str(out), "--heartbeat", "1", *extra]
    with log.open("w") as f:
        return subprocess.Popen(cmd, env=cli_env(cache), stdout=f, stderr=subprocess.STDOUT)


def training_trial(
    study: optuna.Study, out: Path, proc: subprocess.Popen, owner: Callable[[int], bool]
) -> tuple[int, int]:
    """A trial that a process whose pid passes ``owner`` is training (its first run has
    written a step), while ``proc`` runs: the trial's number and that pid."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            metrics = out / "trials" / f"{t.number:05d}" / "addition" / "seed0" / "metrics.jsonl"
            pid = int(str(t.user_attrs.get("worker", ":0")).rsplit(":", 1)[1])
            if owner(pid) and metrics.is_file() and metrics.stat().st_size:
                return t.number, pid
        if proc.poll() is not None:
            pytest.fail(f"worker {proc.pid} ended (rc {proc.returncode}) before it was killed")
        time.sleep(0.05)
    pytest.fail("the victim worker never ran a trial")


def kill_mid_trial(study: optuna.Study, proc: subprocess.Popen, out: Path) -> int:
    """SIGKILL ``proc`` while it trains a trial; the trial's number."""
    number, _ = training_trial(study, out, proc, lambda pid: pid == proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return number


def run_workers(
    cache: Path, url: str, name: str, out: Path, workers: int, kills: int
) -> tuple[list[int], list[Path]]:
    """Run ``workers`` worker processes to the end, SIGKILLing the first ``kills`` of them
    mid-trial; the killed trials' numbers and the logs."""
    logs = [out.parent / f"worker{i}.log" for i in range(workers)]
    procs = [start_worker(cache, url, name, out, log) for log in logs]
    study = optuna.load_study(study_name=name, storage=url)
    killed: list[int] = []
    try:
        killed = [kill_mid_trial(study, procs[i], out) for i in range(kills)]
        for i, proc in enumerate(procs[kills:], kills):
            rc = proc.wait(timeout=400)
            assert rc == 0, logs[i].read_text()[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return killed, logs


def check_exactly_once(study: optuna.Study, out: Path, killed: list[int]) -> dict[str, int]:
    """Every point recorded exactly once; no point trained twice; killed trials retried."""
    trials = study.get_trials()
    by_number = {t.number: t for t in trials}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    counts = [sum(t.params == p for t in complete) for p in POINTS]
    lost = counts.count(0)
    duplicates = sum(n - 1 for n in counts if n > 1)
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert lost == 0 and duplicates == 0, counts
    assert len(complete) == len(POINTS)
    assert budget_used(study) == len(POINTS)
    # no point trained twice: every complete trial trained its own (distinct) point
    assert all("reused_from" not in t.user_attrs for t in complete)
    assert len({t.user_attrs["key"] for t in complete}) == len(POINTS)
    # each killed trial failed on its stale heartbeat and was retried to completion
    for number in killed:
        assert by_number[number].state == TrialState.FAIL
        retries = [t for t in trials if t.system_attrs.get("failed_trial") == number]
        assert [t.state for t in retries] == [TrialState.COMPLETE], number
        assert retries[0].params == by_number[number].params
    # any other failure is a sampled trial that lost the race for the last slot
    others = [t for t in trials if t.state == TrialState.FAIL and t.number not in killed]
    assert all(t.user_attrs.get("surplus") for t in others), [t.user_attrs for t in others]
    assert len(trials) == len(POINTS) + len(killed) + len(others)
    for t in complete:
        assert len(t.user_attrs["runs"]) == 2
        assert len(t.user_attrs["artifacts"]) == 4
        folder = out / "trials" / f"{t.number:05d}"
        assert verify_artifacts(folder, t.user_attrs["artifacts"]) == [], t.number
    workers = {t.user_attrs["worker"] for t in complete}
    return {
        "trials": len(trials),
        "lost": lost,
        "duplicates": duplicates,
        "completing_workers": len(workers),
    }


def best_values(study: optuna.Study) -> dict[str, float]:
    return {
        json.dumps(t.params, sort_keys=True): t.value
        for t in study.get_trials(states=(TrialState.COMPLETE,))
    }


def reference(tmp_path: Path, steps: int) -> dict[str, float]:
    """The same points, one process, in-process SQLite."""
    campaign = create_study("ref", tmp_path / "ref", None, steps)
    study = campaign.open(create=False)
    campaign.optimize(study, len(POINTS))
    return best_values(study)


def record_row(storage: str, workers: int, kills: int, result: dict[str, int]) -> None:
    path = os.environ.get("GRAPE_RELIABILITY_TABLE")
    if path:
        row = {"storage": storage, "workers": workers, "points": len(POINTS), "kills": kills}
        with open(path, "a") as f:
            f.write(json.dumps({**row, **result}) + "\n")


def check_against_reference(study: optuna.Study, tmp_path: Path, steps: int) -> None:
    got, want = best_values(study), reference(tmp_path, steps)
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    assert max(got.values()) == pytest.approx(max(want.values()), abs=1e-9)


@pytest.mark.slow  # the PostgreSQL test kills a shared-database worker; the jobs test SQLite's
def test_sqlite_workers_with_a_kill(tmp_path: Path, grape_cache: Path) -> None:
    """3 workers on the default SQLite storage, one SIGKILLed mid-trial."""
    steps, out = 16, tmp_path / "run"
    create_study("lite", out, None, steps)
    url = f"sqlite:///{out / 'study.db'}"
    killed, _ = run_workers(grape_cache, url, "lite", out, workers=3, kills=1)
    assert integrity(out / "study.db") == "ok"
    study = optuna.load_study(study_name="lite", storage=url)
    result = check_exactly_once(study, out, killed)
    record_row("sqlite", 3, 1, result)
    check_against_reference(study, tmp_path, steps)


@pytest.mark.db
def test_postgres_four_workers_with_a_kill(
    tmp_path: Path, grape_cache: Path, postgres_url: str
) -> None:
    """4 workers on a real PostgreSQL server, one SIGKILLed mid-trial."""
    steps, out = 16, tmp_path / "run"
    create_study("pg", out, postgres_url, steps)
    killed, _ = run_workers(grape_cache, postgres_url, "pg", out, workers=4, kills=1)
    study = optuna.load_study(study_name="pg", storage=postgres_url)
    result = check_exactly_once(study, out, killed)
    record_row("postgresql", 4, 1, result)
    check_against_reference(study, tmp_path, steps)


def test_worker_jobs_with_a_killed_process(tmp_path: Path, grape_cache: Path) -> None:
    """``grape worker --jobs 2`` on SQLite: one of its two worker processes is SIGKILLed
    mid-trial; the other retries that trial, and the command still ends with status 0."""
    steps, out = 8, tmp_path / "run"
    create_study("jobs", out, None, steps)
    url = f"sqlite:///{out / 'study.db'}"
    log = tmp_path / "worker.log"
    proc = start_worker(grape_cache, url, "jobs", out, log, "--jobs", "2")
    study = optuna.load_study(study_name="jobs", storage=url)
    try:
        number, pid = training_trial(study, out, proc, lambda pid: pid not in (0, proc.pid))
        os.kill(pid, signal.SIGKILL)
        rc = proc.wait(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert rc == 0, text[-3000:]
    assert f"(pid {pid}): -9" in text, text[-3000:]
    assert integrity(out / "study.db") == "ok"
    check_exactly_once(study, out, [number])


def test_a_sampled_trial_past_the_budget_is_surplus(tmp_path: Path) -> None:
    """What a worker that lost the race for the last slot does: its sampled trial is failed
    as surplus before training and not counted; enqueued trials are never surplus."""
    campaign = Campaign(parse_space(space_data("race", steps=2)), tmp_path / "run")
    study = campaign.open(create=True)
    for point in POINTS[:2]:
        study.enqueue_trial(point)
    campaign.optimize(study, 2)
    run_round(campaign, study, 3, None)  # a racing worker that saw room for one more trial
    first, second, last = study.get_trials()
    assert [first.state, second.state] == [TrialState.COMPLETE] * 2
    assert last.state == TrialState.FAIL and last.user_attrs["surplus"] is True
    assert not (tmp_path / "run" / "trials" / f"{last.number:05d}").exists()
    assert budget_used(study) == 2
