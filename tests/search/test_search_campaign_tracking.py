"""``grape evolve --report-to`` / ``grape worker --report-to``: every run a campaign trains
(trials, baselines, the re-evaluation) logs to its own tracker run under its run folder, in
worker processes too; the choice is not part of the study (a resume may change it); a missing
package or a tracker that cannot start exits 2 before anything trains; a tracker never stops a
run, and a pruned run is logged up to the step that stopped it."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import optuna
import pytest
from campaign_helpers import TINY_BUDGET, cli_env, invoke, write_space
from cli_helpers import cli_text
from optuna.trial import TrialState

from grape_evo.objective import presets
from grape_evo.policy import PolicyConfig
from grape_evo.search.campaign import Campaign
from grape_evo.search.evaluator import CandidateRun, run_candidates
from grape_evo.search.space import parse_space
from grape_evo.search.space.task_ref import TaskRef
from grape_evo.training import TrainConfig
from grape_evo.training.tracking import RunTracking

SPACE: dict[str, Any] = {
    "name": "tb",
    "tasks": ["addition"],
    "policy": {"preset": "tiny"},
    "budget": dict(TINY_BUDGET),
    "base": "grpo",
    "axes": {"advantage.name": {"choices": ["group_mean"]}},
    "baselines": ["grpo"],
    "search": {"trials": 1, "pruner": "none", "objectives": ["final_reward"], "tune_lr": []},
}
"""One candidate (GRPO with a group-mean advantage) and the GRPO baseline, which is also the
reference; no learning-rate tuning."""


@pytest.fixture(scope="module", autouse=True)
def _campaign_env(campaign_env: None) -> None:
    """Every test here runs with the shared cache and one thread (tests/conftest.py)."""


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """The scalars of the run's TensorBoard event files by tag: (step, value) in order."""
    reader = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = reader.EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_tracked(run_dir: Path, steps: list[int]) -> None:
    """The run's TensorBoard scalars hold its metrics.jsonl numbers at ``steps``."""
    logged = scalars(run_dir)
    records = metrics(run_dir)
    assert [r["step"] for r in records] == steps, run_dir
    for key in ("reward", "loss", "kl_to_ref"):
        points = logged[f"train/{key}"]
        assert [s for s, _ in points] == steps, (run_dir, key)
        expected = [r[key] for r in records]
        assert [v for _, v in points] == pytest.approx(expected, rel=1e-6, abs=1e-12), key
    assert [s for s, _ in logged["eval/reward"]] == steps  # eval_every 1


def test_campaign_with_jobs_logs_every_run_to_tensorboard(
    tmp_path: Path, grape_cache: Path
) -> None:
    space = write_space(tmp_path, SPACE)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "grape_evo.cli", "evolve", str(space), "--out", str(out)]
    proc = subprocess.Popen(
        [*command, "--jobs", "2", "--report-to", "tensorboard"],
        env=cli_env(grape_cache),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr and "2/2" in stdout

    study = optuna.load_study(study_name="tb", storage=f"sqlite:///{out / 'study.db'}")
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    # The trials ran in the spawned worker processes, not in the campaign's own.
    assert all(int(t.user_attrs["worker"].rsplit(":", 1)[1]) != proc.pid for t in trials)
    # 2 trials x 2 seeds, then the re-evaluation of the candidate and the baseline x 2 seeds:
    # 8 runs, every one of them logged, each at its 2 steps. When the candidate starts before
    # the baseline (GRPO, the reference) has stored its runs, the reference is trained beside
    # it in RUN/reference as one more member of its lockstep batch, with its own tracker.
    runs = {p.parent for p in out.rglob("metrics.jsonl")}
    trial_runs = {
        out / "trials" / f"{n:05d}" / "addition" / f"seed{s}" for n in (0, 1) for s in (0, 1)
    }
    reeval_runs = {
        out / "reeval" / label / "addition" / f"seed{s}"
        for label in ("grpo", "trial-1")
        for s in (1000, 1001)
    }
    reference_runs = {out / "reference" / "addition" / f"seed{s}" for s in (0, 1)}
    assert trial_runs | reeval_runs <= runs <= trial_runs | reeval_runs | reference_runs
    for run_dir in runs:
        assert_tracked(run_dir, list(range(1, TINY_BUDGET["steps"] + 1)))
    # The tracker is no part of the study: resuming without it goes on (the re-evaluation's
    # runs are read back, nothing is trained) and logs nothing more.
    assert "tensorboard" not in json.dumps(study.user_attrs)
    events = sorted(out.rglob("events.out.tfevents.*"))
    again = invoke("evolve", str(space), "--out", str(out), "--resume", "--report-to", "none")
    assert again.exit_code == 0, cli_text(again)
    assert len(study.get_trials()) == 2
    assert sorted(out.rglob("events.out.tfevents.*")) == events


def test_a_pruned_run_is_tracked_to_the_step_that_stopped_it(tmp_path: Path) -> None:
    """Two candidates in one lockstep batch, each with a tracker: the one its reporter stops
    at its first evaluation is logged at step 1 only, the other at every step."""
    config = TrainConfig(
        steps=3, warm_start_steps=5, batch_size=8, eval_prompts=8, eval_every=1, device="cpu"
    )

    def stop(step: int, value: float) -> str:
        return f"pruned at global step {step}"

    candidates = [
        CandidateRun(presets.get("grpo"), [config], tmp_path / "kept"),
        CandidateRun(presets.get("rloo"), [config], tmp_path / "pruned", stop),
    ]
    tracking = RunTracking("tensorboard", tmp_path, "study")
    kept, pruned = run_candidates(
        candidates, [TaskRef("addition")], PolicyConfig(), tracking=tracking
    )
    assert pruned.stopped == "pruned at global step 1" and kept.stopped is None
    assert_tracked(tmp_path / "kept" / "addition" / "seed0", [1, 2, 3])
    assert_tracked(tmp_path / "pruned" / "addition" / "seed0", [1])


def test_tracker_run_names_follow_the_run_folder() -> None:
    tracking = RunTracking("wandb", Path("/c"), "tiny")
    assert (
        tracking.name(Path("/c/trials/00003/addition/seed0")) == "tiny/trials/00003/addition/seed0"
    )
    assert (
        tracking.name(Path("/c/reeval/trial-3/sort/seed1000"))
        == "tiny/reeval/trial-3/sort/seed1000"
    )


@pytest.mark.parametrize("command", ["evolve", "worker"])
def test_missing_tracker_package_exits_2_before_training(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    space = write_space(tmp_path, SPACE)
    out = tmp_path / "run"
    if command == "worker":  # a campaign to join (its study only: nothing trained)
        Campaign(parse_space(SPACE), out).open(create=True)
        args = ["worker", "--storage", f"sqlite:///{out / 'study.db'}", "--study", "tb"]
    else:
        args = ["evolve", str(space), "--out", str(out)]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    result = invoke(*args, "--report-to", "tensorboard")
    text = cli_text(result)
    assert result.exit_code == 2, text
    assert "--report-to tensorboard needs the tensorboard package" in text
    assert "pip install tensorboard" in text and "Traceback" not in text
    assert not list(out.rglob("metrics.jsonl"))
    if command == "evolve":
        assert not (out / "study.db").exists()


def test_tracker_that_cannot_start_stops_the_campaign_with_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def init(**kwargs: Any) -> None:
        raise RuntimeError("no API key")

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    space = write_space(tmp_path, SPACE)
    out = tmp_path / "run"
    result = invoke("evolve", str(space), "--out", str(out), "--report-to", "wandb")
    text = cli_text(result)
    assert result.exit_code == 2, text
    assert "--report-to wandb: could not start the run: RuntimeError: no API key" in text
    assert "Traceback" not in text and not list(out.rglob("metrics.jsonl"))
    # The trial it was about to train is failed, not left running.
    study = optuna.load_study(study_name="tb", storage=f"sqlite:///{out / 'study.db'}")
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL]
