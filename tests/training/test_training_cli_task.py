"""``grape train --task FILE.yaml`` and the warm-start options ``--warm-start-steps`` and
``--warm-start-lr``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from cli_helpers import TINY_TRAIN, CliRun
from task_file_helpers import write_task

from grape_evo.policy import PolicyConfig, build_policy

Grape = Callable[..., CliRun]
QUARTER_REWARD = """
def score(prompts, completions, **kwargs):
    return [0.25 for _ in completions]
"""


def _train(grape: Grape, task: Path | str, out: Path, *extra: str) -> CliRun:
    args = ["train", "--objective", "grpo", "--task", str(task), "--steps", "2", "--out", str(out)]
    return grape(*args, *TINY_TRAIN, *extra)


def test_a_task_file_trains_with_its_own_reward(
    grape: Grape, tmp_path: Path, read_jsonl: Any
) -> None:
    path = write_task(tmp_path / "task", reward_source=QUARTER_REWARD)
    run = _train(grape, path, tmp_path / "run")
    assert run.exit_code == 0, run.text
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["reward"] for r in records] == [0.25, 0.25]  # every completion scores 0.25
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["task"]["name"] == "t"
    assert summary["task"]["file"] == str(path.resolve())
    assert summary["final_eval"]["reward"] == 0.25


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"prompt": None}, "missing required key 'prompt'"),
        ({"max_new_tokens": 0}, "max_new_tokens: must be an integer >= 1, got 0"),
        ({"reward": "reward.py:nope"}, "reward: reward.py has no function 'nope'"),
        ({"data": "missing.jsonl"}, "data: no such file or folder"),
    ],
)
def test_a_bad_task_file_exits_2_naming_file_and_field(
    grape: Grape, tmp_path: Path, settings: dict[str, Any], field: str
) -> None:
    path = write_task(tmp_path / "task", **settings)
    run = _train(grape, path, tmp_path / "run")
    assert run.exit_code == 2, run.text
    assert f"{path}: " in run.text and field in run.text
    assert "Traceback" not in run.text
    assert not (tmp_path / "run" / "summary.json").exists()


def test_a_missing_task_file_exits_2(grape: Grape, tmp_path: Path) -> None:
    run = _train(grape, tmp_path / "nope.yaml", tmp_path / "run")
    assert run.exit_code == 2, run.text
    assert f"{tmp_path / 'nope.yaml'}: no such task file" in run.text


def test_no_answer_needs_warm_start_steps_0(grape: Grape, tmp_path: Path) -> None:
    path = write_task(tmp_path / "task", answer=None)
    run = _train(grape, path, tmp_path / "run")
    assert run.exit_code == 2, run.text
    assert f"{path}: answer: not set" in run.text and "Traceback" not in run.text
    run = _train(grape, path, tmp_path / "run", "--warm-start-steps", "0")
    assert run.exit_code == 0, run.text
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["warm_start_cache"] == ""


def test_warm_start_lr_reaches_the_sft(grape: Grape, tmp_path: Path) -> None:
    # Adam at learning rate 0 leaves every weight as built, however many SFT steps run.
    run = _train(grape, "addition", tmp_path / "run", "--warm-start-lr", "0")
    assert run.exit_code == 0, run.text
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["train_config"]["warm_start_lr"] == 0.0
    assert summary["train_config"]["warm_start_steps"] == 5
    cached = torch.load(Path(summary["warm_start_cache"]) / "policy.pt", weights_only=True)
    built = build_policy(PolicyConfig(), None, seed=0).state_dict()
    assert cached.keys() == built.keys()
    assert all(torch.equal(cached[k], built[k]) for k in built)
