"""A member's loss on its rows: the objective's, plus the critic's value loss when it has one.

The trainer adds nothing else to an objective's loss. What an objective needs is read from its
components' registry tags (`needs_critic`, `needs_trust_region`), never from their names.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from grape_evo.objective import Objective, PreferenceBatch, RolloutBatch
from grape_evo.objective.advantages import gae_advantages_and_returns
from grape_evo.objective.aggregation import masked_mean
from grape_evo.objective.kl import k3
from grape_evo.policy import TokenOutputs
from grape_evo.training.batches import MemberBatch, pair_batch

LossHook = Callable[[int, RolloutBatch | PreferenceBatch, Tensor], None]
"""``hook(member, batch, loss)``: sees every objective batch and loss before the update."""


def needs_critic(objective: Objective) -> bool:
    """Whether the objective's advantage needs critic values (tag ``critic``: a value head)."""
    return objective.preference is None and "critic" in objective.advantage.component.tags


def separate_critic(objective: Objective) -> bool:
    """Whether the critic is a value model of its own rather than a head on the policy."""
    return needs_critic(objective) and objective.advantage.params["critic"] == "separate"


def needs_kl_after_update(objective: Objective) -> bool:
    """Whether a component adapts to the KL the batch's updates moved the policy by (tag
    ``kl_after_update``: the metric `KL_AFTER_UPDATE` is measured after the last update)."""
    return "kl_after_update" in objective.surrogate.component.tags


def needs_trust_region(objective: Objective) -> bool:
    """Whether the objective's surrogate is optimised by a trust-region step instead of Adam
    (tag ``trust_region``: TRPO's natural gradient)."""
    return objective.preference is None and "trust_region" in objective.surrogate.component.tags


def sequence_k3(logp: Tensor, ref_logp: Tensor, mask: Tensor) -> Tensor:
    """[..., B] per-sequence KL(pi || pi_ref) estimates: k3 summed over tokens sampled from pi."""
    return (k3(logp, ref_logp) * mask.to(logp.dtype)).sum(-1)


def full_batch(batch: MemberBatch) -> RolloutBatch:
    """The whole batch as the sampling policy saw it (old log-probs and values, detached)."""
    rollout = batch.rollout
    return RolloutBatch(
        logp=batch.old_logp,
        old_logp=batch.old_logp,
        ref_logp=batch.old_logp if batch.ref_logp is None else batch.ref_logp,
        mask=rollout.completion_mask,
        rewards=batch.rewards,
        group_ids=rollout.group_ids,
        values=batch.old_values,
    )


def critic_returns(objective: Objective, batch: MemberBatch) -> Tensor:
    """[B, T] value targets A + V_old of GAE on the whole batch (rewards shaped by the
    objective), detached."""
    params = objective.advantage.params
    shaped = objective.shape_rewards(full_batch(batch))
    _, returns = gae_advantages_and_returns(shaped, params["gamma"], params["lam"])
    return returns


def critic_loss(
    values: Tensor, returns: Tensor, old_values: Tensor, mask: Tensor, clip: float
) -> Tensor:
    """The PPO value loss: 0.5 * token mean over ``mask`` of max((V - G)^2, (V_c - G)^2) with
    G = A + V_old (``returns``) and V_c = V_old + clip(V - V_old, -clip, clip) (TRL's
    ``cliprange_value``); ``clip`` 0 is the unclipped 0.5 * (V - G)^2."""
    loss = (values - returns) ** 2
    if clip > 0:
        clipped = old_values + torch.clamp(values - old_values, -clip, clip)
        loss = torch.maximum(loss, (clipped - returns) ** 2)
    return 0.5 * masked_mean(loss, mask)


def _pick(t: Tensor | None, rows: Tensor | None) -> Tensor | None:
    return t if t is None or rows is None else t[rows]


def member_loss(
    member: int,
    objective: Objective,
    batch: MemberBatch,
    rows: Tensor | None,
    out: TokenOutputs,
    generation_budget: int = 0,
    policy_loss: bool = True,
    hook: LossHook | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The loss and metrics of ``member`` on ``rows`` of its batch (None: all), from the
    outputs ``out`` [len(rows), T] of its current weights (``out.values``: its critic's).

    Preference objectives: the pairwise loss on ``batch.pairs``. Everything else: the rollout
    objective (demonstrations are rows of reward 1) with the task's ``generation_budget``. With
    a critic, its value loss (`critic_loss`) times the advantage's ``value_coef`` is added;
    ``policy_loss=False`` keeps only that (a trust-region member's critic).
    """
    mask = batch.mask if rows is None else batch.mask[rows]
    if batch.pairs is not None:
        pairs = pair_batch(out.logp, mask, batch.pairs, batch.ref_logp, batch.ref_pair_sums)
        loss, metrics = objective(pairs)
        metrics["entropy"] = masked_mean(out.entropy.detach(), mask)
        metrics["pairs"] = torch.tensor(float(batch.pairs[0].numel()))
        if hook is not None:
            hook(member, pairs, loss)
        return loss, metrics
    detached = out.logp.detach()
    ref = _pick(batch.ref_logp, rows)
    rollout_batch = RolloutBatch(
        logp=out.logp,
        old_logp=detached if batch.old_is_new else _pick(batch.old_logp, rows),
        ref_logp=detached if ref is None else ref,
        mask=mask,
        rewards=_pick(batch.rewards, rows),
        group_ids=_pick(batch.rollout.group_ids, rows),
        values=_pick(batch.old_values, rows),
        entropy=out.entropy,
        advantages=_pick(batch.advantages, rows),
        generation_budget=generation_budget,
    )
    loss, metrics = objective(rollout_batch)
    if hook is not None:
        hook(member, rollout_batch, loss)
    if not policy_loss:
        loss = torch.zeros((), device=loss.device)
    if batch.returns is not None and out.values is not None:
        params = objective.advantage.params
        returns, old_values = _pick(batch.returns, rows), _pick(batch.old_values, rows)
        assert returns is not None and old_values is not None
        value_loss = critic_loss(out.values, returns, old_values, mask, params["value_clip"])
        loss = loss + params["value_coef"] * value_loss
        metrics["value_loss"] = value_loss.detach()
    return loss, metrics
