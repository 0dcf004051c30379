"""The initial held-out evaluation is computed once per warm start and seed, then read back."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from grape_evo.objective import presets
from grape_evo.policy import PolicyConfig
from grape_evo.tasks import get_task
from grape_evo.training import Member, train, warm_start_policy
from grape_evo.training.engine import Engine
from grape_evo.training.initial_eval import FOLDER, evaluation_key

CPU = torch.device("cpu")


def _direct_initial_eval(task: Any, cfg: Any, cache: Path) -> Any:
    """The warm start's evaluation computed here, without the run loop or its cache."""
    policy, _ = warm_start_policy(task, PolicyConfig(), cfg, CPU, cache)
    engine = Engine([Member(presets.get("grpo"), cfg.lr)], task, cfg, policy)
    return engine.evaluate([0])[0]


def test_second_run_reads_the_first_runs_initial_evaluation(
    tmp_path: Path, tiny: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    task, cfg = get_task("sort"), tiny(warm_start_steps=10, eval_prompts=16)
    expected = _direct_initial_eval(task, cfg, tmp_path)
    first = train(presets.get("grpo"), task, cfg, progress=False, cache_dir=tmp_path)
    assert first.ok and first.initial_eval == expected
    folder = Path(first.warm_start_cache) / FOLDER
    assert len(list(folder.glob("*.json"))) == 1

    evaluated: list[list[int] | None] = []
    original = Engine.evaluate

    def spy(self: Engine, members: Any = None) -> Any:
        evaluated.append(None if members is None else list(members))
        return original(self, members)

    monkeypatch.setattr(Engine, "evaluate", spy)
    # Another objective, learning rate and a critic: the same warm start, the same evaluation.
    second = train(
        presets.get("ppo"), task, replace(cfg, lr=3e-4), progress=False, cache_dir=tmp_path
    )
    assert second.ok and second.initial_eval == expected
    assert [0] not in evaluated, "the initial evaluation was computed again"
    assert second.initial_eval.samples == expected.samples


def test_unreadable_cache_is_recomputed(tmp_path: Path, tiny: Any) -> None:
    task, cfg = get_task("reverse"), tiny(warm_start_steps=5)
    first = train(presets.get("grpo"), task, cfg, progress=False, cache_dir=tmp_path)
    (path,) = (Path(first.warm_start_cache) / FOLDER).glob("*.json")
    path.write_text('{"report": {"reward": ')  # a torn write
    again = train(presets.get("grpo"), task, cfg, progress=False, cache_dir=tmp_path)
    assert again.initial_eval == first.initial_eval
    assert again.initial_eval == _direct_initial_eval(task, cfg, tmp_path)


def test_no_warm_start_folder_no_cache(tmp_path: Path, tiny: Any) -> None:
    task, cfg = get_task("reverse"), tiny(warm_start_steps=0)
    summary = train(presets.get("grpo"), task, cfg, progress=False, cache_dir=tmp_path)
    assert summary.ok and summary.warm_start_cache == ""
    assert not list(tmp_path.rglob(f"{FOLDER}/*.json"))


@pytest.mark.parametrize(
    ("change", "same"),
    [
        ({"lr": 3e-4}, True),
        ({"steps": 7}, True),
        ({"seed": 1}, False),
        ({"eval_samples": 8}, False),
        ({"eval_prompts": 32}, False),
        ({"temperature": 0.7}, False),
        ({"precision": "bf16"}, False),
    ],
)
def test_key_follows_what_the_evaluation_depends_on(
    tiny: Any, change: dict[str, Any], same: bool
) -> None:
    cfg, policy = tiny(), PolicyConfig()
    base = evaluation_key(cfg, policy, "cpu")
    assert (evaluation_key(replace(cfg, **change), policy, "cpu") == base) is same


def test_key_ignores_the_value_head_not_lora_or_device(tiny: Any) -> None:
    cfg, policy = tiny(), PolicyConfig()
    base = evaluation_key(cfg, policy, "cpu")
    assert evaluation_key(cfg, replace(policy, value_head=True), "cpu") == base
    assert evaluation_key(cfg, replace(policy, lora_rank=4), "cpu") != base
    assert evaluation_key(cfg, policy, "cuda") != base
