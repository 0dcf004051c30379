"""``grape train --save-model``: the trained policy in Hugging Face format in ``OUT/model``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from cli_helpers import TINY_TRAIN, CliRun
from safetensors.torch import load_file

import grape_evo.training.run as run_module
from grape_evo.policy import PolicyConfig, build_policy
from grape_evo.training import Engine


@pytest.mark.parametrize("lora_rank", [0, 2])
def test_saved_model_holds_the_trained_weights(
    lora_rank: int,
    grape: Callable[..., CliRun],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[Engine] = []

    def recording_engine(*args: Any, **kwargs: Any) -> Engine:
        made.append(Engine(*args, **kwargs))  # the test reads the trained weights from it
        return made[-1]

    monkeypatch.setattr(run_module, "Engine", recording_engine)
    out = tmp_path / "run"
    args = ["train", "--objective", "sft", "--steps", "2", "--out", str(out), "--save-model"]
    run = grape(*args, "--lora-rank", str(lora_rank), *TINY_TRAIN)
    assert run.exit_code == 0, run.text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == str(out / "model")
    [engine] = made
    trained = engine.member_state(0)  # names relative to the LM, as in save_pretrained
    if lora_rank == 0:
        # The folder is a checkpoint grape itself loads (weights and character tokenizer).
        loaded = build_policy(PolicyConfig(checkpoint=str(out / "model")), None, seed=1)
        saved = dict(loaded.lm.named_parameters())
        warm = torch.load(Path(summary["warm_start_cache"]) / "policy.pt", weights_only=True)
        start = {name: warm[f"lm.{name}"] for name in trained}
        assert loaded.tokenizer.encode("12+34=") == engine.tokenizer.encode("12+34=")
    else:
        assert not (out / "model" / "model.safetensors").exists()  # the adapter only
        adapter = load_file(out / "model" / "adapter_model.safetensors")
        saved = {name: adapter[name.replace(".default", "")] for name in trained}
        assert len(adapter) == len(trained)
        # A fresh adapter starts with B = 0 (and A as drawn; only B must have moved from 0).
        start = {name: torch.zeros_like(t) for name, t in trained.items() if "lora_B" in name}
    assert set(trained) <= set(saved)
    assert all(torch.equal(saved[name], tensor) for name, tensor in trained.items())
    assert any(not torch.equal(saved[name], start[name]) for name in start)
