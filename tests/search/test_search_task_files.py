"""Task files in a search space's ``tasks:`` (issue 17): resolved against the space file,
stored in the study with their fingerprint, rebuilt by every worker process, and refused once
their data changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from campaign_helpers import TINY_BUDGET, invoke, write_space
from optuna.trial import TrialState
from task_file_helpers import rows, write_rows, write_task

from grape_evo.search.campaign import Campaign, load_campaign_from_storage
from grape_evo.search.records import TrialRecord
from grape_evo.search.space import SpaceError, load_space, parse_space


def space_data(task: str) -> dict:
    return {
        "name": "own_data",
        "tasks": [task],
        "policy": {"preset": "tiny"},
        "budget": {**TINY_BUDGET, "seeds": 1, "reeval_seeds": 2, "top_k": 1},
        "base": "grpo",
        "axes": {"kl.coef": {"choices": [0.0, 0.1]}},
        "baselines": ["grpo"],
        "search": {"sampler": "grid", "trials": 2, "pruner": "none", "tune_lr": []},
    }


@pytest.fixture
def space_file(tmp_path: Path) -> Path:
    write_task(tmp_path / "data", name="echo")
    return write_space(tmp_path / "spaces", space_data("../data/task.yaml"))


def test_a_relative_task_file_is_resolved_against_the_space_file(space_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path / "data")  # a working directory the relative path does not fit
    (ref,) = load_space(space_file).tasks
    assert ref.label == "echo" and ref.is_file
    assert dict(ref.kwargs)["file"] == str((tmp_path / "data" / "task.yaml").resolve())
    assert ref.slug.startswith("echo.") and ref.build().name == "echo"


def test_the_stored_space_rebuilds_the_same_task_and_edited_data_is_refused(space_file, tmp_path):
    space = load_space(space_file)
    stored = json.loads(json.dumps(space.to_dict()))
    assert parse_space(stored).tasks == space.tasks
    write_rows(tmp_path / "data" / "rows.jsonl", rows(21))  # one more row: other data
    with pytest.raises(SpaceError, match=r"tasks\[0\].*changed since"):
        parse_space(stored)
    edited = load_space(space_file).tasks[0]
    assert edited.slug != space.tasks[0].slug  # new data, new run folders


def test_a_missing_task_file_is_a_clear_cli_error(tmp_path):
    path = write_space(tmp_path, space_data("nowhere/task.yaml"))
    result = invoke("evolve", str(path), "--out", str(tmp_path / "run"))
    assert result.exit_code == 2
    assert "tasks[0]" in result.output and "nowhere" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "mode",
    [
        ["--population", "2"],
        # 40 s: two spawned workers each import the reward file and train
        pytest.param(["--jobs", "2"], marks=pytest.mark.slow),
    ],
)
def test_a_campaign_on_a_task_file_trains(space_file, tmp_path, mode):
    out = tmp_path / "run"
    result = invoke("evolve", str(space_file), "--out", str(out), *mode)
    assert result.exit_code == 0, result.output
    campaign = load_campaign_from_storage(f"sqlite:///{out / 'study.db'}", "own_data", out)
    study = campaign.open(create=False)
    trials = study.get_trials()
    assert len(trials) == 3 and all(t.state == TrialState.COMPLETE for t in trials)
    slug = campaign.space.tasks[0].slug
    for t in trials:
        assert {r.task for r in TrialRecord.of(t).runs} == {slug}
    discoveries = json.loads((out / "discoveries.json").read_text())["candidates"]
    assert discoveries and all(r["status"] == "ok" for r in discoveries)


def test_a_worker_refuses_a_campaign_whose_task_data_changed(space_file, tmp_path):
    out = tmp_path / "run"
    campaign = Campaign(load_space(space_file), out)
    campaign.open(create=True)
    write_rows(tmp_path / "data" / "rows.jsonl", rows(21))
    result = invoke("worker", "--storage", f"sqlite:///{out / 'study.db'}", "--study", "own_data")
    assert result.exit_code == 2
    assert "changed since" in result.output and "Traceback" not in result.output


def test_the_example_space_lists_the_example_task_file(tmp_path, monkeypatch):
    """examples/byo_task/space.yaml, the README's walkthrough, loads from any folder."""
    example = Path(__file__).resolve().parents[2] / "examples" / "byo_task"
    monkeypatch.chdir(tmp_path)
    loaded = load_space(example / "space.yaml")
    (task,) = loaded.tasks
    assert dict(task.kwargs)["file"] == str((example / "task.yaml").resolve())
    assert loaded.search.reference == "grpo" and loaded.search.metric_names == ["fitness"]
