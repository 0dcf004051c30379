"""Smoke: every preset trains 2 steps (status ok) on every task it applies to."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from grape_evo.objective import presets
from grape_evo.tasks import get_task
from grape_evo.training import train

ALL_TASKS = ("addition", "reverse", "sort", "preference")
OFFLINE = ("dpo", "ipo", "slic", "simpo", "discopop")


def _cases() -> list[tuple[str, str]]:
    cases = []
    for name in presets.names():
        data = presets.get(name).canonical().data
        tasks = ("preference", "addition") if data == "preference_pairs" else ALL_TASKS
        cases += [(name, task) for task in tasks]
    return cases


def test_offline_presets_are_the_documented_ones() -> None:
    offline = [n for n in presets.names() if presets.get(n).canonical().data == "preference_pairs"]
    assert sorted(offline) == sorted(OFFLINE)
    assert {"sft", "grpo", "ppo", "trpo", "online_dpo"} <= set(presets.names())


@pytest.mark.parametrize(("preset", "task"), _cases(), ids=lambda x: x)
def test_preset_trains_two_steps(preset: str, task: str, cache_dir: Path, tiny: Any) -> None:
    summary = train(
        presets.get(preset), get_task(task), tiny(), progress=False, cache_dir=cache_dir
    )
    assert summary.status == "ok", f"{preset} on {task}: {summary.reason}"
    assert summary.steps == 2
    assert summary.final_eval is not None
