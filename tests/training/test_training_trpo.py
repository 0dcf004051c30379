"""TRPO: each step keeps the mean token KL(old || new) within the preset's max_kl; the
batched conjugate gradient solves each member's system."""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from grape_evo.objective import presets
from grape_evo.policy import Policy, Rollout, policy_weights, score
from grape_evo.tasks import get_task
from grape_evo.training import Engine, Member
from grape_evo.training.trpo import conjugate_gradient

MAX_KL = presets.describe("trpo").spec["surrogate"]["max_kl"]


def _mean_token_kl(before: Policy, after: Policy, rollout: Rollout) -> float:
    """Mean over completion tokens of KL(before || after) of the next-token distributions."""
    with torch.no_grad():
        old = score(before, rollout, full=True).log_dist
        new = score(after, rollout, full=True).log_dist
    assert old is not None and new is not None
    kl = (old.exp() * (old - new)).sum(-1)  # [B, T]
    m = rollout.completion_mask.float()
    return float((kl * m).sum() / m.sum())


def _flat(policy: Policy) -> torch.Tensor:
    named = policy_weights(policy)
    return torch.cat([p.detach().reshape(-1) for n, p in named.items() if "value_head" not in n])


@pytest.mark.parametrize("attention", ["default", "math_sdpa"])
def test_trpo_step_respects_max_kl(
    attention: str, warm_policy: Any, tiny: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``default``: as training runs it. ``math_sdpa``: the same under the math attention
    kernel, which supports the double backward of Fisher-vector products."""
    task = get_task("addition")
    policy = warm_policy(task, value_head=True)
    engine = Engine([Member(presets.get("trpo"), 1e-4)], task, tiny(steps=3), policy)
    rollouts: list[Rollout] = []
    original = Engine._collect

    def spy(self: Engine, step: int, live: list[int]) -> Any:
        batches = original(self, step, live)
        rollouts.append(batches[0].rollout)
        return batches

    monkeypatch.setattr(Engine, "_collect", spy)
    kernel = sdpa_kernel(SDPBackend.MATH) if attention == "math_sdpa" else contextlib.nullcontext()
    fractions = []
    after = copy.deepcopy(policy)
    with kernel:
        for step in range(3):
            before = copy.deepcopy(after)
            metrics = engine.step(step)[0]
            assert metrics is not None
            engine.export(0, after)
            kl = _mean_token_kl(before, after, rollouts[-1])
            assert kl <= MAX_KL * 1.01 + 1e-6, (step, kl, metrics)
            moved = float((_flat(after) - _flat(before)).abs().max())
            fractions.append(metrics["step_fraction"])
            if metrics["step_fraction"] > 0:
                assert moved > 0
                assert metrics["trpo_kl"] == pytest.approx(kl, rel=0.05, abs=1e-5)
            else:
                assert moved == 0.0, "a rejected TRPO step must leave the policy unchanged"
    assert max(fractions) > 0, "TRPO never moved the policy in 3 steps"


def test_batched_conjugate_gradient_solves_each_members_system() -> None:
    """Three members' SPD systems of different conditioning, solved at once: each row is
    A_m^-1 b_m (the exact solve by torch.linalg); a row that has converged stops moving."""
    generator = torch.Generator().manual_seed(0)
    systems = []
    for scale in (1.0, 10.0, 100.0):
        q, _ = torch.linalg.qr(torch.randn(6, 6, generator=generator, dtype=torch.float64))
        eigen = torch.linspace(1.0, scale, 6, dtype=torch.float64)
        systems.append(q @ torch.diag(eigen) @ q.T)
    a = torch.stack(systems)  # [3, 6, 6]
    b = torch.randn(3, 6, generator=generator, dtype=torch.float64)
    b[1] = 0.0  # already solved: x = 0
    x = conjugate_gradient(lambda v: torch.einsum("mij,mj->mi", a, v), b, iters=6)
    expected = torch.linalg.solve(a, b)
    torch.testing.assert_close(x, expected, atol=1e-8, rtol=1e-8)
    assert torch.equal(x[1], torch.zeros(6, dtype=torch.float64))
