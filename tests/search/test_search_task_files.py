"""A task file in a search space's ``tasks:`` (DESIGN.md section 7): read relative to the space
file, stored absolute with the study, and trained like a registered task by `grape evolve`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna
import pytest
import yaml
from campaign_helpers import TINY_BUDGET, invoke, write_space

from grape_evo.search.space import SpaceError, load_space, parse_space

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "byo_task"


@pytest.fixture
def task_folder(tmp_path: Path) -> Path:
    """A copy of examples/byo_task (task.yaml, rows.jsonl, reward.py) in ``tmp_path/task``."""
    folder = tmp_path / "task"
    shutil.copytree(EXAMPLE, folder)
    return folder


def space(tasks: list[str]) -> dict:
    return {
        "name": "byo",
        "tasks": tasks,
        "policy": {"preset": "tiny"},
        "budget": {**TINY_BUDGET, "seeds": 1, "reeval_seeds": 1, "top_k": 1},
        "base": "grpo",
        "axes": {"advantage.name": {"choices": ["group_zscore", "group_mean"]}},
        "search": {"sampler": "grid", "trials": 1, "pruner": "none", "tune_lr": []},
    }


def test_a_task_file_is_read_relative_to_the_space_file(task_folder: Path, tmp_path: Path) -> None:
    path = write_space(tmp_path, space(["addition", "task/task.yaml"]))
    loaded = load_space(path)
    addition, byo = loaded.tasks
    assert addition.name == "addition" and not addition.is_file
    assert byo.is_file and byo.name == str((task_folder / "task.yaml").resolve())
    assert byo.build().name == "byo_words"
    assert byo.slug.startswith("task.") and len(byo.slug) == len("task.") + 8
    # The stored space (a study's user attribute) reads back to the same tasks from anywhere.
    again = parse_space(json.loads(json.dumps(loaded.to_dict())), base_dir=Path("/"))
    assert again.tasks == loaded.tasks


def test_bad_task_files_name_the_key_and_the_file(task_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match=r"tasks\[0\].*nowhere\.yaml: no such task file"):
        load_space(write_space(tmp_path, space(["nowhere.yaml"])))
    (task_folder / "bad.yaml").write_text(
        yaml.safe_dump({**yaml.safe_load((task_folder / "task.yaml").read_text()), "x": 1})
    )
    with pytest.raises(SpaceError, match=r"tasks\[0\].*bad\.yaml: unknown key 'x'"):
        load_space(write_space(tmp_path, space(["task/bad.yaml"])))
    with pytest.raises(SpaceError, match=r"tasks\[1\].*listed twice"):
        load_space(write_space(tmp_path, space(["task/task.yaml", "task/../task/task.yaml"])))


def test_evolve_trains_on_a_task_file(
    task_folder: Path, tmp_path: Path, campaign_env: None
) -> None:
    """Real (tiny) training: the trial's run is on the file's task, in the task's folder."""
    path = write_space(tmp_path, space(["task/task.yaml"]))
    out = tmp_path / "run"
    result = invoke("evolve", str(path), "--out", str(out))
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="byo", storage=f"sqlite:///{out / 'study.db'}")
    (trial,) = study.get_trials()
    assert trial.state == optuna.trial.TrialState.COMPLETE, trial.user_attrs.get("failure")
    slug = load_space(path).tasks[0].slug
    (run,) = trial.user_attrs["runs"]
    assert run["task"] == slug and run["status"] == "ok"
    summary = json.loads((out / "trials" / "00000" / slug / "seed0" / "summary.json").read_text())
    assert summary["task"]["name"] == "byo_words"
    assert summary["task"]["file"] == str((task_folder / "task.yaml").resolve())


def test_the_example_space_lists_the_example_task_file() -> None:
    """examples/byo_task/space.yaml, the README's walkthrough, loads from any folder."""
    loaded = load_space(EXAMPLE / "space.yaml")
    (task,) = loaded.tasks
    assert task.name == str((EXAMPLE / "task.yaml").resolve())
    assert loaded.search.reference == "grpo" and loaded.search.metric_names == ["fitness"]
