"""The forward protocol with a member axis: M weight sets of one architecture, scored and decoded
in lockstep.

A *member* is one set of trainable tensors (`Weights`, parameter name -> tensor) on top of a
shared architecture; training one objective is M = 1. Two implementations:

* `grape_evo.policy.stacked_gpt2.StackedGPT2`: plain GPT-2 with stacked weights, each distinct
  prompt and completion prefix run once per member (the fast path);
* `grape_evo.policy.transformers_forward.TransformersForward`: any transformers causal LM, LoRA
  included (the numerical reference and the fallback).

`forward_for(policy)` picks one. ``weights=None`` everywhere means the frozen reference policy,
as one member (M = 1; `MemberRows.distinct` merges several members' rows for it).
A member's weights may hold a value head (``value_head.weight`` [1, H], ``value_head.bias`` [1]);
when any member of a call has one, values are returned for all (0 for the others).

Shapes: M members, N distinct prompts per member, P prompt tokens (left-padded), B rows per
member, T completion tokens (right-padded), V vocabulary, H hidden size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from grape_evo.policy.model import Policy
from grape_evo.policy.weight_bank import VALUE_KEYS, BankRows, Weights


class MemberPrompts(NamedTuple):
    """Each member's distinct prompts ``ids``, ``mask`` [M, N, P] (left-padded) and the prompt of
    each of its B rows, ``rows`` [M, B] long (indices into its N prompts)."""

    ids: Tensor
    mask: Tensor
    rows: Tensor

    @classmethod
    def stack(cls, parts: Sequence[tuple[Tensor, Tensor, Tensor]], pad_id: int) -> MemberPrompts:
        """Stack members' (ids [N_m, P_m], mask, rows [B]): prompts are left-padded to the
        longest (mask 0 changes neither attention nor positions) and members with fewer prompts
        get fully masked ones that no row reads."""
        n = max(ids.shape[0] for ids, _, _ in parts)
        length = max(ids.shape[1] for ids, _, _ in parts)
        ids, masks = [], []
        for part_ids, part_mask, _ in parts:
            pad = (length - part_ids.shape[1], 0, 0, n - part_ids.shape[0])
            ids.append(F.pad(part_ids, pad, value=pad_id))
            masks.append(F.pad(part_mask, pad, value=0))
        return cls(torch.stack(ids), torch.stack(masks), torch.stack([r for _, _, r in parts]))

    def select(self, members: Sequence[int]) -> MemberPrompts:
        """The prompts of ``members`` only, in that order."""
        index = torch.tensor(list(members), device=self.ids.device)
        return MemberPrompts(self.ids[index], self.mask[index], self.rows[index])

    def row_prompts(self) -> tuple[Tensor, Tensor]:
        """Each row's prompt ids and mask [M, B, P]."""
        index = self.rows[:, :, None].expand(-1, -1, self.ids.shape[-1])
        return self.ids.gather(1, index), self.mask.gather(1, index)


def shared_prompts(prompt_ids: Tensor, prompt_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Merge consecutive rows with the same prompt (the G rows of a sampled group).

    Args:
        prompt_ids, prompt_mask: [B, P].

    Returns:
        (ids [N, P], mask [N, P], rows [B] long) with ``ids[rows] == prompt_ids`` and
        ``mask[rows] == prompt_mask``; N is the number of runs of equal rows.
    """
    same = (prompt_ids[1:] == prompt_ids[:-1]).all(-1)
    same &= (prompt_mask[1:] == prompt_mask[:-1]).all(-1)
    starts = torch.cat([same.new_ones(1), ~same])
    return prompt_ids[starts], prompt_mask[starts], starts.long().cumsum(0) - 1


class MemberRows(NamedTuple):
    """Prompt + completion rows of M members: ``prompts`` and completions ``ids``, ``mask``
    [M, B, T] (right-padded with mask 0)."""

    prompts: MemberPrompts
    ids: Tensor
    mask: Tensor

    @classmethod
    def stack(
        cls, rows: Sequence[tuple[Tensor, Tensor, Tensor, Tensor]], pad_id: int
    ) -> MemberRows:
        """Stack members' (prompt ids [B_m, P_m], prompt mask, completion ids [B_m, T_m],
        completion mask): completions are right-padded to the longest T and members with fewer
        rows get fully masked rows (reading prompt 0) up to the most B."""
        t = max(ids.shape[1] for _, _, ids, _ in rows)
        b = max(ids.shape[0] for _, _, ids, _ in rows)
        parts, ids, masks = [], [], []
        for prompt_ids, prompt_mask, completion_ids, completion_mask in rows:
            n_ids, n_mask, n_rows = shared_prompts(prompt_ids, prompt_mask)
            extra = b - completion_ids.shape[0]
            parts.append((n_ids, n_mask, F.pad(n_rows, (0, extra))))
            pad = (0, t - completion_ids.shape[1], 0, extra)
            ids.append(F.pad(completion_ids, pad, value=pad_id))
            masks.append(F.pad(completion_mask, pad, value=0))
        return cls(MemberPrompts.stack(parts, pad_id), torch.stack(ids), torch.stack(masks))

    def select(self, members: Sequence[int]) -> MemberRows:
        index = torch.tensor(list(members), device=self.ids.device)
        return MemberRows(self.prompts.select(members), self.ids[index], self.mask[index])

    def distinct(self) -> tuple[MemberRows, Tensor]:
        """All M * B rows as one member of their distinct (prompt, completion) rows, and the
        index [M, B] of each row among them (for passes that are the same for every member,
        such as the reference's)."""
        m, b, t = self.ids.shape
        prompt_ids, prompt_mask = self.prompts.row_prompts()
        keys = torch.cat([prompt_ids, prompt_mask, self.ids, self.mask], -1).flatten(0, 1)
        distinct, inverse = torch.unique(keys, dim=0, return_inverse=True)
        p = prompt_ids.shape[-1]
        n_ids, n_mask, n_rows = shared_prompts(distinct[:, :p], distinct[:, p : 2 * p])
        prompts = MemberPrompts(n_ids[None], n_mask[None], n_rows[None])
        completion = distinct[None, :, 2 * p :]
        return MemberRows(prompts, completion[..., :t], completion[..., t:]), inverse.view(m, b)


class TokenOutputs(NamedTuple):
    """Per completion token [M, B, T] float32, 0 where the mask is 0: ``logp`` of the token,
    ``entropy`` of the next-token distribution that predicted it, ``values`` of the value head
    at that position (None without one), and with ``full=True`` the whole log-distribution
    ``log_dist`` [M, B, T, V]."""

    logp: Tensor
    entropy: Tensor
    values: Tensor | None = None
    log_dist: Tensor | None = None


class Decoder(Protocol):
    """Incremental decoding of M members' B rows: `prefill` runs the prompts, `step` feeds one
    token per row."""

    def prefill(self) -> Tensor:
        """Next-token logits [M, B, V] (float32) after the prompts."""
        ...

    def step(self, tokens: Tensor, active: Tensor) -> Tensor:
        """Feed tokens [M, B] (real, i.e. attended, where ``active`` [M, B] bool); next-token
        logits [M, B, V]."""
        ...


class Forward(Protocol):
    """Scoring and decoding for M members of one architecture (``weights=None``: the
    reference)."""

    def score(
        self,
        rows: MemberRows,
        weights: Sequence[Weights] | None,
        full: bool = False,
        temperature: float = 1.0,
    ) -> TokenOutputs:
        """Per-token outputs [M, B, T] of the rows' completions; log-probs, entropies and
        distributions of softmax(logits / ``temperature``)."""
        ...

    def decoder(self, prompts: MemberPrompts, weights: Sequence[Weights] | None) -> Decoder:
        """A decoder for the rows of ``prompts``."""
        ...


def token_logprobs(
    logits: Tensor, index: Tensor, ids: Tensor, mask: Tensor
) -> tuple[Tensor, Tensor]:
    """Log-probs and entropies [R, T] float32 of completion tokens from per-position logits.

    Args:
        logits: [K, V], one row per distinct scored position; row ``index[r, t]`` predicts
            ``ids[r, t]``.
        index: [R, T] long.
        ids, mask: [R, T] completion tokens and their mask.

    ``logp = log_softmax(logits)[index, token]`` (in float32) and ``entropy = -sum_v p log p`` of
    that row, both 0 where ``mask`` is 0.
    """
    logp_all = F.log_softmax(logits.float(), dim=-1)
    floor = torch.finfo(logp_all.dtype).min
    entropy_all = -(logp_all.exp() * logp_all.clamp_min(floor)).sum(-1)  # [K]
    flat = (index * logp_all.shape[-1] + ids).flatten()
    logp = logp_all.flatten().index_select(0, flat).view(index.shape)
    entropy = entropy_all.index_select(0, index.flatten()).view(index.shape)
    keep = mask.bool()
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    return torch.where(keep, logp, zero), torch.where(keep, entropy, zero)


def value_head_of(
    weights: Sequence[Weights], width: int, device: torch.device
) -> tuple[Tensor, Tensor] | None:
    """Stacked value heads (weight [M, H], bias [M]) of the members, zeros for a member without
    one; None when none of them has one."""
    if isinstance(weights, BankRows):
        return weights.value_heads(width)
    if not any(VALUE_KEYS[0] in w for w in weights):
        return None
    zero_weight, zero_bias = torch.zeros(width, device=device), torch.zeros((), device=device)
    heads = [w.get(VALUE_KEYS[0], zero_weight).reshape(width) for w in weights]
    biases = [w.get(VALUE_KEYS[1], zero_bias).reshape(()) for w in weights]
    return torch.stack(heads), torch.stack(biases)


def forward_for(policy: Policy, stacks: bool = False) -> Forward:
    """The fast stacked GPT-2 forward when it computes what the policy's LM (and its reference,
    if frozen yet) computes (a plain GPT-2, full fine-tuning, `Policy.fast_path` on), else the
    transformers forward. ``stacks``: its calls will stack several weight sets (members, a
    separate critic), so that the stacked forward computes each weight set, the reference
    included, with one formula (`StackedGPT2`)."""
    from grape_evo.policy.stacked_gpt2 import StackedGPT2, supports
    from grape_evo.policy.transformers_forward import TransformersForward

    reference = policy.reference_lm
    if policy.fast_path and supports(policy.lm) and (reference is None or supports(reference)):
        return StackedGPT2(policy.lm, reference, stacks)
    return TransformersForward(policy)


def policy_weights(policy: Policy) -> Weights:
    """The policy's own trainable tensors as one member's weights (no copy: training them
    trains the policy). Full fine-tuning: every LM parameter; LoRA: the adapter's; plus the
    value head when there is one."""
    return {name: p for name, p in policy.trainable_named_parameters()}
