"""Compose an ObjectiveSpec's components into one loss function.

On-policy and demonstration batches (:class:`RolloutBatch`)::

    token_rewards = -coef * k(old_logp, ref_logp)          if kl.placement == reward
    R'            = R + sum_t token_rewards                (outcome estimators only)
    A             = advantage(batch)                       [B, T]
    L_t           = surrogate(logp, old_logp, A, mask)     [B, T]
                    + coef * k(logp, ref_logp)             if kl.placement == loss
                    - entropy_coef * H_t
    loss          = aggregation(pad(L), pad(mask))     pad: zero columns up to the batch's
                                                       generation_budget (when it exceeds T)

Preference batches (:class:`PreferenceBatch`): loss = mean over pairs of preference(pairs).

The built :class:`Objective` is the only place state lives (an EMA reward baseline, an adaptive
KL coefficient); the trainer calls :meth:`Objective.end_step` once per rollout batch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from grape_evo.objective.aggregation import masked_mean
from grape_evo.objective.batch import PreferenceBatch, RolloutBatch
from grape_evo.objective.registry import (
    ADVANTAGES,
    AGGREGATIONS,
    KL_ESTIMATORS,
    PREFERENCE_LOSSES,
    SURROGATES,
    Component,
)
from grape_evo.objective.spec import ComponentSpec, ObjectiveSpec

Metrics = dict[str, Tensor]


def _pad_to_budget(loss_mat: Tensor, mask: Tensor, budget: int) -> tuple[Tensor, Tensor]:
    """Both [B, T] -> [B, max(T, budget)], the new columns zero (masked out).

    Every aggregation ignores masked columns except ``seq_mean_token_sum_norm`` with
    ``max_len`` 0, which divides by the width: padded, that is the generation budget (Dr. GRPO's
    constant; TRL's ``max_completion_length``, verl's padded response length).
    """
    extra = budget - loss_mat.shape[-1]
    if extra <= 0:
        return loss_mat, mask
    return torch.nn.functional.pad(loss_mat, (0, extra)), torch.nn.functional.pad(mask, (0, extra))


class _Stateful:
    """A component's function bound to its parameters and its carried state."""

    def __init__(self, component: Component, spec: ComponentSpec, registry: Any) -> None:
        self.component = component
        self.params = spec.as_kwargs(registry)
        self.state: dict[str, Any] = dict(component.state)

    def __call__(self, *args: Any) -> Any:
        return self.component.fn(*args, **self.params, **self.state)

    def end_step(self, metrics: dict[str, float]) -> None:
        if self.component.update_state is not None:
            self.state = self.component.update_state(self.state, metrics, **self.params)


class Objective:
    """``objective(batch) -> (loss, metrics)`` for one canonical spec.

    ``metrics`` are detached scalar tensors (read them after the step; no host sync here).
    """

    def __init__(self, spec: ObjectiveSpec) -> None:
        self.spec = spec.canonical()
        s = self.spec
        self.advantage = _Stateful(ADVANTAGES.get(s.advantage.name), s.advantage, ADVANTAGES)
        self.surrogate = _Stateful(SURROGATES.get(s.surrogate.name), s.surrogate, SURROGATES)
        self.aggregation = _Stateful(
            AGGREGATIONS.get(s.aggregation.name), s.aggregation, AGGREGATIONS
        )
        self.kl_estimator = KL_ESTIMATORS.get(s.kl.estimator).fn
        self.preference = (
            None
            if s.preference is None
            else _Stateful(
                PREFERENCE_LOSSES.get(s.preference.name), s.preference.loss, PREFERENCE_LOSSES
            )
        )

    # ---- rollout objectives -------------------------------------------------------------
    def shape_rewards(self, batch: RolloutBatch) -> RolloutBatch:
        """Apply the KL-in-reward placement (penalties from the sampling policy's log-probs)."""
        kl = self.spec.kl
        changes: dict[str, Any] = {}
        if kl.active and kl.placement == "reward":
            penalty = -kl.coef * self.kl_estimator(batch.old_logp, batch.ref_logp).detach()
            penalty = penalty * batch.mask.to(penalty.dtype)
            if "token_rewards" in self.advantage.component.tags:
                base = 0.0 if batch.token_rewards is None else batch.token_rewards
                changes["token_rewards"] = base + penalty
            else:
                changes["rewards"] = batch.rewards.to(penalty.dtype) + penalty.sum(-1)
        return batch.with_(**changes) if changes else batch

    def advantages(self, batch: RolloutBatch) -> Tensor:
        """A [B, T] for the batch (after reward shaping), detached."""
        return self.advantage(self.shape_rewards(batch)).detach()

    def _rollout_loss(self, batch: RolloutBatch) -> tuple[Tensor, Metrics]:
        shaped = self.shape_rewards(batch)
        adv = (self.advantage(shaped) if batch.advantages is None else batch.advantages).detach()
        loss_mat, metrics = self.surrogate(batch.logp, batch.old_logp, adv, batch.mask)
        mask = batch.mask.to(loss_mat.dtype)
        kl = self.spec.kl
        kl_mat = self.kl_estimator(batch.logp, batch.ref_logp.detach())
        if kl.active and kl.placement == "loss":
            loss_mat = loss_mat + kl.coef * kl_mat * mask
        if self.spec.entropy_coef > 0.0:
            if batch.entropy is None:
                raise ValueError("entropy_coef > 0 needs per-token entropy in the batch")
            loss_mat = loss_mat - self.spec.entropy_coef * batch.entropy * mask
        loss = self.aggregation(*_pad_to_budget(loss_mat, mask, batch.generation_budget))
        rewards = shaped.rewards.to(torch.float32)
        metrics = {
            **metrics,
            "reward_mean": rewards.mean().detach(),
            "advantage_mean": masked_mean(adv, batch.mask),
            "advantage_abs_mean": masked_mean(adv.abs(), batch.mask),
            "kl_ref": masked_mean(kl_mat.detach(), batch.mask),
        }
        if batch.entropy is not None:
            metrics["entropy"] = masked_mean(batch.entropy.detach(), batch.mask)
        return loss, metrics

    # ---- preference objectives ----------------------------------------------------------
    def _preference_loss(self, pairs: PreferenceBatch) -> tuple[Tensor, Metrics]:
        assert self.preference is not None
        losses = self.preference(pairs)
        chosen = (pairs.chosen_logp - pairs.ref_chosen_logp).detach()
        rejected = (pairs.rejected_logp - pairs.ref_rejected_logp).detach()
        metrics = {
            "pair_loss_mean": losses.detach().mean(),
            "logratio_chosen": chosen.mean(),
            "logratio_rejected": rejected.mean(),
            "pair_accuracy": (chosen > rejected).to(torch.float32).mean(),
        }
        return losses.mean(), metrics

    def __call__(self, batch: RolloutBatch | PreferenceBatch) -> tuple[Tensor, Metrics]:
        if isinstance(batch, PreferenceBatch):
            if self.preference is None:
                raise TypeError(f"objective '{self.spec.name}' takes a RolloutBatch, not pairs")
            loss, metrics = self._preference_loss(batch)
        else:
            if self.preference is not None:
                raise TypeError(
                    f"objective '{self.spec.name}' takes a PreferenceBatch, not rollouts"
                )
            loss, metrics = self._rollout_loss(batch)
        metrics["loss"] = loss.detach()
        return loss, metrics

    def end_step(self, metrics: dict[str, float]) -> None:
        """Advance carried state once per rollout batch (after all epochs of updates)."""
        for part in (self.advantage, self.surrogate):
            part.end_step(metrics)

    @property
    def state(self) -> dict[str, Any]:
        return {**self.advantage.state, **self.surrogate.state}


def build_objective(spec: ObjectiveSpec) -> Objective:
    """The callable ``(batch) -> (loss, metrics)`` for ``spec`` (**contract**)."""
    return Objective(spec)
