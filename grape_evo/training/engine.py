"""The training engine: M >= 1 members trained in lockstep; training one objective is M = 1.

Every member starts from the warm start of its seed (a copy of that policy's trainable tensors)
and has its own objective, learning rate, Adam state, objective state (EMA baselines, adaptive
KL) and status; all share the task and the `TrainConfig` but its seed. Members of one seed share
that seed's frozen reference and data streams; members of several seeds (a candidate's runs on
several seeds in one population) train side by side as each would alone on its seed. A member
whose critic is ``separate`` also has a value model of its own (a copy of the warm start with a
value head).
One step::

    batches   = per member, by its data kind (`grape_evo.training.batches`): on-policy members
                sample in one lockstep decode over [M, B] from their own weights (a member with
                ``staleness`` s trains on the batch it sampled s steps earlier); demonstration
                and offline-pair members read the step's rows
    fixed     = under no_grad: reference log-probs (one pass over the distinct rows of every
                member), old log-probs and critic values where an update needs them, critic
                returns, whole-batch advantages (minibatches), online preference pairs
    trust     = members whose surrogate is tagged ``trust_region``: one batched TRPO step
    update k  = the members with more than k updates (epochs x minibatches), in one forward and
                one backward of sum_m loss_m (members share no parameters, so d loss / d W_m is
                member m's own); per-member gradient clipping; Adam per member (elementwise:
                members of one learning rate share a parameter group; a member without a
                gradient in an update is skipped, its moments untouched)
    after     = members tagged ``kl_after_update``: KL(old || new) after the last update

Every weight set (the members' policies, then their separate critics) is a row of one
`WeightBank`: the forward reads the rows of a call's sets, with no per-member stacking, and
the backward fills the bank's gradients, whose rows are each set's own gradients; Adam, the
clipping and TRPO's step work on each set's leaves, which alias its rows.

A member whose step diverges (non-finite loss or gradient norm, KL to the reference above
``max_kl_to_ref``) stops there; so does one its caller stops (`Engine.stop`); the others go on.
Member i sees what it would see alone, up to float rounding: the same prompts, the same random
numbers (`grape_evo.policy.streams`), the same loss.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch
from torch import Tensor, nn

from grape_evo.objective import KL_AFTER_UPDATE, SURROGATES, Objective, build_objective
from grape_evo.objective.surrogates import old_to_new_kl
from grape_evo.policy import (
    Policy,
    Rollout,
    TokenOutputs,
    Weights,
    forward_for,
    policy_weights,
    rows_of,
    stream_key,
)
from grape_evo.policy.forward import VALUE_KEYS
from grape_evo.policy.precision import with_precision
from grape_evo.policy.streams import permutation
from grape_evo.policy.weight_bank import WeightBank
from grape_evo.tasks import Task
from grape_evo.training.batches import (
    MemberBatch,
    OfflinePairs,
    demonstration_batch,
    offline_pair_batch,
    online_pairs,
    reference_logps,
    reference_pair_sums,
    sample_members,
    slice_rollout,
)
from grape_evo.training.config import TrainConfig
from grape_evo.training.evaluation import evaluate
from grape_evo.training.losses import (
    LossHook,
    critic_returns,
    full_batch,
    member_loss,
    needs_critic,
    needs_kl_after_update,
    needs_trust_region,
    separate_critic,
    sequence_k3,
)
from grape_evo.training.members import (
    Member,
    adam,
    by_seed,
    check_members,
    clip_grad_norms_,
    frozen_copy,
    seed_configs,
)
from grape_evo.training.records import EvalReport, RunStatus, divergence
from grape_evo.training.trpo import trust_region_members

Metrics = dict[str, Tensor]


class Engine:
    """Trains ``members`` on ``task`` from ``policy`` (its frozen reference included); the
    policy's own weights are copied, never changed (see `export`).

    Members of several seeds: ``policy`` (and ``offline_pairs``) map each member's seed to its
    warm start (and its pairs); the forward is built from the first member's. Their references
    are scored as explicit weights, so every policy must be fully fine-tuned (a LoRA adapter
    would need its own seed's base weights in the forward)."""

    def __init__(
        self,
        members: Sequence[Member],
        task: Task,
        config: TrainConfig,
        policy: Policy | Mapping[int, Policy],
        offline_pairs: OfflinePairs | Mapping[int, OfflinePairs] | None = None,
    ) -> None:
        self.specs = [m.spec.canonical() for m in members]
        self.objectives: list[Objective] = [build_objective(spec) for spec in self.specs]
        self.critics = [needs_critic(o) for o in self.objectives]
        self.trust = [needs_trust_region(o) for o in self.objectives]
        self.seeds, self.configs = seed_configs(members, config)
        policies = by_seed(policy, config.seed)
        pairs = {} if offline_pairs is None else by_seed(offline_pairs, config.seed)
        check_members(members, self.seeds, self.critics, policies, pairs)
        first = policies[self.seeds[0]]
        self.task, self.config, self.policy = task, config, first
        self.tokenizer, self.device = first.tokenizer, first.device
        stacks = len(members) > 1 or any(map(separate_critic, self.objectives))
        self.forward = with_precision(forward_for(first, stacks), config.precision, self.device)
        self.logprob_temperature = config.temperature if config.temper_logprobs else 1.0
        # the first seed's reference is the forward's own; the others' are their warm starts
        self.references: dict[int, Weights | None] = {
            seed: None if seed == self.seeds[0] else frozen_copy(policies[seed])
            for seed in self.configs
        }
        self.offline_pairs = pairs
        self._offline_ref: dict[int, tuple[Tensor, Tensor]] = {}
        self._eval_prompts: list[str] | None = None
        self._pending: list[dict[int, MemberBatch]] = [{} for _ in members]
        sets, critic_sets = [], []
        self._critic_set: dict[int, int] = {}
        for i, (objective, seed) in enumerate(zip(self.objectives, self.seeds, strict=True)):
            base = policy_weights(policies[seed])
            head = needs_critic(objective) and not separate_critic(objective)
            sets.append({n: p for n, p in base.items() if head or n not in VALUE_KEYS})
            if separate_critic(objective):
                self._critic_set[i] = len(members) + len(critic_sets)
                critic_sets.append(base)
        self.bank = WeightBank(sets + critic_sets)
        self.weights: list[dict[str, nn.Parameter]] = self.bank.sets[: len(members)]
        self.critic_weights: list[dict[str, nn.Parameter] | None] = [
            self.bank.sets[self._critic_set[i]] if i in self._critic_set else None
            for i in range(len(members))
        ]
        self.status = [(RunStatus.OK, "") for _ in members]
        self.adam_params = [self._adam_params(i) for i in range(len(members))]
        self.optimizer = adam(self.adam_params, [m.lr for m in members], self.device)
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
        """What Adam trains of member i: its policy tensors (only its value head when a
        trust-region step trains the policy) and its separate critic's."""
        own = [p for n, p in self.weights[i].items() if not self.trust[i] or n in VALUE_KEYS]
        return own + list((self.critic_weights[i] or {}).values())

    def _weight_sets(self, members: list[int], critics: bool = True) -> list[int]:
        """The bank's weight sets of ``members``: their policies in order, then (with
        ``critics``) the separate critics of those that have one, in the same order."""
        own = [self._critic_set[i] for i in members if i in self._critic_set] if critics else []
        return members + own

    def member_state(self, i: int) -> dict[str, Tensor]:
        """A copy of member i's current policy tensors by parameter name."""
        return {name: p.detach().clone() for name, p in self.weights[i].items()}

    def export(self, i: int, policy: Policy) -> None:
        """Copy member i's policy tensors into ``policy`` (e.g. to save the trained weights)."""
        target = policy_weights(policy)
        with torch.no_grad():
            for name, p in self.weights[i].items():
                target[name].copy_(p)

    def _outputs(
        self,
        members: list[int],
        rollouts: list[Rollout],
        values: bool = True,
        full: bool = False,
        leaves: bool = False,
    ) -> list[TokenOutputs]:
        """Each member's outputs on its rollout, cut to its own [B, T], in one forward: its
        policy's, with ``values`` from its value head or its separate critic (which joins the
        forward as one more weight set on the same rows). The forward reads the weight bank;
        with ``leaves`` it stacks each set's own leaves instead (for gradients with respect
        to those, as TRPO takes them)."""
        critics = [j for j, i in enumerate(members) if values and i in self._critic_set]
        weights = self.bank.rows(self._weight_sets(members, values))
        rows = rows_of(rollouts + [rollouts[j] for j in critics], self.tokenizer.pad_id)
        out = self.forward.score(
            rows, list(weights) if leaves else weights, full, self.logprob_temperature
        )
        critic_of = {j: len(members) + k for k, j in enumerate(critics)}
        cut = []
        for j, rollout in enumerate(rollouts):
            b, t = rollout.completion_mask.shape
            own = TokenOutputs(*(None if x is None else x[j, :b, :t] for x in out))
            source = critic_of.get(j, j)
            value = None if out.values is None or not values else out.values[source, :b, :t]
            cut.append(own._replace(values=value if self.critics[members[j]] else None))
        return cut

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
        with torch.no_grad():
            self._kl_after_update(live, batches, metrics)
        for i in live:
            results[i] = self._finish(i, {**metrics[i], **batches[i].metrics}, step)
        return results

    def _collect(self, step: int, live: list[int]) -> dict[int, MemberBatch]:
        """Each live member's batch of ``step``. On-policy members draw, in one decode, the
        batch of step ``step + staleness`` (and at step 0 also those of steps 0 .. staleness
        - 1, all from the warm start), and train on the one of ``step``."""
        device = self.device
        draws = [
            (i, target)
            for i in live
            if self.specs[i].data == "on_policy"
            for target in range(step, step + self.specs[i].staleness + 1)
            if target not in self._pending[i]
        ]
        if draws:
            drawn = sample_members(
                self.forward,
                self.bank.rows([i for i, _ in draws]),
                self.tokenizer,
                self.task,
                [self.configs[self.seeds[i]] for i, _ in draws],
                [target for _, target in draws],
                [self.specs[i] for i, _ in draws],
                self.policy.max_length,
                device,
            )
            for (i, target), batch in zip(draws, drawn, strict=True):
                self._pending[i][target] = batch
        batches = {i: self._pending[i].pop(step) for i in live if step in self._pending[i]}
        shared: dict[tuple[str, int], MemberBatch] = {}
        for i in live:
            seed, data = self.seeds[i], self.specs[i].data
            cfg, kind = self.configs[seed], (data, seed)
            if data == "demonstrations" and kind not in shared:
                shared[kind] = demonstration_batch(self.tokenizer, self.task, cfg, step, device)
            elif data == "preference_pairs" and kind not in shared:
                pairs, sums = self.offline_pairs[seed], self._reference_pair_sums(seed)
                shared[kind] = offline_pair_batch(self.tokenizer, pairs, sums, cfg, step, device)
            if kind in shared:
                batches[i] = replace(shared[kind], metrics={})
        return batches

    def _reference_pair_sums(self, seed: int) -> tuple[Tensor, Tensor]:
        """The reference's log-prob sums of a seed's offline pairs (computed on first use)."""
        if seed not in self._offline_ref:
            self._offline_ref[seed] = reference_pair_sums(
                self.forward,
                self.tokenizer,
                self.offline_pairs[seed],
                self.logprob_temperature,
                self.device,
                self.references[seed],
            )
        return self._offline_ref[seed]

    def _fix(self, step: int, live: list[int], batches: dict[int, MemberBatch]) -> None:
        """Everything that stays fixed during the step's updates (see the module docstring).

        One update on a fresh batch (epochs 1, minibatches 1, no staleness, no trust region)
        uses its own detached log-probs as the old ones: the ratio is exactly 1. Several updates
        use the log-probs of a no-grad forward before the first; a stale batch uses its
        sampling log-probs, those of the policy that drew it."""
        on_policy = [i for i in live if self.specs[i].data == "on_policy"]
        need_ref = on_policy + [
            i for i in live if self.specs[i].data == "demonstrations" and self.specs[i].kl.active
        ]
        refs = reference_logps(
            self.forward,
            [batches[i].rollout for i in need_ref],
            [self.references[self.seeds[i]] for i in need_ref],
            self.tokenizer.pad_id,
            self.logprob_temperature,
        )
        for i, ref in zip(need_ref, refs, strict=True):
            batches[i].ref_logp = ref
        for i in on_policy:
            spec = self.specs[i]
            batches[i].old_is_new = (
                spec.epochs == spec.minibatches == 1 and not spec.staleness and not self.trust[i]
            )
        rescore = [
            i
            for i in on_policy
            if self.critics[i] or not (batches[i].old_is_new or self.specs[i].staleness)
        ]
        if rescore:
            outs = self._outputs(rescore, [batches[i].rollout for i in rescore])
            for i, out in zip(rescore, outs, strict=True):
                if not (batches[i].old_is_new or self.specs[i].staleness):
                    batches[i].old_logp = out.logp
                batches[i].old_values = out.values
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

    def _plan(self, step: int, i: int, batch: MemberBatch) -> None:
        """Critic returns, advantages, preference pairs and the rows of each update."""
        spec, objective = self.specs[i], self.objectives[i]
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
        if spec.minibatches == 1 or batch.pairs is not None:
            batch.updates = [None] * spec.epochs
            return
        # Group and batch statistics must not depend on how the batch is split.
        batch.advantages = objective.advantages(full_batch(batch))
        key = stream_key(self.seeds[i], step, "minibatch")
        size = batch.rewards.shape[0]
        for epoch in range(spec.epochs):
            order = permutation(key, size, epoch, self.device)
            batch.updates.extend(order.chunk(spec.minibatches))

    def _train(self, live: list[int], batches: dict[int, MemberBatch]) -> dict[int, Metrics]:
        metrics: dict[int, Metrics] = {i: {} for i in live}
        trust = [i for i in live if self.trust[i]]
        if trust:
            metrics.update(self._trust_region(trust, batches))
        budget = self.task.max_new_tokens
        for k in range(max(len(batches[i].updates) for i in live)):
            active = [i for i in live if len(batches[i].updates) > k]
            subsets = [batches[i].updates[k] for i in active]
            parts = [
                batches[i].rollout if r is None else slice_rollout(batches[i].rollout, r)
                for i, r in zip(active, subsets, strict=True)
            ]
            self.bank.bind_grads(self._weight_sets(active))
            outs = self._outputs(active, parts)
            losses = []
            for i, rows, out in zip(active, subsets, outs, strict=True):
                loss, member_metrics = member_loss(
                    i,
                    self.objectives[i],
                    batches[i],
                    rows,
                    out,
                    budget,
                    policy_loss=not self.trust[i],
                    hook=self.loss_hook,
                )
                metrics[i].update(member_metrics)
                losses.append(loss)
            torch.stack(losses).sum().backward()
            max_norm = self.config.max_grad_norm or math.inf
            norms = clip_grad_norms_([self.adam_params[i] for i in active], max_norm)
            for i, norm in zip(active, norms.detach(), strict=True):
                metrics[i]["grad_norm"] = norm
            self.optimizer.step()
        return metrics

    def _trust_region(
        self, members: list[int], batches: dict[int, MemberBatch]
    ) -> dict[int, Metrics]:
        """One batched TRPO step of ``members`` on their whole batches."""
        rollouts = [batches[i].rollout for i in members]
        state: dict[int, Metrics] = {}

        def losses(outs: list[TokenOutputs]) -> Tensor:
            values = []
            for i, out in zip(members, outs, strict=True):
                budget = self.task.max_new_tokens
                loss, state[i] = member_loss(i, self.objectives[i], batches[i], None, out, budget)
                values.append(loss)
            return torch.stack(values)

        settings = [self.specs[i].surrogate.as_kwargs(SURROGATES) for i in members]
        result = trust_region_members(
            lambda full: self._outputs(members, rollouts, values=False, full=full, leaves=True),
            losses,
            [r.completion_mask for r in rollouts],
            [[p for n, p in self.weights[i].items() if n not in VALUE_KEYS] for i in members],
            torch.tensor([s["max_kl"] for s in settings], device=self.device),
            torch.tensor([s["damping"] for s in settings], device=self.device),
        )
        return {
            i: {
                **state[i],
                **{k: v[j] for k, v in result.items()},
                "loss": result["loss_before"][j],
            }
            for j, i in enumerate(members)
        }

    def _kl_after_update(
        self, live: list[int], batches: dict[int, MemberBatch], metrics: dict[int, Metrics]
    ) -> None:
        """`KL_AFTER_UPDATE` for the members whose surrogate adapts to it: KL(old || new) on
        the batch, with the weights after the step's last update."""
        members = [
            i
            for i in live
            if needs_kl_after_update(self.objectives[i]) and self.specs[i].data == "on_policy"
        ]
        if not members:
            return
        outs = self._outputs(members, [batches[i].rollout for i in members], values=False)
        for i, out in zip(members, outs, strict=True):
            batch = batches[i]
            metrics[i][KL_AFTER_UPDATE] = old_to_new_kl(out.logp, batch.old_logp, batch.mask)

    def _finish(self, i: int, metrics: Metrics, step: int) -> dict[str, float]:
        """Member i's float metrics (the step's one host sync); a diverged member stops."""
        out = {k: float(v) for k, v in metrics.items()}
        if reason := divergence(out, step, self.config.max_kl_to_ref):
            self.stop(i, RunStatus.DIVERGED, reason)
        else:
            self.objectives[i].end_step(out)
        return out

    # ---- evaluation -----------------------------------------------------------------------
    def evaluate(self, members: Sequence[int] | None = None) -> list[EvalReport | None]:
        """Per member (default: the live ones; None for the others), its held-out evaluation
        on the task's fixed evaluation set (`grape_evo.training.evaluation`)."""
        chosen = self.live if members is None else list(members)
        reports: list[EvalReport | None] = [None] * len(self.specs)
        if not chosen:
            return reports
        if self._eval_prompts is None:
            self._eval_prompts = self.task.eval_set(self.config.eval_prompts)
        found = evaluate(
            self.forward,
            self.bank.rows(chosen),
            self.tokenizer,
            self.task,
            self._eval_prompts,
            self.config,
            self.policy.max_length,
            self.device,
            [self.seeds[i] for i in chosen],
            [self.references[self.seeds[i]] for i in chosen],
        )
        for i, report in zip(chosen, found, strict=True):
            reports[i] = report
        return reports
