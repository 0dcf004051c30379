"""LoRA runs start from the same full fine-tuned warm start as full runs."""

from __future__ import annotations

from pathlib import Path

import torch

from grape_evo.objective import presets
from grape_evo.policy import PolicyConfig, encode_pairs, score
from grape_evo.tasks import get_task
from grape_evo.training import TrainConfig, train, warm_start_policy

TINY = TrainConfig(steps=2, batch_size=8, eval_prompts=8, eval_every=2, warm_start_steps=5)


def test_lora_shares_the_warm_start_and_trains_only_the_adapter(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    task = get_task("addition")
    cpu = torch.device("cpu")
    full, full_dir = warm_start_policy(task, PolicyConfig(), TINY, cpu, tmp_path)
    lora, lora_dir = warm_start_policy(task, PolicyConfig(lora_rank=4), TINY, cpu, tmp_path)
    assert lora_dir == full_dir  # one cached warm start for both
    trainable = lora.trainable_parameters()
    n_adapter = sum(p.numel() for p in trainable)
    assert 0 < n_adapter < full.num_parameters() / 5
    assert all(p.requires_grad for p in trainable)
    # Before any RL step the LoRA policy is its reference, and both equal the full policy.
    rollout = encode_pairs(full.tokenizer, ["12+34="], ["46"])
    with torch.no_grad():
        ref_full = score(full, rollout, reference=True).logp
        now_lora = score(lora, rollout).logp
        ref_lora = score(lora, rollout, reference=True).logp
    torch.testing.assert_close(now_lora, ref_full)
    torch.testing.assert_close(ref_lora, ref_full)


def test_lora_run_completes_from_the_same_initial_eval(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    task = get_task("addition")
    runs = [
        train(presets.get("grpo"), task, TINY, PolicyConfig(lora_rank=r), progress=False,
              cache_dir=tmp_path)
        for r in (0, 4)
    ]  # fmt: skip
    assert [r.status for r in runs] == ["ok", "ok"]
    assert runs[0].initial_eval == runs[1].initial_eval
