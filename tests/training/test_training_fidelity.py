"""What the engine hands the objective and its components, checked against values worked out
from the definitions: the critic's clipped value loss, the KL after the update for the adaptive
KL penalty, the generation budget for Dr. GRPO's normaliser, and log-probs at the sampling
temperature."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from grape_evo.objective import KL_AFTER_UPDATE, ObjectiveSpec, RolloutBatch, presets
from grape_evo.policy import rows_of
from grape_evo.tasks import get_task
from grape_evo.training import Engine, Member
from grape_evo.training.engine import MemberBatch
from grape_evo.training.losses import critic_loss


def test_critic_loss_clips_the_value_move_by_hand() -> None:
    """0.5 * token mean of max((V - G)^2, (V_old + clip(V - V_old, -c, c) - G)^2)."""
    values = torch.tensor([[1.0, 0.0, 2.0]])
    old = torch.tensor([[0.5, 0.1, 2.0]])
    returns = torch.tensor([[0.0, 1.0, 9.0]])
    mask = torch.tensor([[1, 1, 0]])
    # token 0: V - G = 1 -> 1; V_c = 0.5 + clip(0.5, +-0.2) = 0.7 -> 0.49; max 1.
    # token 1: V - G = -1 -> 1; V_c = 0.1 + clip(-0.1) = 0.0 -> 1.0; max 1. (token 2 masked)
    assert float(critic_loss(values, returns, old, mask, 0.2)) == pytest.approx(0.5 * 1.0)
    # A value that moves towards its target past the clip keeps the clipped (larger) error.
    moved = torch.tensor([[0.0, 1.0, 2.0]])  # both exact: unclipped error 0
    # token 0: V_c = 0.5 - 0.2 = 0.3 -> 0.09; token 1: V_c = 0.1 + 0.2 = 0.3 -> 0.49.
    expected = 0.5 * (0.09 + 0.49) / 2
    assert float(critic_loss(moved, returns, old, mask, 0.2)) == pytest.approx(expected)
    assert float(critic_loss(moved, returns, old, mask, 0.0)) == 0.0


def _spec(name: str, **changes: Any) -> ObjectiveSpec:
    return ObjectiveSpec.from_dict({**presets.describe(name).spec, "name": name, **changes})


def test_kl_penalty_adapts_from_the_kl_after_the_update(
    warm_policy: Callable[..., Any], tiny: Callable[..., Any]
) -> None:
    """The PPO paper's rule on d = KL(old || new) measured after the batch's updates: beta
    halves when d < target / 1.5 and doubles when d > 1.5 target."""
    task = get_task("addition")
    spec = ObjectiveSpec.from_dict(
        {
            "group_size": 8,
            "advantage": "group_zscore",
            "surrogate": {"name": "kl_penalty", "beta": 1.0, "target_kl": 1e-3},
            "epochs": 2,
        }
    )
    engine = Engine([Member(spec, 3e-3)], task, tiny(batch_size=16), warm_policy(task))
    beta = 1.0
    for step in range(3):
        metrics = engine.step(step)[0]
        assert metrics is not None and KL_AFTER_UPDATE in metrics
        d = metrics[KL_AFTER_UPDATE]
        assert d > 0
        if d < 1e-3 / 1.5:
            beta /= 2
        elif d > 1.5e-3:
            beta *= 2
        assert engine.objectives[0].state["kl_beta"] == pytest.approx(beta)


def test_the_generation_budget_reaches_the_objective(
    warm_policy: Callable[..., Any], tiny: Callable[..., Any]
) -> None:
    task = get_task("addition")
    engine = Engine(
        [Member(presets.get("dr_grpo"), 1e-4)], task, tiny(batch_size=16), warm_policy(task)
    )
    seen: list[RolloutBatch] = []
    engine.loss_hook = lambda _member, batch, _loss: seen.append(batch)
    engine.step(0)
    (batch,) = seen
    assert batch.generation_budget == task.max_new_tokens


@pytest.mark.parametrize("temper", [True, False])
def test_log_probs_at_the_sampling_temperature(
    temper: bool,
    warm_policy: Callable[..., Any],
    tiny: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At temperature 0.7 the sampling log-probs (and so the old log-probs) are those of
    softmax(logits / 0.7) with ``temper_logprobs`` (TRL, verl), of softmax(logits) without."""
    task = get_task("addition")
    config = tiny(batch_size=16, temperature=0.7, temper_logprobs=temper)
    engine = Engine([Member(presets.get("grpo"), 1e-4)], task, config, warm_policy(task))
    batches: list[MemberBatch] = []
    original = Engine._collect

    def spy(self: Engine, step: int, live: list[int]) -> dict[int, MemberBatch]:
        collected = original(self, step, live)
        batches.append(collected[0])
        return collected

    monkeypatch.setattr(Engine, "_collect", spy)
    start = engine.member_state(0)
    engine.step(0)
    rows = rows_of([batches[0].rollout], engine.tokenizer.pad_id)
    with torch.no_grad():
        tempered = engine.forward.score(rows, [start], temperature=0.7).logp[0]
        plain = engine.forward.score(rows, [start]).logp[0]
    expected, other = (tempered, plain) if temper else (plain, tempered)
    torch.testing.assert_close(batches[0].rollout.sample_logp, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(batches[0].rollout.sample_logp, other, atol=1e-3)
