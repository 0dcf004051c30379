"""The `Forward` protocol on transformers' own forward: any causal LM, with or without LoRA.

This is the numerical reference and the fallback of `StackedGPT2`. A member's weights replace
the LM's trainable tensors through ``torch.func.functional_call`` (LoRA: the adapter's tensors;
the base is shared). M > 1 members are scored in one ``vmap`` over their stacked weights where
the model allows it (a 4-D attention mask built here, so transformers runs no data-dependent
mask code), else one after the other; decoding runs each member with its own KV cache. The
reference is the policy's (`Policy.reference`: the frozen copy, or the adapter disabled).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor
from torch.func import functional_call, vmap

from grape_evo.policy.forward import (
    VALUE_KEYS,
    MemberPrompts,
    MemberRows,
    TokenOutputs,
    Weights,
    token_logprobs,
    value_head_of,
)
from grape_evo.policy.model import Policy, position_ids_from_mask


def _lm_weights(weights: Weights) -> Weights:
    return {n: t for n, t in weights.items() if n not in VALUE_KEYS}


class TransformersForward:
    """`Forward` for any policy; see the module docstring."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.vmap_ok = True  # set False the first time vmap fails for this model

    @contextmanager
    def _as(self, weights: Weights | None) -> Iterator[Any]:
        """A callable LM with member ``weights`` swapped in (the reference for None)."""
        policy = self.policy
        if weights is None:
            with policy.reference():
                yield policy.active_lm()
            return
        lm_weights = _lm_weights(weights)

        def call(**kwargs: Any) -> Any:
            return functional_call(policy.lm, lm_weights, (), kwargs, strict=False)

        yield call

    def _logits(
        self, rows: MemberRows, weights: Sequence[Weights] | None, hidden: bool
    ) -> tuple[Tensor, Tensor | None]:
        """Logits [M, B, T, V] predicting each completion token and, with ``hidden``, the final
        hidden states [M, B, T, H] at the same positions."""
        prompt_ids, prompt_mask = rows.prompts.row_prompts()
        ids = torch.cat([prompt_ids, rows.ids], -1)
        mask = torch.cat([prompt_mask, rows.mask], -1)
        t = rows.ids.shape[-1]
        members = [None] if weights is None else list(weights)
        if weights is not None and len(members) > 1 and self.vmap_ok:
            try:
                return self._vmapped(members, ids, mask, t, hidden)
            except RuntimeError:
                self.vmap_ok = False
        outs, states = [], []
        for m, member in enumerate(members):
            count = ids.shape[0] if weights is None else 1
            part = slice(None) if weights is None else slice(m, m + 1)
            flat_ids, flat_mask = ids[part].flatten(0, 1), mask[part].flatten(0, 1)
            keep = self.policy.keep_kwarg
            with self._as(member) as lm:
                out = lm(
                    input_ids=flat_ids,
                    attention_mask=flat_mask,
                    position_ids=position_ids_from_mask(flat_mask),
                    output_hidden_states=hidden,
                    **({keep: t + 1} if keep else {}),
                )
            outs.append(out.logits[:, -t - 1 : -1].reshape(count, -1, t, out.logits.shape[-1]))
            if hidden:
                h = out.hidden_states[-1][:, -t - 1 : -1]
                states.append(h.reshape(count, -1, t, h.shape[-1]))
        return torch.cat(outs), torch.cat(states) if hidden else None

    def _vmapped(
        self, members: list[Weights], ids: Tensor, mask: Tensor, t: int, hidden: bool
    ) -> tuple[Tensor, Tensor | None]:
        """`_logits` for M > 1 members in one vmap over their stacked weights."""
        lm_weights = [_lm_weights(w) for w in members]
        stacked = {n: torch.stack([w[n] for w in lm_weights]) for n in lm_weights[0]}
        length = ids.shape[-1]
        causal = torch.ones(length, length, dtype=torch.bool, device=ids.device).tril()
        allowed = causal & mask.bool()[:, :, None, :]  # [M, B, L, L]
        allowed |= torch.eye(length, dtype=torch.bool, device=ids.device)
        attn = torch.zeros(allowed.shape, device=ids.device).masked_fill(
            ~allowed, torch.finfo(torch.float32).min
        )[:, :, None]  # [M, B, 1, L, L]
        positions = position_ids_from_mask(mask.flatten(0, 1)).view(mask.shape)
        lm = self.policy.lm

        def one(w: Weights, i: Tensor, a: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
            kwargs = {"input_ids": i, "attention_mask": a, "position_ids": p}
            out = functional_call(lm, w, (), {**kwargs, "output_hidden_states": hidden})
            states = out.hidden_states[-1] if hidden else out.logits[..., :1]
            return out.logits[:, -t - 1 : -1], states[:, -t - 1 : -1]

        with warnings.catch_warnings():  # CPU attention has no batching rule: a slower loop
            warnings.filterwarnings("ignore", "There is a performance drop")
            logits, states = vmap(one)(stacked, ids, attn, positions)
        return logits, states if hidden else None

    def score(
        self,
        rows: MemberRows,
        weights: Sequence[Weights] | None,
        full: bool = False,
        temperature: float = 1.0,
    ) -> TokenOutputs:
        heads = None
        if weights is not None:
            heads = value_head_of(weights, self._width(), rows.ids.device)
        logits, hidden = self._logits(rows, weights, hidden=heads is not None)
        if temperature != 1.0:
            logits = logits / temperature
        m, b, t, v = logits.shape
        flat = logits.reshape(m * b * t, v)
        index = torch.arange(m * b * t, device=flat.device).view(m * b, t)
        ids, mask = rows.ids.reshape(m * b, t), rows.mask.reshape(m * b, t)
        logp, entropy = token_logprobs(flat, index, ids, mask)
        values = log_dist = None
        if heads is not None and hidden is not None:
            h = hidden.float()
            values = torch.einsum("mbth,mh->mbt", h, heads[0]) + heads[1][:, None, None]
            values = torch.where(rows.mask.bool(), values, torch.zeros_like(values))
        if full:
            log_dist = torch.log_softmax(logits.float(), -1)
        return TokenOutputs(logp.view(m, b, t), entropy.view(m, b, t), values, log_dist)

    def _width(self) -> int:
        return int(self.policy.hf_model.get_input_embeddings().weight.shape[1])

    def decoder(self, prompts: MemberPrompts, weights: Sequence[Weights] | None) -> _CacheDecoder:
        return _CacheDecoder(self, prompts, weights)


class _CacheDecoder:
    """Each member decodes its B rows with transformers' KV cache; the attention mask grows by
    a column of ``active`` per step and only active rows advance their position."""

    def __init__(
        self,
        forward: TransformersForward,
        prompts: MemberPrompts,
        weights: Sequence[Weights] | None,
    ) -> None:
        self.forward = forward
        self.members = [None] if weights is None else list(weights)
        ids, mask = prompts.row_prompts()
        self.ids, self.attn = ids, mask  # [M, B, P], [M, B, P + steps]
        self.next_pos = mask.sum(-1, keepdim=True)  # [M, B, 1]
        self.caches: list[Any] = [None] * len(self.members)

    def _run(self, m: int, ids: Tensor, positions: Tensor) -> Tensor:
        policy = self.forward.policy
        with self.forward._as(self.members[m]) as lm:
            kwargs = {policy.cache_kwarg: self.caches[m]} if self.caches[m] is not None else {}
            out = lm(
                input_ids=ids,
                attention_mask=self.attn[m],
                position_ids=positions,
                use_cache=True,
                **kwargs,
            )
        self.caches[m] = policy.cache_of(out)
        return out.logits[:, -1].float()

    def prefill(self) -> Tensor:
        return torch.stack(
            [
                self._run(m, self.ids[m], position_ids_from_mask(self.attn[m]))
                for m in range(len(self.members))
            ]
        )

    def step(self, tokens: Tensor, active: Tensor) -> Tensor:
        real = active.long()[:, :, None]
        self.attn = torch.cat([self.attn, real], -1)
        logits = torch.stack(
            [self._run(m, tokens[m, :, None], self.next_pos[m]) for m in range(len(self.members))]
        )
        self.next_pos = self.next_pos + real
        return logits
