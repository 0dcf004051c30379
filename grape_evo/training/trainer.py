"""The training loop: rollout and update, for any ObjectiveSpec.

One step, by the spec's ``data`` mode:

* ``on_policy``: sample ``group_size`` completions for ``batch_size // group_size`` prompts,
  score them (rewards, old/reference log-probs, critic values), compute advantages once on the
  whole batch, then ``epochs`` passes of ``minibatches`` updates of ``objective(batch)``
  (+ ``value_coef`` * value loss for critic advantages; a TRPO step for ``surrogate: trpo``).
  With a preference loss, pairs are formed inside each group instead (online DPO family).
* ``demonstrations``: ``batch_size`` gold (prompt, completion) pairs; the objective is -log pi.
* ``preference_pairs``: ``batch_size // 2`` pairs drawn from a fixed set sampled once from the
  reference policy and labelled by the task's hidden Bradley-Terry preference.

The trainer adds nothing to the objective's loss but the critic's value loss.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from grape_evo.objective import (
    SURROGATES,
    Objective,
    PreferenceBatch,
    RolloutBatch,
    build_objective,
)
from grape_evo.objective.advantages import gae_advantages_and_returns
from grape_evo.objective.aggregation import masked_mean
from grape_evo.objective.kl import k3
from grape_evo.objective.spec import ObjectiveSpec
from grape_evo.policy import Policy, Rollout, completion_logprobs, encode_pairs, sample
from grape_evo.policy.tokenizer import TextTokenizer
from grape_evo.tasks import Task
from grape_evo.training.batches import (
    OfflinePairs,
    ScoredRollout,
    label_pairs,
    online_pairs,
    preference_batch,
    score_rollout,
    sequence_sums,
)
from grape_evo.training.config import TrainConfig
from grape_evo.training.trpo import trpo_step

LossHook = Callable[[RolloutBatch | PreferenceBatch, Tensor], None]


class Diverged(RuntimeError):
    """The run's numbers left the sane range (non-finite loss, runaway KL)."""


@dataclass(frozen=True)
class EvalReport:
    reward: float
    accuracy: float
    kl_to_ref: float

    def to_dict(self) -> dict[str, float]:
        return {"reward": self.reward, "accuracy": self.accuracy, "kl_to_ref": self.kl_to_ref}


def _step_seed(seed: int, step: int, stream: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + stream) % (2**31 - 1)


def prompts_per_step(config: TrainConfig, group_size: int) -> int:
    """On-policy prompts per step: ``max(1, batch_size // group_size)``."""
    return max(1, config.batch_size // group_size)


def train_prompts(task: Task, config: TrainConfig, step: int, group_size: int) -> list[str]:
    """The `prompts_per_step` training prompts of on-policy step ``step`` (the same for every
    objective with the same group size and seed)."""
    n_prompts = prompts_per_step(config, group_size)
    return task.prompts("train", n_prompts, _step_seed(config.seed, step, 1))


def adam(params: Any, lr: float, device: torch.device) -> torch.optim.Adam:
    """Adam over ``params`` (parameters or parameter groups) at ``lr``; the fused kernel on
    CPU and CUDA (one kernel for all parameters instead of a loop of small ops per one)."""
    return torch.optim.Adam(params, lr=lr, fused=device.type in ("cpu", "cuda"))


def eval_generator(config: TrainConfig, device: torch.device) -> torch.Generator:
    """The generator of evaluation's sampled KL to the reference (seeded ``seed + 17``)."""
    return torch.Generator(device=device).manual_seed(config.seed + 17)


def step_metrics(metrics: dict[str, Tensor], config: TrainConfig, step: int) -> dict[str, float]:
    """A step's metrics as floats (the step's one host sync).

    Raises `Diverged` when the loss is not finite or ``kl_to_ref`` exceeds
    ``config.max_kl_to_ref``.
    """
    out = {k: float(v) for k, v in metrics.items()}
    if not math.isfinite(out.get("loss", 0.0)):
        raise Diverged(f"non-finite loss at step {step + 1}")
    kl = out.get("kl_to_ref")
    if kl is not None and kl > config.max_kl_to_ref:
        raise Diverged(
            f"KL to the reference {kl:.1f} nats exceeded max_kl_to_ref "
            f"{config.max_kl_to_ref:g} at step {step + 1}"
        )
    return out


def rollout_batch(
    scored: ScoredRollout, logp: Tensor, entropy: Tensor | None, old_is_new: bool
) -> RolloutBatch:
    """The objective's batch for ``scored`` with the policy's log-probs ``logp`` [B, T] (with
    gradients) and ``entropy``; ``old_is_new``: ``old_logp = logp.detach()`` (one update per
    batch) instead of the scored old log-probs."""
    rollout = scored.rollout
    return RolloutBatch(
        logp=logp,
        old_logp=logp.detach() if old_is_new else scored.old_logp,
        ref_logp=scored.ref_logp,
        mask=rollout.completion_mask,
        rewards=scored.rewards,
        group_ids=rollout.group_ids,
        values=scored.old_values,
        entropy=entropy,
    )


def uses_critic(objective: Objective) -> bool:
    """Whether the objective's advantage needs critic values (a value head): ``gae``."""
    return "critic" in objective.advantage.component.tags


def critic_returns(objective: Objective, full: RolloutBatch) -> Tensor:
    """[B, T] value targets A + V_old of GAE on the whole batch (``full``: old log-probs and
    old values, rewards shaped by the objective), detached."""
    params = objective.advantage.params
    _, returns = gae_advantages_and_returns(
        objective.shape_rewards(full), params["gamma"], params["lam"]
    )
    return returns


def critic_loss(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """0.5 * token mean of (V - (A + V_old))^2 over ``mask``, the PPO critic loss (unclipped)."""
    return 0.5 * masked_mean((values - returns) ** 2, mask)


def online_preference_loss(
    objective: Objective,
    scored: ScoredRollout,
    logp: Tensor,
    entropy: Tensor,
    chosen: Tensor,
    rejected: Tensor,
) -> tuple[PreferenceBatch, Tensor, dict[str, Tensor]]:
    """A preference objective on pairs of one rollout's rows (``chosen`` vs ``rejected``,
    from `online_pairs`), with the policy's log-probs ``logp`` and ``entropy`` [B, T]: the
    pairs, the loss and its metrics plus ``entropy`` (token mean over the completions)."""
    mask = scored.rollout.completion_mask
    pairs = preference_batch(logp, scored.ref_logp, mask, chosen, rejected)
    loss, metrics = objective(pairs)
    metrics["entropy"] = masked_mean(entropy.detach(), mask)
    metrics["pairs"] = torch.tensor(float(chosen.numel()))
    return pairs, loss, metrics


def no_pair_metrics(device: torch.device) -> dict[str, Tensor]:
    """A preference step's metrics when no group has two different rewards: no update."""
    zero = torch.zeros((), device=device)
    return {"loss": zero, "pairs": zero, "grad_norm": zero}


def sequence_k3(logp: Tensor, ref_logp: Tensor, mask: Tensor) -> Tensor:
    """[B] per-sequence KL(pi || pi_ref) estimates: k3 summed over tokens sampled from pi."""
    return (k3(logp, ref_logp) * mask.to(logp.dtype)).sum(-1)


@torch.no_grad()
def sequence_kl_to_ref(policy: Policy, rollout: Rollout) -> Tensor:
    """[B] :func:`sequence_k3` of fresh samples ``rollout`` of the policy."""
    logp = completion_logprobs(policy, rollout).logp
    ref = completion_logprobs(policy, rollout, reference=True).logp
    return sequence_k3(logp, ref, rollout.completion_mask)


class Trainer:
    """Trains ``policy`` (whose reference is already frozen) with one objective on one task."""

    def __init__(
        self,
        spec: ObjectiveSpec,
        task: Task,
        config: TrainConfig,
        policy: Policy,
        offline_pairs: OfflinePairs | None = None,
    ) -> None:
        self.spec = spec.canonical()
        self.task = task
        self.config = config
        self.policy = policy
        self.device = policy.device
        self.objective: Objective = build_objective(self.spec)
        self.uses_critic = uses_critic(self.objective)
        self.is_trpo = self.spec.surrogate.name == "trpo" and self.spec.preference is None
        if self.uses_critic and not policy.has_value_head:
            raise ValueError(f"advantage '{self.spec.advantage.name}' needs a policy value head")
        if self.spec.data == "preference_pairs" and offline_pairs is None:
            raise ValueError("data 'preference_pairs' needs offline pairs")
        self.offline_pairs = offline_pairs
        self._offline_ref: tuple[Tensor, Tensor] | None = None
        value_params = list(policy.value_head.parameters()) if policy.value_head else []
        value_ids = {id(p) for p in value_params}
        self.policy_params = [p for p in policy.trainable_parameters() if id(p) not in value_ids]
        if self.is_trpo:
            self.optimizer = adam(value_params, config.lr, self.device) if value_params else None
        else:
            self.optimizer = adam(policy.trainable_parameters(), config.lr, self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.loss_hook: LossHook | None = None

    # ---- one step --------------------------------------------------------------------
    def step(self, step: int) -> dict[str, float]:
        """One rollout-and-update step; returns float metrics (host sync once, here)."""
        self.policy.train()
        if self.spec.data == "demonstrations":
            metrics = self._demonstration_step(step)
        elif self.spec.data == "preference_pairs":
            metrics = self._offline_pairs_step(step)
        else:
            metrics = self._on_policy_step(step)
        out = step_metrics(metrics, self.config, step)
        self.objective.end_step(out)
        return out

    def _sample(self, step: int, group_size: int) -> Rollout:
        prompts = train_prompts(self.task, self.config, step, group_size)
        self.policy.eval()
        rollout = sample(
            self.policy,
            self.policy.tokenizer,
            prompts,
            group_size=group_size,
            max_new_tokens=self.task.max_new_tokens,
            temperature=self.config.temperature,
            generator=self.generator,
        )
        self.policy.train()
        return rollout

    def _on_policy_step(self, step: int) -> dict[str, Tensor]:
        spec, cfg = self.spec, self.config
        rollout = self._sample(step, spec.group_size)
        # One forward for old and new log-probs when a single update uses the batch.
        single_update = spec.epochs == 1 and cfg.minibatches == 1 and not self.is_trpo
        need_old = not single_update or cfg.temperature != 1.0
        # Reference log-probs are always needed: the KL-to-reference metric guards divergence.
        scored = score_rollout(self.policy, self.task, rollout, need_old)
        kl_to_ref = sequence_k3(scored.old_logp, scored.ref_logp, rollout.completion_mask).mean()
        if spec.preference is not None:
            metrics = self._online_preference_update(scored)
        else:
            metrics = self._rollout_updates(scored, single_update and not need_old)
        metrics["reward"] = scored.rewards.mean()
        metrics["kl_to_ref"] = kl_to_ref
        metrics["completion_length"] = rollout.completion_mask.sum(-1).float().mean()
        return metrics

    def _rollout_updates(self, scored: ScoredRollout, old_is_new: bool) -> dict[str, Tensor]:
        spec, cfg = self.spec, self.config
        full = rollout_batch(scored, scored.old_logp, None, False)
        returns = critic_returns(self.objective, full) if self.uses_critic else None
        if self.is_trpo:
            return self._trpo_update(scored, returns)
        # Group and batch statistics must not depend on how the batch is split.
        advantages = self.objective.advantages(full) if cfg.minibatches > 1 else None
        metrics: dict[str, Tensor] = {}
        size = scored.rewards.shape[0]
        for _ in range(spec.epochs):
            if cfg.minibatches == 1:
                chunks = [torch.arange(size, device=self.device)]
            else:
                order = torch.randperm(size, generator=self.generator, device=self.device)
                chunks = list(order.chunk(cfg.minibatches))
            for chunk in chunks:
                part = scored if cfg.minibatches == 1 else scored.select(chunk)
                out = completion_logprobs(self.policy, part.rollout)
                batch = rollout_batch(part, out.logp, out.entropy, old_is_new)
                if advantages is not None:
                    batch = batch.with_(advantages=advantages[chunk])
                loss, metrics = self.objective(batch)
                if self.loss_hook is not None:
                    self.loss_hook(batch, loss)
                total = loss
                if returns is not None:
                    assert out.values is not None
                    value_loss = critic_loss(
                        out.values, returns[chunk], part.rollout.completion_mask
                    )
                    total = loss + cfg.value_coef * value_loss
                    metrics["value_loss"] = value_loss.detach()
                metrics["grad_norm"] = self._apply(total)
        return metrics

    def _apply(self, loss: Tensor) -> Tensor:
        assert self.optimizer is not None
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(
            self.policy.trainable_parameters(), self.config.max_grad_norm or float("inf")
        )
        self.optimizer.step()
        return norm.detach()

    def _trpo_update(self, scored: ScoredRollout, returns: Tensor | None) -> dict[str, Tensor]:
        params = self.spec.surrogate.as_kwargs(SURROGATES)
        rollout = scored.rollout
        with torch.no_grad():
            old_dist = self._log_distributions(rollout)
        state: dict[str, Any] = {}

        def loss_fn() -> Tensor:
            out = completion_logprobs(self.policy, rollout)
            batch = rollout_batch(scored, out.logp, out.entropy, False)
            loss, metrics = self.objective(batch)
            state["metrics"] = metrics
            state["entropy"] = out.entropy
            return loss

        def kl_fn() -> Tensor:
            new = self._log_distributions(rollout)
            kl = (old_dist.exp() * (old_dist - new)).sum(-1)
            return masked_mean(kl, rollout.completion_mask)

        # Fisher-vector products differentiate twice; only the math attention kernel can.
        with sdpa_kernel(SDPBackend.MATH):
            result = trpo_step(
                self.policy_params, loss_fn, kl_fn, params["max_kl"], params["damping"]
            )
        metrics = dict(state["metrics"])
        metrics.update({k: torch.tensor(v) for k, v in result.items()})
        metrics["loss"] = torch.tensor(result["loss_before"])
        if returns is not None and self.optimizer is not None:
            out = completion_logprobs(self.policy, rollout)
            assert out.values is not None
            value_loss = critic_loss(out.values, returns, scored.rollout.completion_mask)
            self.optimizer.zero_grad(set_to_none=True)
            value_loss.backward()
            self.optimizer.step()
            self.policy.zero_grad(set_to_none=True)
            metrics["value_loss"] = value_loss.detach()
        return metrics

    def _log_distributions(self, rollout: Rollout) -> Tensor:
        """[B, T, V] log-softmax of the next-token distributions at the completion positions."""
        t = rollout.completion_ids.shape[1]
        mask = rollout.attention_mask
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        logits, _, _ = self.policy.run_lm(rollout.input_ids, mask, positions, logits_to_keep=t + 1)
        return F.log_softmax(logits[:, :-1].float(), dim=-1)

    def _online_preference_update(self, scored: ScoredRollout) -> dict[str, Tensor]:
        assert self.spec.preference is not None
        chosen, rejected = online_pairs(
            scored.rewards, scored.rollout.group_ids, self.spec.preference.pairing
        )
        if chosen.numel() == 0:
            return no_pair_metrics(self.device)
        metrics: dict[str, Tensor] = {}
        for _ in range(self.spec.epochs):
            out = completion_logprobs(self.policy, scored.rollout)
            pairs, loss, metrics = online_preference_loss(
                self.objective, scored, out.logp, out.entropy, chosen, rejected
            )
            if self.loss_hook is not None:
                self.loss_hook(pairs, loss)
            metrics["grad_norm"] = self._apply(loss)
        return metrics

    def _demonstration_step(self, step: int) -> dict[str, Tensor]:
        demos = self.task.demonstrations(
            "train", self.config.batch_size, _step_seed(self.config.seed, step, 2)
        )
        rollout = encode_pairs(
            self.policy.tokenizer, [p for p, _ in demos], [c for _, c in demos], device=self.device
        )
        ref_logp = None
        if self.spec.kl.active:
            with torch.no_grad():
                ref_logp = completion_logprobs(self.policy, rollout, reference=True).logp
        metrics: dict[str, Tensor] = {}
        for _ in range(self.spec.epochs):
            out = completion_logprobs(self.policy, rollout)
            batch = RolloutBatch(
                logp=out.logp,
                old_logp=out.logp.detach(),
                ref_logp=out.logp.detach() if ref_logp is None else ref_logp,
                mask=rollout.completion_mask,
                rewards=torch.ones(len(demos), device=self.device),
                group_ids=rollout.group_ids,
                entropy=out.entropy,
            )
            loss, metrics = self.objective(batch)
            if self.loss_hook is not None:
                self.loss_hook(batch, loss)
            metrics["grad_norm"] = self._apply(loss)
        return metrics

    def _offline_pairs_step(self, step: int) -> dict[str, Tensor]:
        pairs = self.offline_pairs
        assert pairs is not None
        if self._offline_ref is None:
            self._offline_ref = reference_pair_logps(self.policy, pairs)
        rollout, index = offline_pairs_rollout(
            self.policy.tokenizer, pairs, self.config, step, self.device
        )
        ref_chosen, ref_rejected = (r[index].to(self.device) for r in self._offline_ref)
        metrics: dict[str, Tensor] = {}
        for _ in range(self.spec.epochs):
            out = completion_logprobs(self.policy, rollout)
            batch = offline_preference_batch(
                out.logp, rollout.completion_mask, ref_chosen, ref_rejected
            )
            loss, metrics = self.objective(batch)
            if self.loss_hook is not None:
                self.loss_hook(batch, loss)
            metrics["grad_norm"] = self._apply(loss)
            metrics["entropy"] = masked_mean(out.entropy.detach(), rollout.completion_mask)
        return metrics

    # ---- evaluation ------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> EvalReport:
        """Greedy held-out reward and accuracy; sampled per-sequence KL to the reference."""
        self.policy.eval()
        tok, n_new = self.policy.tokenizer, self.task.max_new_tokens

        def generate(prompts: list[str]) -> list[str]:
            return sample(self.policy, tok, prompts, 1, n_new, greedy=True).texts

        result = self.task.evaluate(generate, n=self.config.eval_prompts, seed=self.config.seed)
        prompts = self.task.prompts("eval", self.config.eval_prompts, self.config.seed)
        generator = eval_generator(self.config, self.device)
        rollout = sample(self.policy, tok, prompts, 1, n_new, generator=generator)
        kl = float(sequence_kl_to_ref(self.policy, rollout).mean())
        self.policy.train()
        return EvalReport(reward=result.reward, accuracy=result.accuracy, kl_to_ref=kl)


@torch.no_grad()
def reference_pair_logps(policy: Policy, pairs: OfflinePairs) -> tuple[Tensor, Tensor]:
    """Reference log-prob sums [N] of every chosen and rejected completion (on the CPU),
    computed once per run in chunks of 256."""
    out: list[Tensor] = []
    for texts in (pairs.chosen, pairs.rejected):
        sums = []
        for start in range(0, len(texts), 256):
            rollout = encode_pairs(
                policy.tokenizer,
                pairs.prompts[start : start + 256],
                texts[start : start + 256],
                device=policy.device,
            )
            logp = completion_logprobs(policy, rollout, reference=True).logp
            sums.append(sequence_sums(logp, rollout.completion_mask)[0].cpu())
        out.append(torch.cat(sums))
    return out[0], out[1]


def offline_pairs_rollout(
    tokenizer: TextTokenizer,
    pairs: OfflinePairs,
    config: TrainConfig,
    step: int,
    device: torch.device,
) -> tuple[Rollout, Tensor]:
    """Step ``step``'s n = ``min(max(1, batch_size // 2), len(pairs))`` pairs (a seeded draw
    without replacement): their rows [2n] (the n chosen completions, then the n rejected
    ones, after their prompts) and their indices [n] into ``pairs``."""
    n = min(max(1, config.batch_size // 2), len(pairs))
    index = torch.randperm(
        len(pairs), generator=torch.Generator().manual_seed(_step_seed(config.seed, step, 3))
    )[:n]
    rows = index.tolist()
    prompts = [pairs.prompts[i] for i in rows]
    texts = [pairs.chosen[i] for i in rows] + [pairs.rejected[i] for i in rows]
    return encode_pairs(tokenizer, prompts + prompts, texts, device=device), index


def offline_preference_batch(
    logp: Tensor, mask: Tensor, ref_chosen: Tensor, ref_rejected: Tensor
) -> PreferenceBatch:
    """The `PreferenceBatch` of `offline_pairs_rollout`'s rows: per-token ``logp`` and
    ``mask`` [2n, T] (chosen rows first), reference sums ``ref_chosen``, ``ref_rejected`` [n]."""
    n = ref_chosen.shape[0]
    seq, length = sequence_sums(logp, mask)
    return PreferenceBatch(
        chosen_logp=seq[:n],
        rejected_logp=seq[n:],
        ref_chosen_logp=ref_chosen,
        ref_rejected_logp=ref_rejected,
        chosen_len=length[:n],
        rejected_len=length[n:],
    )


def sample_offline_pairs(policy: Policy, task: Task, config: TrainConfig) -> OfflinePairs:
    """``config.offline_pairs`` prompts, two reference samples each, labelled by the task."""
    prompts = task.prompts("train", config.offline_pairs, _step_seed(config.seed, -1, 4))
    generator = torch.Generator(device=policy.device).manual_seed(config.seed + 4)
    policy.eval()
    with policy.reference():
        rollout = sample(
            policy, policy.tokenizer, prompts, 2, task.max_new_tokens, generator=generator
        )
    return label_pairs(task, rollout, config.seed)


def elapsed(start: float) -> float:
    return time.perf_counter() - start
