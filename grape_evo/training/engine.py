"""The training engine: M >= 1 members trained in lockstep; training one objective is M = 1.

Every member starts from the same warm start (a copy of the policy's trainable tensors) and has
its own objective, learning rate, Adam state, objective state (EMA baselines, adaptive KL) and
status; all share the task, the `TrainConfig` and the frozen reference. One step::

    batches   = per member, by its data kind (`grape_evo.training.batches`): on-policy members
                sample in one lockstep decode over [M, B] from their own weights; demonstration
                and offline-pair members read the step's rows
    fixed     = under no_grad: reference log-probs (one pass over the distinct rows of every
                member), old log-probs and critic values where an update needs them, critic
                returns, whole-batch advantages (minibatches), online preference pairs
    trust     = members whose surrogate is tagged ``trust_region``: one batched TRPO step
    update k  = the members with more than k updates (epochs x minibatches), in one forward and
                one backward of sum_m loss_m (members share no parameters, so d loss / d W_m is
                member m's own); per-member gradient clipping; Adam with one parameter group
                per member (Adam is elementwise: P groups are P separate Adams; a member without
                a gradient in an update is skipped, its moments untouched)

A member whose step diverges (non-finite loss or gradient norm, KL to the reference above
``max_kl_to_ref``) stops there; so does one its caller stops (`Engine.stop`); the others go on.
Member i sees what it would see alone, up to float rounding: the same prompts, the same random
numbers (`grape_evo.policy.streams`), the same loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from grape_evo.objective import SURROGATES, Objective, build_objective
from grape_evo.objective.aggregation import masked_mean
from grape_evo.objective.spec import ObjectiveSpec
from grape_evo.policy import (
    Policy,
    Rollout,
    TokenOutputs,
    Weights,
    decode,
    encode_pairs,
    forward_for,
    policy_weights,
    rows_of,
    stream_key,
)
from grape_evo.policy.forward import VALUE_KEYS
from grape_evo.policy.streams import permutation
from grape_evo.tasks import Task
from grape_evo.training.batches import (
    MemberBatch,
    OfflinePairs,
    demonstration_batch,
    offline_pair_batch,
    online_pairs,
    sample_members,
    sequence_sums,
    slice_rollout,
)
from grape_evo.training.config import TrainConfig
from grape_evo.training.losses import (
    LossHook,
    critic_returns,
    full_batch,
    member_loss,
    needs_critic,
    needs_trust_region,
    sequence_k3,
)
from grape_evo.training.records import EvalReport, RunStatus
from grape_evo.training.trpo import trust_region_step

Metrics = dict[str, Tensor]


@dataclass(frozen=True)
class Member:
    """One objective to train and its learning rate."""

    spec: ObjectiveSpec
    lr: float


def adam(params: list[dict[str, object]], device: torch.device) -> torch.optim.Adam:
    """Adam over parameter groups; the fused kernel on CPU and CUDA."""
    return torch.optim.Adam(params, fused=device.type in ("cpu", "cuda"))


class Engine:
    """Trains ``members`` on ``task`` from ``policy`` (its frozen reference included); the
    policy's own weights are copied, never changed (see `export`)."""

    def __init__(
        self,
        members: Sequence[Member],
        task: Task,
        config: TrainConfig,
        policy: Policy,
        offline_pairs: OfflinePairs | None = None,
    ) -> None:
        if not members:
            raise ValueError("the engine needs at least one member")
        for i, member in enumerate(members):
            if not (math.isfinite(member.lr) and member.lr >= 0):
                raise ValueError(f"member {i}: lr {member.lr!r} is not a finite number >= 0")
        self.specs = [m.spec.canonical() for m in members]
        self.objectives: list[Objective] = [build_objective(spec) for spec in self.specs]
        self.critics = [needs_critic(o) for o in self.objectives]
        self.trust = [needs_trust_region(o) for o in self.objectives]
        if any(self.critics) and policy.value_head is None:
            raise ValueError("a critic advantage needs the policy's value head (value_head=True)")
        if any(s.data == "preference_pairs" for s in self.specs) and offline_pairs is None:
            raise ValueError("data 'preference_pairs' needs offline pairs")
        self.task, self.config, self.policy = task, config, policy
        self.tokenizer, self.device = policy.tokenizer, policy.device
        self.forward = forward_for(policy)
        self.offline_pairs = offline_pairs
        self._offline_ref: tuple[Tensor, Tensor] | None = None
        base = policy_weights(policy)
        self.weights: list[dict[str, nn.Parameter]] = [
            {
                name: nn.Parameter(p.detach().clone())
                for name, p in base.items()
                if critic or name not in VALUE_KEYS
            }
            for critic in self.critics
        ]
        self.status = [(RunStatus.OK, "") for _ in members]
        groups = [
            {"params": self._adam_params(i), "lr": m.lr}
            for i, m in enumerate(members)
            if self._adam_params(i)
        ]
        self.optimizer = adam(groups, self.device)
        self.loss_hook: LossHook | None = None

    # ---- members --------------------------------------------------------------------------
    @property
    def live(self) -> list[int]:
        """Indices of the members still training."""
        return [i for i, (status, _) in enumerate(self.status) if status == RunStatus.OK]

    def stop(self, i: int, status: RunStatus, reason: str) -> None:
        """Stop training member i (it keeps its weights; later steps skip it)."""
        self.status[i] = (status, reason)

    def _adam_params(self, i: int) -> list[nn.Parameter]:
        """What Adam trains of member i: all its tensors, or only its value head when a
        trust-region step trains the policy."""
        return [p for n, p in self.weights[i].items() if not self.trust[i] or n in VALUE_KEYS]

    def member_state(self, i: int) -> dict[str, Tensor]:
        """A copy of member i's current tensors by parameter name."""
        return {name: p.detach().clone() for name, p in self.weights[i].items()}

    def export(self, i: int, policy: Policy) -> None:
        """Copy member i's tensors into ``policy`` (e.g. to save the trained weights)."""
        target = policy_weights(policy)
        with torch.no_grad():
            for name, p in self.weights[i].items():
                target[name].copy_(p)

    # ---- one step -------------------------------------------------------------------------
    def step(self, step: int) -> list[dict[str, float] | None]:
        """One step of every live member; per member its float metrics (the objective's from
        its last update, ``loss``, ``grad_norm``; on-policy also ``reward``, ``kl_to_ref``,
        ``completion_length``), None for a member that stopped earlier. A member whose metrics
        diverge gets them returned and stops."""
        live = self.live
        results: list[dict[str, float] | None] = [None] * len(self.specs)
        if not live:
            return results
        batches = self._collect(step, live)
        with torch.no_grad():
            self._fix(step, live, batches)
        metrics = self._train(live, batches)
        for i in live:
            results[i] = self._finish(i, {**metrics[i], **batches[i].metrics}, step)
        return results

    def _collect(self, step: int, live: list[int]) -> dict[int, MemberBatch]:
        cfg, device = self.config, self.device
        batches: dict[int, MemberBatch] = {}
        sampled = [i for i in live if self.specs[i].data == "on_policy"]
        if sampled:
            drawn = sample_members(
                self.forward,
                [self.weights[i] for i in sampled],
                self.tokenizer,
                self.task,
                cfg,
                step,
                [self.specs[i] for i in sampled],
                self.policy.max_length,
                device,
            )
            batches.update(zip(sampled, drawn, strict=True))
        shared: dict[str, MemberBatch] = {}
        for i in live:
            data = self.specs[i].data
            if data == "demonstrations" and data not in shared:
                shared[data] = demonstration_batch(self.tokenizer, self.task, cfg, step, device)
            elif data == "preference_pairs" and data not in shared:
                assert self.offline_pairs is not None
                pairs, sums = self.offline_pairs, self._reference_pair_sums()
                shared[data] = offline_pair_batch(self.tokenizer, pairs, sums, cfg, step, device)
            if data in shared:
                batches[i] = replace(shared[data], metrics={})
        return batches

    def _reference_pair_sums(self) -> tuple[Tensor, Tensor]:
        """The reference's log-prob sums [N] of every offline pair's chosen and rejected
        completion, computed once per run in chunks of 256."""
        if self._offline_ref is None:
            assert self.offline_pairs is not None
            pairs, sums = self.offline_pairs, []
            for texts in (pairs.chosen, pairs.rejected):
                parts = []
                for start in range(0, len(texts), 256):
                    chunk = slice(start, start + 256)
                    rollout = encode_pairs(
                        self.tokenizer, pairs.prompts[chunk], texts[chunk], device=self.device
                    )
                    with torch.no_grad():
                        out = self.forward.score(rows_of([rollout], self.tokenizer.pad_id), None)
                    parts.append(sequence_sums(out.logp[0], rollout.completion_mask)[0])
                sums.append(torch.cat(parts))
            self._offline_ref = (sums[0], sums[1])
        return self._offline_ref

    def _fix(self, step: int, live: list[int], batches: dict[int, MemberBatch]) -> None:
        """Everything that stays fixed during the step's updates (see the module docstring)."""
        cfg = self.config
        on_policy = [i for i in live if self.specs[i].data == "on_policy"]
        need_ref = on_policy + [
            i for i in live if self.specs[i].data == "demonstrations" and self.specs[i].kl.active
        ]
        for i, ref in zip(
            need_ref, self._reference_logp([batches[i] for i in need_ref]), strict=True
        ):
            batches[i].ref_logp = ref
        for i in on_policy:
            spec, batch = self.specs[i], batches[i]
            single = spec.epochs == 1 and cfg.minibatches == 1 and not self.trust[i]
            batch.old_is_new = single and cfg.temperature == 1.0
        rescore = [i for i in on_policy if not batches[i].old_is_new or self.critics[i]]
        if rescore:
            out = self.forward.score(
                rows_of([batches[i].rollout for i in rescore], self.tokenizer.pad_id),
                [self.weights[i] for i in rescore],
            )
            for j, i in enumerate(rescore):
                b, t = batches[i].mask.shape
                if not batches[i].old_is_new:
                    batches[i].old_logp = out.logp[j, :b, :t]
                if self.critics[i] and out.values is not None:
                    batches[i].old_values = out.values[j, :b, :t]
        for i in live:
            self._plan(step, i, batches[i])
        for i in on_policy:
            batch = batches[i]
            assert batch.ref_logp is not None
            batch.metrics.update(
                reward=batch.rewards.mean(),
                kl_to_ref=sequence_k3(batch.old_logp, batch.ref_logp, batch.mask).mean(),
                completion_length=batch.mask.sum(-1).float().mean(),
            )

    def _reference_logp(self, batches: list[MemberBatch]) -> list[Tensor]:
        """Each batch's reference log-probs [B, T]: one pass over their distinct rows."""
        if not batches:
            return []
        rows = rows_of([b.rollout for b in batches], self.tokenizer.pad_id)
        distinct, index = rows.distinct()
        logp = self.forward.score(distinct, None).logp[0][index]  # [M, B, T]
        return [logp[j, : b.mask.shape[0], : b.mask.shape[1]] for j, b in enumerate(batches)]

    def _plan(self, step: int, i: int, batch: MemberBatch) -> None:
        """Critic returns, advantages, preference pairs and the rows of each update."""
        spec, objective, cfg = self.specs[i], self.objectives[i], self.config
        if self.critics[i]:
            batch.returns = critic_returns(objective, batch)
        if spec.preference is not None and spec.data == "on_policy":
            batch.pairs = online_pairs(
                batch.rewards, batch.rollout.group_ids, spec.preference.pairing
            )
            if batch.pairs[0].numel() == 0:  # no group has two different rewards: no update
                zero = torch.zeros((), device=self.device)
                batch.metrics.update(loss=zero, pairs=zero, grad_norm=zero)
                return
        if self.trust[i]:
            batch.updates = [None] if self.critics[i] else []
            return
        if cfg.minibatches == 1 or batch.pairs is not None:
            batch.updates = [None] * spec.epochs
            return
        # Group and batch statistics must not depend on how the batch is split.
        batch.advantages = objective.advantages(full_batch(batch))
        key = stream_key(cfg.seed, step, "minibatch")
        size = batch.rewards.shape[0]
        for epoch in range(spec.epochs):
            order = permutation(key, size, epoch, self.device)
            batch.updates.extend(order.chunk(cfg.minibatches))

    def _train(self, live: list[int], batches: dict[int, MemberBatch]) -> dict[int, Metrics]:
        metrics: dict[int, Metrics] = {i: {} for i in live}
        trust = [i for i in live if self.trust[i]]
        if trust:
            metrics.update(self._trust_region(trust, batches))
        for k in range(max(len(batches[i].updates) for i in live)):
            active = [i for i in live if len(batches[i].updates) > k]
            parts = [batches[i].rollout for i in active]
            subsets = [batches[i].updates[k] for i in active]
            parts = [
                p if r is None else slice_rollout(p, r) for p, r in zip(parts, subsets, strict=True)
            ]
            out = self.forward.score(
                rows_of(parts, self.tokenizer.pad_id), [self.weights[i] for i in active]
            )
            losses = []
            for j, (i, part, rows) in enumerate(zip(active, parts, subsets, strict=True)):
                own = _member_outputs(out, j, part.completion_mask.shape)
                loss, member_metrics = member_loss(
                    i,
                    self.objectives[i],
                    batches[i],
                    rows,
                    own,
                    self.config.value_coef,
                    policy_loss=not self.trust[i],
                    hook=self.loss_hook,
                )
                metrics[i].update(member_metrics)
                losses.append(loss)
            torch.stack(losses).sum().backward()
            max_norm = self.config.max_grad_norm or math.inf
            for i in active:
                params = self._adam_params(i)
                metrics[i]["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, max_norm).detach()
            self.optimizer.step()
            # Members left out of the next update must have no gradient: Adam skips them.
            for i in active:
                for p in self.weights[i].values():
                    p.grad = None
        return metrics

    def _trust_region(
        self, members: list[int], batches: dict[int, MemberBatch]
    ) -> dict[int, Metrics]:
        """One batched TRPO step of ``members`` on their whole batches."""
        rows = rows_of([batches[i].rollout for i in members], self.tokenizer.pad_id)
        weights: list[Weights] = [
            {n: p for n, p in self.weights[i].items() if n not in VALUE_KEYS} for i in members
        ]
        with torch.no_grad():
            old = self.forward.score(rows, weights, full=True).log_dist
        assert old is not None
        state: dict[int, Metrics] = {}

        def losses() -> Tensor:
            out = self.forward.score(rows, weights)
            values = []
            for j, i in enumerate(members):
                own = _member_outputs(out, j, batches[i].mask.shape)
                loss, state[i] = member_loss(i, self.objectives[i], batches[i], None, own, 0.0)
                values.append(loss)
            return torch.stack(values)

        def kls() -> Tensor:
            new = self.forward.score(rows, weights, full=True).log_dist
            assert new is not None
            kl = (old.exp() * (old - new)).sum(-1)  # [M, B, T]
            return torch.stack([masked_mean(kl[j], rows.mask[j]) for j in range(len(members))])

        params = [list(w.values()) for w in weights]
        settings = [self.specs[i].surrogate.as_kwargs(SURROGATES) for i in members]
        max_kl = torch.tensor([s["max_kl"] for s in settings], device=self.device)
        damping = torch.tensor([s["damping"] for s in settings], device=self.device)
        # Fisher-vector products differentiate twice; only the math attention kernel can.
        with sdpa_kernel(SDPBackend.MATH):
            result = trust_region_step(params, losses, kls, max_kl, damping)
        return {
            i: {
                **state[i],
                **{k: v[j] for k, v in result.items()},
                "loss": result["loss_before"][j],
            }
            for j, i in enumerate(members)
        }

    def _finish(self, i: int, metrics: Metrics, step: int) -> dict[str, float]:
        """Member i's float metrics (the step's one host sync); a diverged member stops."""
        out = {k: float(v) for k, v in metrics.items()}
        reason = ""
        if not math.isfinite(out.get("loss", 0.0)):
            reason = f"non-finite loss at step {step + 1}"
        elif not math.isfinite(out.get("grad_norm", 0.0)):
            reason = f"non-finite gradient norm at step {step + 1}"
        elif out.get("kl_to_ref", 0.0) > self.config.max_kl_to_ref:
            reason = (
                f"KL to the reference {out['kl_to_ref']:.1f} nats exceeded max_kl_to_ref "
                f"{self.config.max_kl_to_ref:g} at step {step + 1}"
            )
        if reason:
            self.stop(i, RunStatus.DIVERGED, reason)
        else:
            self.objectives[i].end_step(out)
        return out

    # ---- evaluation -----------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, members: Sequence[int] | None = None) -> list[EvalReport | None]:
        """Per member (default: the live ones; None for the others): greedy held-out reward
        and accuracy on ``eval_prompts`` prompts, and the sampled per-sequence KL to the
        reference (k3 summed over tokens, mean over sequences)."""
        chosen = self.live if members is None else list(members)
        reports: list[EvalReport | None] = [None] * len(self.specs)
        if not chosen:
            return reports
        cfg, task = self.config, self.task
        weights = [self.weights[i] for i in chosen]
        prompts = task.prompts("eval", cfg.eval_prompts, cfg.seed)
        each = [prompts] * len(chosen)
        ones = [1] * len(chosen)
        args = (self.tokenizer, each, ones, task.max_new_tokens)
        greedy = decode(
            self.forward, weights, *args, None, 1.0, self.policy.max_length, self.device
        )
        keys = [stream_key(cfg.seed, "eval")] * len(chosen)
        sampled = decode(
            self.forward, weights, *args, keys, 1.0, self.policy.max_length, self.device
        )
        kls = self._sequence_kl(sampled, weights)
        for j, i in enumerate(chosen):
            texts = greedy[j].texts
            result = task.evaluate(
                lambda _prompts, texts=texts: texts, n=cfg.eval_prompts, seed=cfg.seed
            )
            reports[i] = EvalReport(result.reward, result.accuracy, kls[j])
        return reports

    def _sequence_kl(self, rollouts: list[Rollout], weights: list[Weights]) -> list[float]:
        rows = rows_of(rollouts, self.tokenizer.pad_id)
        own = self.forward.score(rows, weights).logp
        distinct, index = rows.distinct()
        ref = self.forward.score(distinct, None).logp[0][index]
        return sequence_k3(own, ref, rows.mask).mean(-1).tolist()


def _member_outputs(out: TokenOutputs, j: int, shape: torch.Size) -> TokenOutputs:
    """Member j's outputs cut to its own rows and completion length ``shape`` (B_j, T_j)."""
    b, t = shape
    return TokenOutputs(*(None if x is None else x[j, :b, :t] for x in out))
