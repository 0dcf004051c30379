"""Sampling M members' completions in lockstep, and the row tensors scoring consumes.

Shapes: M members, N prompts, G completions per prompt, B = N * G rows (the G rows of one prompt
are contiguous), P prompt tokens (left-padded), T completion tokens (right-padded), V vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from grape_evo.policy.forward import (
    Forward,
    MemberPrompts,
    MemberRows,
    TokenOutputs,
    Weights,
    forward_for,
    policy_weights,
)
from grape_evo.policy.model import Policy
from grape_evo.policy.streams import uniforms
from grape_evo.policy.tokenizer import TextTokenizer

__all__ = [
    "PromptBatch",
    "Rollout",
    "decode",
    "encode_pairs",
    "encode_prompts",
    "rows_of",
    "sample",
    "score",
]


@dataclass(frozen=True)
class Rollout:
    """A batch of prompts with one completion each.

    Attributes:
        prompt_ids: [B, P] long, ``[bos] + encode(prompt)``, left-padded with the pad id.
        prompt_mask: [B, P] long, 1 on prompt tokens.
        completion_ids: [B, T] long, right-padded with the pad id after EOS; the EOS itself is
            the completion's last token (absent if the completion was cut at the length limit).
        completion_mask: [B, T] long, 1 on completion tokens including EOS.
        sample_logp: [B, T] float32, the chosen token's log-prob under the sampling
            distribution softmax(logits / T) or, as `decode` is asked, under softmax(logits)
            (temperature 1); 0 on padding.
        group_ids: [B] long, index of each row's prompt.
        texts: B decoded completions (without EOS).
        prompts: B prompt strings, one per row.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    sample_logp: torch.Tensor
    group_ids: torch.Tensor
    texts: list[str]
    prompts: list[str]

    @property
    def input_ids(self) -> torch.Tensor:
        """[B, P + T] prompt then completion."""
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        """[B, P + T] prompt mask then completion mask."""
        return torch.cat([self.prompt_mask, self.completion_mask], dim=1)

    def to(self, device: str | torch.device) -> Rollout:
        """A copy with every tensor on `device`."""
        return Rollout(
            prompt_ids=self.prompt_ids.to(device),
            prompt_mask=self.prompt_mask.to(device),
            completion_ids=self.completion_ids.to(device),
            completion_mask=self.completion_mask.to(device),
            sample_logp=self.sample_logp.to(device),
            group_ids=self.group_ids.to(device),
            texts=list(self.texts),
            prompts=list(self.prompts),
        )


def _pad(rows: list[list[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token lists on the left or the right into ([R, W] ids, [R, W] mask)."""
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    width = max((len(r) for r in rows), default=0)
    cols = torch.arange(width)
    real = cols >= width - lengths[:, None] if left else cols < lengths[:, None]  # [R, W]
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    ids[real] = torch.tensor([t for r in rows for t in r], dtype=torch.long)  # row-major
    return ids, real.long()


def next_tokens(
    logits: torch.Tensor,
    active: torch.Tensor,
    pad_id: int,
    temperature: float,
    keys: torch.Tensor | None,
    position: int,
    logprob_temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step of M members' B rows: (tokens [M, B] long, log-probs [M, B] float32 of
    softmax(logits / ``logprob_temperature``)); rows not ``active`` [M, B] get ``pad_id`` and
    log-prob 0.

    Inverse-CDF sampling from softmax(logits / temperature) with the counter-based uniform
    ``uniforms(keys, B, position)[m, b]``: the token is the first index whose cumulative
    probability exceeds u * total (kept below the total, so a token of probability 0 is never
    drawn). ``keys`` None: greedy (argmax). Non-finite logits raise ValueError.
    """
    if keys is None:
        drawn = logits.argmax(dim=-1)
    else:
        cdf = F.softmax(logits / temperature, dim=-1).cumsum(dim=-1)  # [M, B, V]
        total = cdf[..., -1:]
        if not bool(torch.isfinite(total).all()):
            raise ValueError("cannot sample: the next-token distribution has inf or nan entries")
        u = uniforms(keys, logits.shape[1], position)[..., None].to(logits.device)
        below_total = torch.nextafter(total, torch.zeros_like(total))
        drawn = torch.searchsorted(cdf, torch.minimum(u * total, below_total), right=True)[..., 0]
    tokens = torch.where(active, drawn, torch.full_like(drawn, pad_id))
    logp = F.log_softmax(logits / logprob_temperature, dim=-1).gather(-1, tokens[..., None])[..., 0]
    return tokens, torch.where(active, logp, torch.zeros_like(logp))


@dataclass(frozen=True)
class PromptBatch:
    """Encoded prompts of a sampling call: N distinct prompts, G rows each (B = N * G).

    Attributes:
        distinct_ids, distinct_mask: [N, P] ``[bos] + encode(prompt)``, left-padded.
        group_ids: [B] long, each row's prompt (``arange(N).repeat_interleave(G)``).
        prompts: B prompt strings, one per row.
    """

    distinct_ids: torch.Tensor
    distinct_mask: torch.Tensor
    group_ids: torch.Tensor
    prompts: list[str]


def encode_prompts(
    tokenizer: TextTokenizer,
    prompts: list[str],
    group_size: int,
    max_new_tokens: int,
    max_length: int | None,
    device: torch.device,
) -> PromptBatch:
    """Validate the sampling budget and encode ``prompts`` on ``device`` (see `PromptBatch`).

    ValueError when ``group_size`` or ``max_new_tokens`` < 1, or when the longest prompt plus
    ``max_new_tokens`` exceeds ``max_length`` (None: no limit).
    """
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    encoded = [[tokenizer.bos_id, *tokenizer.encode(p)] for p in prompts]
    distinct_ids, distinct_mask = _pad(encoded, tokenizer.pad_id, left=True)  # [N, P]
    if max_length is not None and distinct_ids.shape[1] + max_new_tokens > max_length:
        raise ValueError(
            f"prompt length {distinct_ids.shape[1]} + max_new_tokens {max_new_tokens} exceeds "
            f"the model's maximum length {max_length}"
        )
    return PromptBatch(
        distinct_ids=distinct_ids.to(device),
        distinct_mask=distinct_mask.to(device),
        group_ids=torch.arange(len(prompts), device=device).repeat_interleave(group_size),
        prompts=[p for p in prompts for _ in range(group_size)],
    )


def _rollout(
    tokenizer: TextTokenizer,
    batch: PromptBatch,
    tokens: torch.Tensor,
    logps: torch.Tensor,
    masks: torch.Tensor,
) -> Rollout:
    """The `Rollout` of one member's decode: ``tokens`` [B, T] long, ``logps`` [B, T] float32,
    ``masks`` [B, T] long (1 where the row was still generating)."""
    return Rollout(
        prompt_ids=batch.distinct_ids[batch.group_ids],
        prompt_mask=batch.distinct_mask[batch.group_ids],
        completion_ids=tokens,
        completion_mask=masks,
        sample_logp=logps,
        group_ids=batch.group_ids,
        texts=_decode_completions(tokenizer, tokens, masks),
        prompts=list(batch.prompts),
    )


@torch.no_grad()
def decode(
    forward: Forward,
    weights: Sequence[Weights] | None,
    tokenizer: TextTokenizer,
    prompts: Sequence[list[str]],
    group_sizes: Sequence[int],
    max_new_tokens: int,
    keys: Sequence[int] | None,
    temperature: float = 1.0,
    max_length: int | None = None,
    device: torch.device | str = "cpu",
    temper_logprobs: bool = False,
) -> list[Rollout]:
    """One `Rollout` per member: member m samples ``group_sizes[m]`` completions of each of its
    ``prompts[m]`` with its ``weights[m]`` (``weights`` None: the reference, one member).

    Members decode in lockstep over [M, B] (B: the most rows of any member; a member with fewer
    gets padding rows that start finished). Token j of row b of member m is drawn with the
    uniform of (``keys[m]``, b, j) (`grape_evo.policy.streams`), or greedily when ``keys`` is
    None; a row that emitted EOS emits padding (mask 0) afterwards. Member m stops at the step
    where all its rows have finished, or after ``max_new_tokens``, so its T_m <= max_new_tokens.
    `Rollout.sample_logp` is the log-prob of each drawn token under softmax(logits / temperature)
    with ``temper_logprobs``, else under softmax(logits) (temperature 1).
    """
    if keys is not None and not temperature > 0:
        raise ValueError(f"temperature must be > 0 (or sample greedily), got {temperature}")
    batches = [
        encode_prompts(tokenizer, texts, g, max_new_tokens, max_length, device)
        for texts, g in zip(prompts, group_sizes, strict=True)
    ]
    members = len(batches)
    rows = max(b.group_ids.shape[0] for b in batches)
    padded = torch.stack(
        [
            F.pad(torch.ones_like(b.group_ids, dtype=torch.bool), (0, rows - b.group_ids.shape[0]))
            for b in batches
        ]
    )
    parts = [
        (b.distinct_ids, b.distinct_mask, F.pad(b.group_ids, (0, rows - b.group_ids.shape[0])))
        for b in batches
    ]
    decoder = forward.decoder(MemberPrompts.stack(parts, tokenizer.pad_id), weights)
    key_tensor = (
        None if keys is None else torch.tensor(list(keys), dtype=torch.int64, device=device)
    )
    logits = decoder.prefill()
    done = ~padded.to(logits.device)
    running = torch.ones(members, dtype=torch.bool, device=logits.device)
    lengths = [max_new_tokens] * members
    tokens, logps, masks = [], [], []
    for step in range(max_new_tokens):
        active = ~done & running[:, None]
        lp_temperature = temperature if temper_logprobs else 1.0
        tok, lp = next_tokens(
            logits, active, tokenizer.pad_id, temperature, key_tensor, step, lp_temperature
        )
        tokens.append(tok)
        logps.append(lp)
        masks.append(active.long())
        done = done | (tok == tokenizer.eos_id)
        finished = done.all(dim=1) & running
        if bool(finished.any()):  # one host sync per decode step
            for m in finished.nonzero()[:, 0].tolist():
                lengths[m] = step + 1
            running = running & ~finished
        if step == max_new_tokens - 1 or not bool(running.any()):
            break
        logits = decoder.step(tok, active)
    stacked = [torch.stack(x, dim=2) for x in (tokens, logps, masks)]  # [M, B, T]
    return [
        _rollout(
            tokenizer, batch, *(x[m, : batch.group_ids.shape[0], : lengths[m]] for x in stacked)
        )
        for m, batch in enumerate(batches)
    ]


def rows_of(rollouts: Sequence[Rollout], pad_id: int) -> MemberRows:
    """The `MemberRows` of one rollout per member."""
    return MemberRows.stack(
        [(r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask) for r in rollouts],
        pad_id,
    )


def sample(
    policy: Policy,
    prompts: list[str],
    group_size: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    key: int | None = 0,
    reference: bool = False,
) -> Rollout:
    """`decode` of one policy (its current weights, or its reference with ``reference``):
    ``group_size`` completions per prompt drawn with stream ``key`` (None: greedy)."""
    weights = None if reference else [policy_weights(policy)]
    return decode(
        forward_for(policy),
        weights,
        policy.tokenizer,
        [prompts],
        [group_size],
        max_new_tokens,
        None if key is None else [key],
        temperature,
        policy.max_length,
        policy.device,
    )[0]


def score(
    policy: Policy, rollout: Rollout, reference: bool = False, full: bool = False
) -> TokenOutputs:
    """Per-token outputs [B, T] of one policy on a rollout's completions (with gradients unless
    the caller disables them)."""
    out = forward_for(policy).score(
        rows_of([rollout], policy.tokenizer.pad_id),
        None if reference else [policy_weights(policy)],
        full,
    )
    return TokenOutputs(*(None if x is None else x[0] for x in out))


def _decode_completions(
    tokenizer: TextTokenizer, completion_ids: torch.Tensor, completion_mask: torch.Tensor
) -> list[str]:
    """Decode each row's masked tokens, dropping a final EOS (each distinct row once)."""
    eos = tokenizer.eos_id
    decoded: dict[tuple[int, ...], str] = {}
    texts = []
    for ids, mask in zip(completion_ids.tolist(), completion_mask.tolist(), strict=True):
        kept = tuple(i for i, m in zip(ids, mask, strict=True) if m)
        if kept and kept[-1] == eos:
            kept = kept[:-1]
        if kept not in decoded:
            decoded[kept] = tokenizer.decode(list(kept))
        texts.append(decoded[kept])
    return texts


def encode_pairs(
    tokenizer: TextTokenizer,
    prompts: list[str],
    completions: list[str],
    max_len: int | None = None,
    device: str | torch.device = "cpu",
) -> Rollout:
    """Build a `Rollout` from given (prompt, completion) texts, e.g. demonstrations.

    Prompt tokens are ``[bos] + encode(prompt)`` (left-padded), completion tokens are
    ``encode(completion) + [eos]`` (right-padded). If a row is longer than `max_len`, the
    completion keeps at most ``max_len - 1`` tokens (cut on the right, possibly losing EOS)
    and the prompt keeps its last ``max_len - len(completion)`` tokens. `sample_logp` is
    zeros, `group_ids` is ``arange(B)``, so `score` works on the result.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    if max_len is not None and max_len < 2:
        raise ValueError(f"max_len must be >= 2, got {max_len}")
    p_rows, c_rows = [], []
    for prompt, completion in zip(prompts, completions, strict=True):
        p = [tokenizer.bos_id, *tokenizer.encode(prompt)]
        c = [*tokenizer.encode(completion), tokenizer.eos_id]
        if max_len is not None and len(p) + len(c) > max_len:
            c = c[: max_len - 1]
            p = p[-(max_len - len(c)) :]
        p_rows.append(p)
        c_rows.append(c)
    prompt_ids, prompt_mask = _pad(p_rows, tokenizer.pad_id, left=True)
    completion_ids, completion_mask = _pad(c_rows, tokenizer.pad_id, left=False)
    n = len(prompts)
    return Rollout(
        prompt_ids=prompt_ids.to(device),
        prompt_mask=prompt_mask.to(device),
        completion_ids=completion_ids.to(device),
        completion_mask=completion_mask.to(device),
        sample_logp=torch.zeros(completion_ids.shape, dtype=torch.float32, device=device),
        group_ids=torch.arange(n, device=device),
        texts=list(completions),
        prompts=list(prompts),
    )
