"""The engine adds nothing to the objective's loss but the critic's value loss.

Each test captures the rollout the engine samples and the batch/loss it hands to the
optimizer, then recomputes both from scratch with a copy of the policy holding the member's
weights from before the step.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

import grape_evo.training.engine as engine_module
from grape_evo.objective import ObjectiveSpec, RolloutBatch, build_objective, presets
from grape_evo.policy import Policy, policy_weights, score
from grape_evo.tasks import get_task
from grape_evo.training import Engine, Member

KL_COEF = presets.describe("grpo").spec["kl"]["coef"]  # k3 in the loss
EPS = presets.describe("grpo").spec["advantage"]["eps"]


def _spy(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Record the sampled rollout, (batch, loss) from loss_hook, the loss the optimizer
    stepped on and the gradients it saw."""
    seen: dict[str, Any] = {"rollouts": [], "hooks": [], "totals": [], "grads": []}
    real_collect = Engine._collect

    def collect(self: Engine, step: int, live: list[int]) -> Any:
        batches = real_collect(self, step, live)
        seen["rollouts"].append(batches[0].rollout)
        return batches

    monkeypatch.setattr(Engine, "_collect", collect)
    engine.loss_hook = lambda _m, batch, loss: seen["hooks"].append((batch, loss.detach().clone()))
    real_loss = engine_module.member_loss

    def member_loss(*args: Any, **kwargs: Any) -> Any:
        loss, metrics = real_loss(*args, **kwargs)
        seen["totals"].append(float(loss.detach()))
        return loss, metrics

    monkeypatch.setattr(engine_module, "member_loss", member_loss)
    real_clip = engine_module.clip_grad_norms_

    def clip(params: Any, max_norm: float) -> Any:
        critic = engine.critic_weights[0] or {}
        weights = [*engine.weights[0].items(), *((f"critic.{n}", p) for n, p in critic.items())]
        seen["grads"].append({n: p.grad.clone() for n, p in weights if p.grad is not None})
        return real_clip(params, max_norm)

    monkeypatch.setattr(engine_module, "clip_grad_norms_", clip)
    return seen


def _before(engine: Engine, policy: Policy) -> Policy:
    """A copy of the policy holding member 0's current weights."""
    before = copy.deepcopy(policy)
    engine.export(0, before)
    return before


def _grads(policy: Policy, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    named = list(policy_weights(policy).items())
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    return {n: g for (n, _), g in zip(named, grads, strict=True) if g is not None}


def _assert_same_grads(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    scale = max(float(g.abs().max()) for g in want.values())
    assert scale > 0, "the expected gradient is zero: the check would be vacuous"
    for name, g in want.items():
        actual = got.get(name, torch.zeros_like(g))
        torch.testing.assert_close(actual, g, rtol=1e-3, atol=1e-4 * scale, msg=name)


def _group_zscore(rewards: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """(R - mean_G R) / (std_G R (unbiased) + eps), per sequence."""
    out = torch.zeros_like(rewards)
    for g in groups.unique():
        idx = groups == g
        r = rewards[idx]
        std = r.std(unbiased=True) if r.numel() > 1 else torch.tensor(0.0)
        out[idx] = 0.0 if std == 0 else (r - r.mean()) / (std + EPS)
    return out


def test_grpo_batch_and_loss_are_the_objectives(warm_policy, tiny, monkeypatch) -> None:
    task = get_task("preference")  # continuous rewards: non-trivial group z-scores
    cfg = tiny(batch_size=16, max_grad_norm=0.0)  # 2 prompts x 8; no gradient clipping
    policy = warm_policy(task, batch_size=16)
    engine = Engine([Member(presets.get("grpo"), cfg.lr)], task, cfg, policy)
    engine.step(0)  # move away from the reference so the KL term is non-zero
    seen = _spy(engine, monkeypatch)
    before = _before(engine, policy)
    engine.step(1)

    (rollout,) = seen["rollouts"]
    ((batch, loss),) = seen["hooks"]
    rewards = torch.tensor(task.reward(rollout.prompts, rollout.texts), dtype=torch.float32)
    torch.testing.assert_close(batch.rewards.float(), rewards)
    assert rewards.unique().numel() > 2

    out = score(before, rollout)
    with torch.no_grad():
        ref = score(before, rollout, reference=True).logp
    mask = rollout.completion_mask.float()
    torch.testing.assert_close(batch.ref_logp, ref)
    torch.testing.assert_close(batch.logp.detach(), out.logp.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(batch.old_logp, out.logp.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(batch.mask.float(), mask)
    assert batch.group_ids.tolist() == rollout.group_ids.tolist()
    assert float(((out.logp.detach() - ref).abs() * mask).max()) > 1e-4, "KL term would be vacuous"

    # The loss worked out by hand (DeepSeekMath GRPO): ratio = 1 on the first update, so
    # per token L = -A_i + coef * k3 with k3 = exp(ref - logp) - (ref - logp) - 1, averaged
    # over each sequence's tokens, then over sequences.
    adv = _group_zscore(rewards, rollout.group_ids)
    assert float(adv.abs().max()) > 0.5
    ratio = torch.exp(out.logp - out.logp.detach())
    d = ref - out.logp
    per_token = -adv[:, None] * ratio + KL_COEF * (torch.exp(d) - d - 1)
    expected = (((per_token * mask).sum(-1)) / mask.sum(-1)).mean()
    # The same through the objective API, on a batch rebuilt from the pieces.
    rebuilt = RolloutBatch(
        logp=out.logp,
        old_logp=out.logp.detach(),
        ref_logp=ref,
        mask=mask,
        rewards=rewards,
        group_ids=rollout.group_ids,
        entropy=out.entropy,
    )
    via_objective = build_objective(presets.get("grpo"))(rebuilt)[0]
    torch.testing.assert_close(via_objective, expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-4, atol=1e-6)
    # What the optimizer stepped on is exactly that loss.
    assert seen["totals"] == [pytest.approx(float(expected.detach()), rel=1e-4, abs=1e-6)]
    _assert_same_grads(seen["grads"][0], _grads(before, expected))


def _gae_returns(
    rewards: torch.Tensor,
    token_rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> torch.Tensor:
    """Value targets A + V of GAE, written out with Python loops per sequence."""
    out = torch.zeros_like(values)
    for i in range(values.shape[0]):
        n = int(mask[i].sum())
        r = [float(token_rewards[i, t]) for t in range(n)]
        if n:
            r[-1] += float(rewards[i])
        v = [float(values[i, t]) for t in range(n)] + [0.0]
        running = 0.0
        for t in reversed(range(n)):
            running = r[t] + gamma * v[t + 1] - v[t] + gamma * lam * running
            out[i, t] = running + v[t]
    return out


@pytest.mark.parametrize("critic", ["shared", "separate"])
def test_ppo_adds_only_the_value_loss(critic: str, warm_policy, tiny, monkeypatch) -> None:
    """One PPO update (1 epoch, 1 minibatch): the policy loss plus value_coef times the value
    loss of its critic, a value head on the policy (shared) or a model of its own (separate,
    the preset's); nothing else, and the gradients of exactly that."""
    task = get_task("preference")
    raw = dict(presets.describe("ppo").spec)
    advantage = {**raw["advantage"], "critic": critic}
    spec = ObjectiveSpec.from_dict(
        {**raw, "name": "ppo_one_update", "epochs": 1, "minibatches": 1, "advantage": advantage}
    )
    gamma, lam = raw["advantage"]["gamma"], raw["advantage"]["lam"]
    value_coef = raw["advantage"]["value_coef"]
    kl_coef = raw["kl"]["coef"]  # k1 in the reward
    cfg = tiny(batch_size=16, max_grad_norm=0.0)
    policy = warm_policy(task, value_head=True, batch_size=16)
    engine = Engine([Member(spec, cfg.lr)], task, cfg, policy)
    engine.step(0)
    seen = _spy(engine, monkeypatch)
    before = _before(engine, policy)
    critic_model = before
    if critic == "separate":
        critic_model = copy.deepcopy(policy)
        with torch.no_grad():
            for name, p in policy_weights(critic_model).items():
                p.copy_((engine.critic_weights[0] or {})[name])
    engine.step(1)

    (rollout,) = seen["rollouts"]
    ((batch, loss),) = seen["hooks"]
    rewards = torch.tensor(task.reward(rollout.prompts, rollout.texts), dtype=torch.float32)
    out = score(before, rollout)
    values = score(critic_model, rollout).values
    with torch.no_grad():
        ref = score(before, rollout, reference=True).logp
    mask = rollout.completion_mask.float()
    assert values is not None
    old_values = values.detach()
    torch.testing.assert_close(batch.values, old_values, rtol=1e-4, atol=1e-5)
    rebuilt = RolloutBatch(
        logp=out.logp,
        old_logp=out.logp.detach(),
        ref_logp=ref,
        mask=mask,
        rewards=rewards,
        group_ids=rollout.group_ids,
        values=old_values,
        entropy=out.entropy,
    )
    policy_loss = build_objective(spec)(rebuilt)[0]
    torch.testing.assert_close(loss, policy_loss.detach(), rtol=1e-4, atol=1e-5)

    token_rewards = -kl_coef * (out.logp.detach() - ref) * mask
    returns = _gae_returns(rewards, token_rewards, old_values, mask, gamma, lam)
    # At the first update V = V_old, so the value clip leaves (V - G)^2 as it is.
    value_loss = 0.5 * (((values - returns) ** 2) * mask).sum() / mask.sum()
    total = policy_loss + value_coef * value_loss
    assert seen["totals"] == [pytest.approx(float(total.detach()), rel=1e-4, abs=1e-5)]
    want = _grads(before, policy_loss if critic == "separate" else total)
    if critic == "separate":
        want.update(
            {f"critic.{n}": g for n, g in _grads(critic_model, value_coef * value_loss).items()}
        )
    _assert_same_grads(seen["grads"][0], want)
