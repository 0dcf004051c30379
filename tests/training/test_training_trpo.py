"""TRPO: each step keeps the mean token KL(old || new) within the preset's max_kl."""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import grape_evo.training.trainer as trainer_module
from grape_evo.objective import presets
from grape_evo.policy import Policy, Rollout
from grape_evo.tasks import get_task
from grape_evo.training import Trainer

MAX_KL = presets.describe("trpo").spec["surrogate"]["max_kl"]


def _next_token_logprobs(policy: Policy, rollout: Rollout) -> torch.Tensor:
    """[B, T, V] log-softmax of the distributions that predict each completion token."""
    ids, mask = rollout.input_ids, rollout.attention_mask
    n_prompt = rollout.prompt_ids.shape[1]
    n_completion = rollout.completion_ids.shape[1]
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits, _, _ = policy.run_lm(ids, mask, positions)
    # The logits at position j predict token j + 1.
    window = logits[:, n_prompt - 1 : n_prompt + n_completion - 1].float()
    return F.log_softmax(window, dim=-1)


def _mean_token_kl(before: Policy, after: Policy, rollout: Rollout) -> float:
    old = _next_token_logprobs(before, rollout)
    new = _next_token_logprobs(after, rollout)
    kl = (old.exp() * (old - new)).sum(-1)  # [B, T]
    m = rollout.completion_mask.float()
    return float((kl * m).sum() / m.sum())


def _flat(policy: Policy) -> torch.Tensor:
    named = dict(policy.named_parameters())
    return torch.cat([p.detach().reshape(-1) for n, p in named.items() if "value_head" not in n])


@pytest.mark.parametrize("attention", ["default", "math_sdpa"])
def test_trpo_step_respects_max_kl(
    attention: str, warm_policy: Any, tiny: Any, monkeypatch
) -> None:
    """``default``: the policy as training builds it. ``math_sdpa``: the same with the math
    attention kernel, which supports the double backward of Fisher-vector products."""
    task = get_task("addition")
    policy = warm_policy(task, value_head=True)
    trainer = Trainer(presets.get("trpo"), task, tiny(steps=3), policy)
    rollouts: list[Rollout] = []
    real_sample = trainer_module.sample

    def capture(*args: Any, **kwargs: Any) -> Rollout:
        rollout = real_sample(*args, **kwargs)
        rollouts.append(rollout)
        return rollout

    monkeypatch.setattr(trainer_module, "sample", capture)
    kernel = sdpa_kernel(SDPBackend.MATH) if attention == "math_sdpa" else contextlib.nullcontext()
    fractions = []
    with kernel:
        for step in range(3):
            before = copy.deepcopy(policy)
            metrics = trainer.step(step)
            rollout = rollouts[-1]
            kl = _mean_token_kl(before, policy, rollout)
            assert kl <= MAX_KL * 1.01 + 1e-6, (step, kl, metrics)
            moved = float((_flat(policy) - _flat(before)).abs().max())
            fractions.append(metrics["step_fraction"])
            if metrics["step_fraction"] > 0:
                assert moved > 0
                assert metrics["trpo_kl"] == pytest.approx(kl, rel=0.05, abs=1e-5)
            else:
                assert moved == 0.0, "a rejected TRPO step must leave the policy unchanged"
    assert max(fractions) > 0, "TRPO never moved the policy in 3 steps"
