"""A policy that answers nothing (EOS at once) trains without error, and a space that points
at a model folder that does not exist is refused at load time."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from grape_evo.objective import presets
from grape_evo.policy import encode_pairs
from grape_evo.search.space import SpaceError, parse_space
from grape_evo.tasks import get_task
from grape_evo.training import TrainConfig, train
from grape_evo.training import batches as batches_module
from grape_evo.training import evaluation as evaluation_module

TINY = TrainConfig(steps=2, batch_size=8, eval_prompts=8, eval_every=1, warm_start_steps=3)


@pytest.mark.parametrize("preset", ["grpo", "ppo", "online_dpo", "rejection_sampling"])
def test_empty_completions_train_and_score_zero(
    preset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.set_num_threads(1)

    def silent_decode(
        _forward: Any,
        _weights: Any,
        tokenizer: Any,
        prompts: list[list[str]],
        group_sizes: list[int],
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        """Every member answers EOS at once, for training and evaluation alike."""
        rollouts = []
        for texts, group_size in zip(prompts, group_sizes, strict=True):
            rows = [p for p in texts for _ in range(group_size)]
            rollout = encode_pairs(tokenizer, rows, [""] * len(rows))
            groups = torch.arange(len(texts)).repeat_interleave(group_size)
            rollouts.append(dataclasses.replace(rollout, group_ids=groups))
        return rollouts

    monkeypatch.setattr(batches_module, "decode", silent_decode)
    monkeypatch.setattr(evaluation_module, "decode", silent_decode)
    summary = train(
        presets.get(preset), get_task("addition"), TINY, progress=False, cache_dir=tmp_path
    )
    assert summary.status == "ok", summary.reason
    assert summary.final_eval is not None
    assert summary.final_eval.reward == 0.0  # an empty answer earns no rubric credit
    assert summary.final_eval.accuracy == 0.0


def test_missing_checkpoint_folder_is_refused_at_load() -> None:
    space = {
        "name": "x",
        "tasks": ["addition"],
        "policy": {"checkpoint": "/nonexistent/model"},
        "base": "grpo",
        "search": {"sampler": "random", "trials": 1},
    }
    with pytest.raises(SpaceError, match=r"policy\.checkpoint.*/nonexistent/model"):
        parse_space(space, source="space.yaml")
