"""Population mode: P candidates trained in lockstep, one batched forward for all of them.

Each member has its own `ObjectiveSpec` (and optionally its own learning rate); all start from
the same warm start and share the `TrainConfig`. Member i sees what a `Trainer` for candidate i
alone sees (same seed): the same prompts (`train_prompts`), its own sampling generator seeded
with ``config.seed`` and drawn exactly as `sample` draws it, the same loss and the same Adam
update, up to float rounding (the batched forward below adds its operations in a different order
than the prefix-tree forward of `fast_gpt2`).

One step for the M live members (stacked weights ``W[m]`` [M, ...], stacked with `torch.stack`
from each member's own parameters, so gradients reach them)::

    rollouts  = lockstep KV-cache sampling, member m from W[m] with generator m on its own
                prompts (its group size: B / group_size_m prompts)                 [M, B, T_m]
    ref_logp  = log pi_ref(completion)     (the shared frozen warm start, no grad) [M, B, T]
    old_logp  = the sampling log-probs (one update at temperature 1), else a no-grad forward
    then, for update k = 0 .. max_m epochs_m - 1, over the members with epochs_m > k:
    logp      = log pi_{W[m]}(completion)  (one forward of all their rows)          [M_k, B, T]
    loss_m    = objective_m(batch_m)       (on member m's rows, its own T_m columns; a
                                            preference loss on pairs inside its groups)
    backward of sum_m loss_m  ->  d loss_m / d W[m] only (members share no parameters)
    grad_m   *= min(1, max_grad_norm / ||grad_m||)   (per member, `clip_grad_norm_`)
    Adam over P parameter groups, group m at lr_m    (= P separate Adams: Adam is elementwise;
                                                      a member without a gradient is skipped)

(T = max_m T_m; shorter completions are padded with mask 0 for the batched passes and cut back
to T_m for the objective, whose aggregation may depend on T; prompts are left-padded to the
longest, `MemberPrompts`.) Every forward runs each member's distinct prompts once on its
weights and the completion tokens on their KV cache.

Restrictions (others raise `PopulationUnsupported`, naming the member): one kind of data for
all: on-policy (RL or online preference pairs; no ``trpo`` surrogate; the same number of
completions per step, `batch_rows`: group sizes, prompts and ``epochs`` may differ) or
offline preference pairs (every member on the same pairs and reference sums, drawn per step
as `Trainer` draws them); ``config.minibatches`` 1; a plain transformers GPT-2 policy
(`fast_gpt2.supports`) with full fine-tuning (no LoRA), and a value head when a member has a
critic advantage (``gae``): each such member trains its own copy of it, with the critic loss
of `Trainer`.

A member whose step diverges (non-finite loss or gradient norm, KL to the reference above
``max_kl_to_ref``) stops training there; the others go on; so does a member stopped by the
caller (`PopulationTrainer.stop`, e.g. pruned). Evaluation (`evaluate`) is greedy on
the held-out prompts for every live member at once, as `Trainer.evaluate` does for one.

Shapes: P members, M live members, B rows (prompts x group size), L = prompt + completion
tokens, H hidden size, V vocabulary, nh heads of size hd = H / nh.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from grape_evo.objective import Objective, build_objective
from grape_evo.objective.aggregation import masked_mean
from grape_evo.objective.spec import ObjectiveSpec
from grape_evo.policy import Policy, Rollout
from grape_evo.policy.fast_gpt2 import GELU_APPROXIMATE, or_self, shared_prompts
from grape_evo.policy.model import position_ids_from_mask, token_logprobs
from grape_evo.policy.sampling import build_rollout, encode_prompts, next_tokens
from grape_evo.policy.tokenizer import TextTokenizer
from grape_evo.tasks import Task
from grape_evo.training.batches import OfflinePairs, ScoredRollout, online_pairs, task_rewards
from grape_evo.training.config import TrainConfig
from grape_evo.training.trainer import (
    Diverged,
    EvalReport,
    adam,
    critic_loss,
    critic_returns,
    eval_generator,
    no_pair_metrics,
    offline_pairs_rollout,
    offline_preference_batch,
    online_preference_loss,
    prompts_per_step,
    reference_pair_logps,
    rollout_batch,
    sequence_k3,
    step_metrics,
    train_prompts,
    uses_critic,
)

Weights = dict[str, Tensor]  # transformers parameter name -> [M, *shape]
KVCache = list[tuple[Tensor, Tensor]]  # per layer: keys, values [M * R, nh, L, hd]
MemberLoss = Callable[[int, Tensor, Tensor, Tensor | None], tuple[Tensor, dict[str, Tensor]]]


# ---------------------------------------------------------------------- the stacked forward


class MemberPrompts(NamedTuple):
    """Each member's distinct prompts ``ids``, ``mask`` [M, N, P] (left-padded) and the prompt
    of each of its R rows, ``rows`` [M, R] long (indices into its N prompts)."""

    ids: Tensor
    mask: Tensor
    rows: Tensor

    @classmethod
    def stack(cls, parts: Sequence[tuple[Tensor, Tensor, Tensor]], pad_id: int) -> MemberPrompts:
        """Stack members' (ids [N_m, P_m], mask, rows [R]) as `fast_gpt2.shared_prompts`
        returns them: prompts are left-padded to the longest (mask 0, which changes neither
        attention nor positions) and members with fewer prompts get fully masked ones that no
        row reads."""
        n = max(ids.shape[0] for ids, _, _ in parts)
        length = max(ids.shape[1] for ids, _, _ in parts)
        ids, masks = [], []
        for part_ids, part_mask, _ in parts:
            pad = (length - part_ids.shape[1], 0, 0, n - part_ids.shape[0])
            ids.append(F.pad(part_ids, pad, value=pad_id))
            masks.append(F.pad(part_mask, pad, value=0))
        return cls(torch.stack(ids), torch.stack(masks), torch.stack([r for _, _, r in parts]))

    def select(self, members: Sequence[int]) -> MemberPrompts:
        """The prompts of ``members`` only (their order)."""
        index = torch.tensor(list(members), device=self.ids.device)
        return MemberPrompts(self.ids[index], self.mask[index], self.rows[index])


@dataclass(frozen=True)
class StackedGPT2:
    """A dense GPT-2 forward (the math of `fast_gpt2`) over M weight sets at once.

    Weights are a dict of transformers' parameter names to tensors with a leading member
    dimension M: linear layers ``x @ W[m] + b[m]`` as one batched matmul [M, R*L, I] @ [M, I, O],
    per-member LayerNorm affine, per-member embedding rows (``wte[m, token]``), attention over
    M * R rows. The LM head is ``wte`` (tied) unless the model has its own ``lm_head.weight``.
    """

    n_layer: int
    n_head: int
    eps: float
    gelu: str
    max_length: int

    @classmethod
    def of(cls, lm: nn.Module) -> StackedGPT2:
        cfg = lm.config
        return cls(
            cfg.n_layer,
            cfg.n_head,
            cfg.layer_norm_epsilon,
            GELU_APPROXIMATE[cfg.activation_function],
            cfg.n_positions,
        )

    def _norm(self, x: Tensor, w: Weights, name: str) -> Tensor:
        """LayerNorm of x [M, R, L, H] with member m's ``name`` weight and bias [M, H]."""
        weight, bias = w[f"{name}.weight"][:, None, None], w[f"{name}.bias"][:, None, None]
        return F.layer_norm(x, x.shape[-1:], eps=self.eps) * weight + bias

    @staticmethod
    def _linear(x: Tensor, w: Weights, name: str) -> Tensor:
        """transformers ``Conv1D`` per member: x [M, R, L, I] @ W [M, I, O] + b [M, O]."""
        m, r, length, width = x.shape
        weight, bias = w[f"{name}.weight"], w[f"{name}.bias"]
        out = torch.baddbmm(bias[:, None], x.reshape(m, r * length, width), weight)
        return out.view(m, r, length, -1)

    def hidden(
        self,
        w: Weights,
        ids: Tensor,
        positions: Tensor,
        key_mask: Tensor,
        past: KVCache | None = None,
    ) -> tuple[Tensor, KVCache]:
        """Final hidden states (before ``ln_f``) of L new tokens, and the extended cache.

        Args:
            ids, positions: [M, R, L] long, the new tokens and their position ids.
            key_mask: [M, R, L_past + L] bool, real (attended) tokens, past then new.
            past: the cache of the L_past earlier tokens, or None.

        A new token at key index k attends to the real keys at indices <= k, or to itself
        when there are none (as in `fast_gpt2`; such tokens are left padding, read by nothing).

        Returns:
            (x [M, R, L, H], cache with L_past + L keys per row).
        """
        m, r, length = ids.shape
        keys = key_mask.shape[-1]
        causal = torch.ones(length, keys, dtype=torch.bool, device=ids.device).tril(keys - length)
        attn_mask = or_self(causal & key_mask.reshape(m * r, 1, keys))[:, None]
        wte, wpe = w["transformer.wte.weight"], w["transformer.wpe.weight"]  # [M, V | L_max, H]
        member = torch.arange(m, device=ids.device)[:, None, None]
        x = F.embedding(ids + member * wte.shape[1], wte.flatten(0, 1))  # wte[m, ids[m]]
        x = x + F.embedding(positions + member * wpe.shape[1], wpe.flatten(0, 1))
        cache: KVCache = []
        for i in range(self.n_layer):
            block = f"transformer.h.{i}"
            qkv = self._linear(self._norm(x, w, f"{block}.ln_1"), w, f"{block}.attn.c_attn")
            width = x.shape[-1]
            qkv = qkv.view(m * r, length, 3, self.n_head, width // self.n_head)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [M * R, nh, L, hd]
            if past is not None:
                k, v = torch.cat([past[i][0], k], 2), torch.cat([past[i][1], v], 2)
            cache.append((k, v))
            attn = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, scale=q.shape[-1] ** -0.5
            )
            attn = attn.transpose(1, 2).reshape(m, r, length, width)
            x = x + self._linear(attn, w, f"{block}.attn.c_proj")
            h = self._linear(self._norm(x, w, f"{block}.ln_2"), w, f"{block}.mlp.c_fc")
            h = F.gelu(h, approximate=self.gelu)
            x = x + self._linear(h, w, f"{block}.mlp.c_proj")
        return x, cache

    def logits(self, w: Weights, x: Tensor) -> Tensor:
        """Logits [M, R, L, V] of hidden states x [M, R, L, H]: ``ln_f(x) @ head[m]^T``."""
        return self._head(w, self._norm(x, w, "transformer.ln_f"))

    @staticmethod
    def _head(w: Weights, h: Tensor) -> Tensor:
        """Logits [M, R, L, V] of final (normed) states h [M, R, L, H]: ``h @ head[m]^T``."""
        head = w.get("lm_head.weight", w["transformer.wte.weight"])  # [M, V, H]
        return torch.matmul(h.flatten(1, 2), head.transpose(1, 2)).view(*h.shape[:3], -1)

    def prefill(self, w: Weights, prompts: MemberPrompts) -> tuple[Tensor, KVCache, Tensor]:
        """Run each member's distinct prompts once on its weights and hand every row its
        prompt's state.

        Returns:
            (hidden state of each row's last prompt token [M, R, H] (before ``ln_f``), the
            prompt cache gathered to rows [M * R, nh, P, hd] per layer, key mask [M, R, P]).
        """
        ids, mask = prompts.ids, prompts.mask.bool()  # [M, N, P]
        x, cache = self.hidden(w, ids, position_ids_from_mask(mask), mask)
        m, n = ids.shape[:2]
        member = torch.arange(m, device=ids.device)[:, None]
        flat_rows = (member * n + prompts.rows).flatten()  # [M * R] into the M * N prompts
        cache = [(k.index_select(0, flat_rows), v.index_select(0, flat_rows)) for k, v in cache]
        return x[member, prompts.rows, -1], cache, mask[member, prompts.rows]

    def logprobs(
        self,
        w: Weights,
        prompts: MemberPrompts,
        ids: Tensor,
        mask: Tensor,
        value_head: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Log-probs, entropies and values [M, R, T] of completions ids, mask [M, R, T] after
        the rows' prompts (`token_logprobs` of this forward; positions ``cumsum(mask) - 1``
        along prompt then completion). Each distinct prompt runs once per member (`prefill`);
        the completion tokens 0 .. T - 2 run on its cache (token T - 1 predicts nothing
        scored). ``value_head`` (weight [M, H], bias [M]) gives values ``ln_f(x) . w[m] +
        b[m]`` at the same positions (0 where the mask is 0), as `Policy`'s value head does;
        None without it.
        """
        m, r, t = ids.shape
        last, cache, key_mask = self.prefill(w, prompts)
        states = [last[:, :, None]]  # [M, R, 1, H] predicts completion token 0
        if t > 1:
            key_mask = torch.cat([key_mask, mask[:, :, : t - 1].bool()], dim=-1)
            positions = position_ids_from_mask(key_mask)[:, :, -(t - 1) :]
            x, _ = self.hidden(w, ids[:, :, : t - 1], positions, key_mask, cache)
            states.append(x)
        h = self._norm(torch.cat(states, dim=2), w, "transformer.ln_f")  # [M, R, T, H]
        logits = self._head(w, h)  # [M, R, T, V]
        index = torch.arange(m * r * t, device=ids.device).view(m * r, t)
        flat = (ids.flatten(0, 1), mask.flatten(0, 1))
        logp, entropy = token_logprobs(logits.flatten(0, 2), index, *flat)
        values = None
        if value_head is not None:
            weight, bias = value_head
            values = (h * weight[:, None, None]).sum(-1).float() + bias[:, None, None].float()
            values = torch.where(mask.bool(), values, torch.zeros_like(values))
        return logp.view(m, r, t), entropy.view(m, r, t), values

    @torch.no_grad()
    def sample(
        self,
        w: Weights,
        tokenizer: TextTokenizer,
        prompts: Sequence[list[str]],
        group_sizes: Sequence[int],
        max_new_tokens: int,
        generators: Sequence[torch.Generator | None],
        temperature: float = 1.0,
        greedy: bool = False,
    ) -> list[Rollout]:
        """One `Rollout` per member, as `sample` draws it from that member's policy alone.

        Member m samples ``group_sizes[m]`` completions of each of its ``prompts[m]``; every
        member must get the same number of rows B. Members decode in lockstep with a KV cache;
        member m draws with ``generators[m]`` (one uniform per row and decode step,
        `next_tokens`) and stops, as `sample` does, at the step where all its rows have
        emitted EOS or at ``max_new_tokens``: it draws nothing after that, so its generator
        advances exactly as in `sample`. A stopped member feeds padding (mask 0) until all
        have stopped.
        """
        members = len(generators)
        device = w["transformer.wte.weight"].device
        batches = [
            encode_prompts(tokenizer, texts, g, max_new_tokens, self.max_length, device)
            for texts, g in zip(prompts, group_sizes, strict=True)
        ]
        rows = batches[0].group_ids.shape[0]
        if any(b.group_ids.shape[0] != rows for b in batches):
            raise ValueError("population members must sample the same number of rows")
        pad, eos = tokenizer.pad_id, tokenizer.eos_id
        parts = [(b.distinct_ids, b.distinct_mask, b.group_ids) for b in batches]
        last, cache, key_mask = self.prefill(w, MemberPrompts.stack(parts, pad))
        next_logits = self.logits(w, last[:, :, None])[:, :, 0].float()  # [M, B, V]
        next_pos = key_mask.long().sum(-1)  # [M, B] position of the next token
        done = torch.zeros(members, rows, dtype=torch.bool, device=device)
        running = [True] * members
        out: list[tuple[list[Tensor], list[Tensor], list[Tensor]]] = [
            ([], [], []) for _ in range(members)
        ]
        for step in range(max_new_tokens):
            tokens = torch.full((members, rows), pad, dtype=torch.long, device=device)
            active = ~done & torch.tensor(running, device=device)[:, None]
            for m in (m for m in range(members) if running[m]):
                tok, lp = next_tokens(
                    next_logits[m], active[m], pad, temperature, generators[m], greedy
                )
                tokens[m] = tok
                for seq, value in zip(out[m], (tok, lp, active[m].long()), strict=True):
                    seq.append(value)
                done[m] |= tok == eos
            finished = done.all(dim=1).tolist()  # one host sync per decode step
            last = step == max_new_tokens - 1
            running = [r and not last and not f for r, f in zip(running, finished, strict=True)]
            if not any(running):
                break
            key_mask = torch.cat([key_mask, active[:, :, None]], dim=-1)
            x, cache = self.hidden(w, tokens[:, :, None], next_pos[:, :, None], key_mask, cache)
            next_logits = self.logits(w, x)[:, :, 0].float()
            next_pos = next_pos + active.long()
        return [build_rollout(tokenizer, b, *seqs) for b, seqs in zip(batches, out, strict=True)]


def stack_rollouts(
    rollouts: Sequence[Rollout], pad_id: int
) -> tuple[MemberPrompts, Tensor, Tensor]:
    """(each member's distinct prompts, completion ids [M, B, T], completion mask [M, B, T]) of
    M rollouts of B rows each, each member's completions right-padded (pad id, mask 0) to the
    longest, T."""
    t = max(r.completion_ids.shape[1] for r in rollouts)
    ids, masks = [], []
    for r in rollouts:
        extra = t - r.completion_ids.shape[1]
        ids.append(F.pad(r.completion_ids, (0, extra), value=pad_id))
        masks.append(F.pad(r.completion_mask, (0, extra), value=0))
    parts = [shared_prompts(r.prompt_ids, r.prompt_mask) for r in rollouts]
    prompts = MemberPrompts.stack(parts, pad_id)
    return prompts, torch.stack(ids), torch.stack(masks)


# ---------------------------------------------------------------------- the trainer


def batch_rows(config: TrainConfig, spec: ObjectiveSpec) -> int:
    """Completions per step: `prompts_per_step` x ``group_size``. Members of a population
    must agree on it."""
    return prompts_per_step(config, spec.group_size) * spec.group_size


def unsupported_reason(spec: ObjectiveSpec) -> str | None:
    """Why population mode cannot train ``spec`` (None when it can)."""
    spec = spec.canonical()
    if spec.data not in ("on_policy", "preference_pairs"):
        return f"data '{spec.data}' (only on_policy and preference_pairs)"
    if spec.preference is None and spec.surrogate.name == "trpo":
        return "surrogate 'trpo' needs its own natural-gradient step"
    return None


class PopulationUnsupported(ValueError):
    """Population mode cannot train these members or this policy (train them one by one)."""


@dataclass
class MemberState:
    """One member's status: ``ok`` while training, else why it stopped (``diverged``,
    ``stopped``) with a ``reason``."""

    status: str = "ok"
    reason: str = ""


class PopulationTrainer:
    """Trains P objectives on one task from the same warm start, all in lockstep.

    Args:
        specs: the members' objectives (see the module docstring for what is supported).
        task, config: shared by every member; ``config.lr`` is the default learning rate.
        policy: the warm start with its frozen reference (as `warm_start_policy` returns it);
            its weights are copied, never changed.
        lrs: a learning rate per member, or None for ``config.lr`` for all.
        offline_pairs: the labelled pairs of members with ``data: preference_pairs``
            (`sample_offline_pairs` of the warm start, as `train` draws them); all members of
            a population share their ``data``.
    """

    def __init__(
        self,
        specs: Sequence[ObjectiveSpec],
        task: Task,
        config: TrainConfig,
        policy: Policy,
        lrs: Sequence[float] | None = None,
        offline_pairs: OfflinePairs | None = None,
    ) -> None:
        if not specs:
            raise ValueError("a population needs at least one member")
        lrs = [config.lr] * len(specs) if lrs is None else [float(lr) for lr in lrs]
        if len(lrs) != len(specs):
            raise ValueError(f"{len(lrs)} learning rates for {len(specs)} members")
        self.specs = [spec.canonical() for spec in specs]
        for i, spec in enumerate(self.specs):
            reason = unsupported_reason(spec)
            if reason is None and spec.data != self.specs[0].data:
                reason = f"data '{spec.data}' differs from member 0's '{self.specs[0].data}'"
            if (
                reason is None
                and spec.data == "on_policy"
                and batch_rows(config, spec) != batch_rows(config, self.specs[0])
            ):
                reason = (
                    f"group_size {spec.group_size} gives {batch_rows(config, spec)} rows per "
                    f"batch, member 0's {batch_rows(config, self.specs[0])} (members must "
                    "sample as many rows)"
                )
            if reason is None and not (math.isfinite(lrs[i]) and lrs[i] >= 0):
                reason = f"lr {lrs[i]!r} is not a finite number >= 0"
            if reason is not None:
                raise PopulationUnsupported(f"population member {i} ('{spec.name}'): {reason}")
        if config.minibatches != 1:
            raise PopulationUnsupported(
                f"population mode needs minibatches 1, got {config.minibatches}"
            )
        lm = policy.fast_lm()
        with policy.reference():
            reference = policy.fast_lm()
        if lm is None or reference is None:
            raise PopulationUnsupported(
                "population mode needs a plain GPT-2 policy (fast_gpt2.supports), with full "
                "fine-tuning (no LoRA), policy.fast_path on and a frozen reference"
            )
        self.objectives: list[Objective] = [build_objective(spec) for spec in self.specs]
        self.critics = [uses_critic(objective) for objective in self.objectives]
        if any(self.critics) and policy.value_head is None:
            raise PopulationUnsupported(
                "members with a critic advantage need the warm start's value head "
                "(PolicyConfig(value_head=True))"
            )
        offline = self.specs[0].data == "preference_pairs"
        if offline and offline_pairs is None:
            raise PopulationUnsupported(
                "members with data 'preference_pairs' need the offline pairs "
                "(offline_pairs=sample_offline_pairs(policy, task, config))"
            )
        self.offline_pairs = offline_pairs if offline else None
        self._offline_ref = (
            reference_pair_logps(policy, offline_pairs)
            if offline and offline_pairs is not None
            else None
        )
        self.task, self.config = task, config
        self.tokenizer = policy.tokenizer
        self.device = policy.device
        self.model = StackedGPT2.of(lm)
        self.names = [name for name, _ in lm.named_parameters()]
        self.params: list[list[nn.Parameter]] = [
            [nn.Parameter(p.detach().clone()) for p in lm.parameters()] for _ in specs
        ]
        self.reference: Weights = {
            name: p.detach().clone()[None] for name, p in reference.named_parameters()
        }
        # A critic member's own copy of the value head, [weight [1, H], bias [1]].
        self.value_params: list[list[nn.Parameter]] = [
            [nn.Parameter(p.detach().clone()) for p in policy.value_head.parameters()]
            if critic and policy.value_head is not None
            else []
            for critic in self.critics
        ]
        self.generators = [
            torch.Generator(device=self.device).manual_seed(config.seed) for _ in specs
        ]
        self.members = [MemberState() for _ in specs]
        groups = [{"params": self._trainable(i), "lr": lr} for i, lr in enumerate(lrs)]
        self.optimizer = adam(groups, config.lr, self.device)

    @property
    def live(self) -> list[int]:
        """Indices of the members still training."""
        return [i for i, member in enumerate(self.members) if member.status == "ok"]

    def stop(self, i: int, status: str, reason: str) -> None:
        """Stop training member i (it keeps its weights; later steps skip it)."""
        self.members[i] = MemberState(status, reason)

    def member_state(self, i: int) -> dict[str, Tensor]:
        """A copy of member i's current weights by transformers parameter name."""
        return {
            name: p.detach().clone() for name, p in zip(self.names, self.params[i], strict=True)
        }

    def _trainable(self, i: int) -> list[nn.Parameter]:
        """Member i's parameters: its LM's, then its value head's (critic members only)."""
        return self.params[i] + self.value_params[i]

    def _value_head(self, members: Sequence[int], grad: bool) -> tuple[Tensor, Tensor] | None:
        """Stacked value heads (weight [M, H], bias [M]) of ``members``, zeros for a member
        without a critic; None when none of them has one."""
        if not any(self.critics[i] for i in members):
            return None
        width = self.params[members[0]][0].shape[-1]
        zero_weight = torch.zeros(width, device=self.device)
        zero_bias = torch.zeros((), device=self.device)
        weights, biases = [], []
        for i in members:
            weight, bias = self.value_params[i] or (zero_weight, zero_bias)
            weights.append((weight if grad else weight.detach()).reshape(width))
            biases.append((bias if grad else bias.detach()).reshape(()))
        return torch.stack(weights), torch.stack(biases)

    def _weights(self, members: Sequence[int], grad: bool) -> Weights:
        """Stacked weights [M, ...] of ``members``; with ``grad``, differentiable back to each
        member's parameters."""
        return {
            name: torch.stack(
                [self.params[i][k] if grad else self.params[i][k].detach() for i in members]
            )
            for k, name in enumerate(self.names)
        }

    def _reference_logp(self, prompts: MemberPrompts, ids: Tensor, mask: Tensor) -> Tensor:
        """[M, B, T] reference log-probs of the M * B rows, through the shared reference.

        The reference does not depend on the member, and members that start from the same
        warm start with equally seeded generators often draw the same completion for the same
        prompt: each distinct prompt runs once, and each distinct (prompt, completion, mask)
        row once.
        """
        m, b, t = ids.shape
        n, length = prompts.ids.shape[1:]
        texts = torch.cat([prompts.ids, prompts.mask], -1).flatten(0, 1)  # [M * N, 2P]
        distinct_prompts, prompt_of = torch.unique(texts, dim=0, return_inverse=True)
        member = torch.arange(m, device=ids.device)[:, None]
        row_prompt = prompt_of[(member * n + prompts.rows).flatten()]  # [M * B]
        keys = torch.cat([row_prompt[:, None], ids.view(m * b, t), mask.view(m * b, t)], 1)
        distinct, inverse = torch.unique(keys, dim=0, return_inverse=True)  # [U, 1 + 2T]
        reference_prompts = MemberPrompts(
            distinct_prompts[None, :, :length],
            distinct_prompts[None, :, length:],
            distinct[None, :, 0],
        )
        with torch.no_grad():
            logp, _, _ = self.model.logprobs(
                self.reference,
                reference_prompts,
                distinct[None, :, 1 : 1 + t],
                distinct[None, :, 1 + t :],
            )
        return logp[0, inverse].view(m, b, t)

    # ---- one step --------------------------------------------------------------------
    def step(self, step: int) -> list[dict[str, float] | None]:
        """One step of every live member: sample (on-policy) or draw the step's offline pairs,
        then update ``epochs`` times on that batch (as `Trainer` does with one minibatch).

        Update k trains, in one batched forward and backward, the members whose ``epochs``
        exceed k. Returns, per member, its float metrics as `Trainer.step` reports them (the
        objective's own from its last update, ``loss``, ``grad_norm``; on-policy also
        ``reward``, ``kl_to_ref``, ``completion_length``), or None for a member that stopped
        at an earlier step. A member whose metrics diverge here gets them returned and stops
        (see `members`).
        """
        live = self.live
        results: list[dict[str, float] | None] = [None] * len(self.members)
        if not live:
            return results
        if self.offline_pairs is not None:
            metrics = self._offline_pairs_step(step, live)
        else:
            metrics = self._on_policy_step(step, live)
        for m, i in enumerate(live):
            results[i] = self._finish(i, metrics[m], step)
        return results

    def _on_policy_step(self, step: int, live: list[int]) -> list[dict[str, Tensor]]:
        cfg = self.config
        frozen = self._weights(live, grad=False)
        group_sizes = [self.specs[i].group_size for i in live]
        rollouts = self.model.sample(
            frozen,
            self.tokenizer,
            [train_prompts(self.task, cfg, step, g) for g in group_sizes],
            group_sizes,
            self.task.max_new_tokens,
            [self.generators[i] for i in live],
            cfg.temperature,
        )
        prompts, ids, mask = stack_rollouts(rollouts, self.tokenizer.pad_id)
        ref_logp = self._reference_logp(prompts, ids, mask)
        epochs = [self.specs[i].epochs for i in live]
        # As in `Trainer`: one update at temperature 1 uses the sampling log-probs as old ones
        # (and the ratio is exactly 1); otherwise old log-probs come from a no-grad forward.
        old_is_new = [e == 1 and cfg.temperature == 1.0 for e in epochs]
        # The no-grad forward (old log-probs, critic values) of the members that need it.
        rescored = [m for m, i in enumerate(live) if not old_is_new[m] or self.critics[i]]
        forward_old: dict[int, tuple[Tensor, Tensor | None]] = {}
        if rescored:
            members = [live[m] for m in rescored]
            with torch.no_grad():
                old_logp, _, old_values = self.model.logprobs(
                    {name: w[rescored] for name, w in frozen.items()},
                    prompts.select(rescored),
                    ids[rescored],
                    mask[rescored],
                    self._value_head(members, grad=False),
                )
            for row, m in enumerate(rescored):
                values = None if old_values is None else old_values[row]
                forward_old[m] = (old_logp[row], values)
        scored: list[ScoredRollout] = []
        returns: list[Tensor | None] = []
        for m, (i, rollout) in enumerate(zip(live, rollouts, strict=True)):
            own = rollout.completion_ids.shape[1]  # this member's T (what its Trainer sees)
            old, values = forward_old.get(m, (rollout.sample_logp, None))
            old = rollout.sample_logp if old_is_new[m] else old[:, :own]
            member_values = values[:, :own] if self.critics[i] and values is not None else None
            reward = task_rewards(self.task, rollout)
            scored.append(ScoredRollout(rollout, reward, old, ref_logp[m, :, :own], member_values))
            full = rollout_batch(scored[m], old, None, False)
            returns.append(critic_returns(self.objectives[i], full) if self.critics[i] else None)
        pairs = [self._online_pairs(i, member) for i, member in zip(live, scored, strict=True)]

        def member_loss(
            m: int, logp: Tensor, entropy: Tensor, values: Tensor | None
        ) -> tuple[Tensor, dict[str, Tensor]]:
            own = scored[m].rollout.completion_ids.shape[1]
            new, new_entropy = logp[:, :own], entropy[:, :own]
            objective, member_pairs = self.objectives[live[m]], pairs[m]
            if member_pairs is None:
                batch = rollout_batch(scored[m], new, new_entropy, old_is_new[m])
                loss, metrics = objective(batch)
            else:
                _, loss, metrics = online_preference_loss(
                    objective, scored[m], new, new_entropy, *member_pairs
                )
            if (target := returns[m]) is not None and values is not None:
                value_loss = critic_loss(values[:, :own], target, scored[m].rollout.completion_mask)
                loss = loss + cfg.value_coef * value_loss
                metrics["value_loss"] = value_loss.detach()
            return loss, metrics

        # As in `Trainer`, a preference member whose groups all tie has no pair: no update.
        updates = [
            0 if p is not None and p[0].numel() == 0 else e
            for p, e in zip(pairs, epochs, strict=True)
        ]
        metrics = self._update(live, updates, prompts, ids, mask, member_loss)
        for m, member in enumerate(scored):
            if not updates[m]:
                metrics[m] = no_pair_metrics(self.device)
            mask_m = member.rollout.completion_mask
            metrics[m]["reward"] = member.rewards.mean()
            metrics[m]["kl_to_ref"] = sequence_k3(member.old_logp, member.ref_logp, mask_m).mean()
            metrics[m]["completion_length"] = mask_m.sum(-1).float().mean()
        return metrics

    def _offline_pairs_step(self, step: int, live: list[int]) -> list[dict[str, Tensor]]:
        """The step's offline pairs (the same for every member, as each `Trainer` draws them)
        through every member; the reference sums were computed once."""
        assert self.offline_pairs is not None and self._offline_ref is not None
        rollout, index = offline_pairs_rollout(
            self.tokenizer, self.offline_pairs, self.config, step, self.device
        )
        ref_chosen, ref_rejected = (r[index].to(self.device) for r in self._offline_ref)
        count, mask = len(live), rollout.completion_mask
        part = shared_prompts(rollout.prompt_ids, rollout.prompt_mask)
        prompts = MemberPrompts.stack([part] * count, self.tokenizer.pad_id)

        def member_loss(
            m: int, logp: Tensor, entropy: Tensor, _values: Tensor | None
        ) -> tuple[Tensor, dict[str, Tensor]]:
            batch = offline_preference_batch(logp, mask, ref_chosen, ref_rejected)
            loss, metrics = self.objectives[live[m]](batch)
            metrics["entropy"] = masked_mean(entropy.detach(), mask)
            return loss, metrics

        ids = rollout.completion_ids.expand(count, -1, -1)
        epochs = [self.specs[i].epochs for i in live]
        return self._update(live, epochs, prompts, ids, mask.expand(count, -1, -1), member_loss)

    def _update(
        self,
        live: list[int],
        updates: list[int],
        prompts: MemberPrompts,
        ids: Tensor,
        mask: Tensor,
        member_loss: MemberLoss,
    ) -> list[dict[str, Tensor]]:
        """``max(updates)`` batched updates of the live members on their rows ``ids``,
        ``mask`` [M, B, T] after ``prompts``: update k trains the members m with
        ``updates[m] > k`` (one forward and backward for them; a member left out has no
        gradient and takes no Adam step). ``member_loss(m, logp, entropy, values)`` gets member
        m's [B, T] rows and gives its loss and metrics. Returns each member's metrics from its
        last update, with ``grad_norm`` (``{}`` for a member without one)."""
        cfg = self.config
        metrics: list[dict[str, Tensor]] = [{} for _ in live]
        for update in range(max(updates)):
            active = [m for m, n in enumerate(updates) if n > update]
            members = [live[m] for m in active]
            logp, entropy, values = self.model.logprobs(
                self._weights(members, grad=True),
                prompts.select(active),
                ids[active],
                mask[active],
                self._value_head(members, grad=True),
            )
            losses = []
            for row, m in enumerate(active):
                member_values = None if values is None else values[row]
                loss, metrics[m] = member_loss(m, logp[row], entropy[row], member_values)
                losses.append(loss)
            self.optimizer.zero_grad(set_to_none=True)
            torch.stack(losses).sum().backward()
            for m in active:
                norm = torch.nn.utils.clip_grad_norm_(
                    self._trainable(live[m]), cfg.max_grad_norm or math.inf
                )
                metrics[m]["grad_norm"] = norm.detach()
            self.optimizer.step()
        return metrics

    def _online_pairs(self, i: int, scored: ScoredRollout) -> tuple[Tensor, Tensor] | None:
        """Member i's (chosen, rejected) rows when its objective is a preference loss."""
        preference = self.specs[i].preference
        if preference is None:
            return None
        return online_pairs(scored.rewards, scored.rollout.group_ids, preference.pairing)

    def _finish(self, i: int, metrics: dict[str, Tensor], step: int) -> dict[str, float]:
        """Member i's float metrics; a diverged member stops (its objective state is kept)."""
        try:
            out = step_metrics(metrics, self.config, step)
            if not math.isfinite(out["grad_norm"]):
                raise Diverged(f"non-finite gradient norm at step {step + 1}")
        except Diverged as err:
            self.members[i] = MemberState("diverged", str(err))
            return {k: float(v) for k, v in metrics.items()}
        self.objectives[i].end_step(out)
        return out

    # ---- evaluation ------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> list[EvalReport | None]:
        """Per member, `Trainer.evaluate`'s report (greedy held-out reward and accuracy,
        sampled per-sequence KL to the reference); None for a stopped member."""
        live, cfg = self.live, self.config
        reports: list[EvalReport | None] = [None] * len(self.members)
        if not live:
            return reports
        weights = self._weights(live, grad=False)
        n_new = self.task.max_new_tokens
        decoded: dict[tuple[str, ...], list[Rollout]] = {}

        def generate(m: int) -> Callable[[list[str]], list[str]]:
            def run(prompts: list[str]) -> list[str]:
                key = tuple(prompts)
                if key not in decoded:  # the first member's call decodes all members at once
                    each, nones = [prompts] * len(live), [None] * len(live)
                    decoded[key] = self.model.sample(
                        weights, self.tokenizer, each, [1] * len(live), n_new, nones, greedy=True
                    )
                return decoded[key][m].texts

            return run

        results = [
            self.task.evaluate(generate(m), n=cfg.eval_prompts, seed=cfg.seed)
            for m in range(len(live))
        ]
        prompts = self.task.prompts("eval", cfg.eval_prompts, cfg.seed)
        generators = [eval_generator(cfg, self.device) for _ in live]
        rollouts = self.model.sample(
            weights, self.tokenizer, [prompts] * len(live), [1] * len(live), n_new, generators
        )
        member_prompts, ids, mask = stack_rollouts(rollouts, self.tokenizer.pad_id)
        logp, _, _ = self.model.logprobs(weights, member_prompts, ids, mask)
        ref_logp = self._reference_logp(member_prompts, ids, mask)
        kl = sequence_k3(logp, ref_logp, mask).mean(-1).tolist()
        for m, i in enumerate(live):
            reports[i] = EvalReport(results[m].reward, results[m].accuracy, kl[m])
        return reports
