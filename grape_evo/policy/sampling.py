"""Batched group sampling with a KV cache, and token log-probs of (prompt, completion) batches.

Shapes: N prompts, G completions per prompt, B = N * G rows (the G rows of one prompt are
contiguous), P prompt tokens (left-padded), T completion tokens (right-padded).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from grape_evo.policy.fast_gpt2 import PrefixTreeDecoder
from grape_evo.policy.model import LogProbOutput, Policy, position_ids_from_mask
from grape_evo.policy.tokenizer import TextTokenizer

__all__ = [
    "PromptBatch",
    "Rollout",
    "build_rollout",
    "completion_logprobs",
    "encode_pairs",
    "encode_prompts",
    "next_tokens",
    "sample",
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
        sample_logp: [B, T] float32, log_softmax(raw logits) of the chosen token (the
            temperature-1 distribution, whatever temperature was sampled at); 0 on padding.
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
    def batch_size(self) -> int:
        return int(self.completion_ids.shape[0])

    @property
    def input_ids(self) -> torch.Tensor:
        """[B, P + T] prompt then completion."""
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        """[B, P + T] prompt mask then completion mask."""
        return torch.cat([self.prompt_mask, self.completion_mask], dim=1)

    @property
    def lengths(self) -> torch.Tensor:
        """[B] number of completion tokens (including EOS)."""
        return self.completion_mask.sum(-1)

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


def _draw(
    logits: torch.Tensor, temperature: float, generator: torch.Generator | None, greedy: bool
) -> torch.Tensor:
    """Next tokens [B] from float32 logits [B, V].

    Inverse-CDF sampling from softmax(logits / temperature): one uniform u per row; the token is
    the first index whose cumulative probability exceeds u * total (kept below the total, so a
    token of probability 0 is never drawn). The distribution is that of ``torch.multinomial``,
    from B random numbers instead of its B * V exponentials, which dominated sampling on CPU.
    The uniforms are drawn where the generator lives, so a seeded CPU generator reproduces on
    any device. Non-finite logits raise ValueError.
    """
    if greedy:
        return logits.argmax(dim=-1)
    cdf = F.softmax(logits / temperature, dim=-1).cumsum(dim=-1)  # [B, V]
    total = cdf[:, -1:]
    if not bool(torch.isfinite(total).all()):
        raise ValueError("cannot sample: the next-token distribution has inf or nan entries")
    gen_device = generator.device if generator is not None else logits.device
    u = torch.rand(total.shape, generator=generator, device=gen_device).to(logits.device)
    below_total = torch.nextafter(total, torch.zeros_like(total))
    return torch.searchsorted(cdf, torch.minimum(u * total, below_total), right=True)[:, 0]


def next_tokens(
    logits: torch.Tensor,
    active: torch.Tensor,
    pad_id: int,
    temperature: float,
    generator: torch.Generator | None,
    greedy: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step of B rows: (tokens [B] long, temperature-1 log-probs [B] float32).

    Draws from float32 ``logits`` [B, V] with `_draw` (which consumes one uniform per row,
    finished rows included); rows not ``active`` [B] get ``pad_id`` and log-prob 0.
    """
    drawn = _draw(logits, temperature, generator, greedy)
    tok = torch.where(active, drawn, torch.full_like(drawn, pad_id))
    lp = F.log_softmax(logits, dim=-1).gather(-1, tok[:, None])[:, 0]
    return tok, torch.where(active, lp, torch.zeros_like(lp))


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


def build_rollout(
    tokenizer: TextTokenizer,
    batch: PromptBatch,
    tokens: list[torch.Tensor],
    logps: list[torch.Tensor],
    masks: list[torch.Tensor],
) -> Rollout:
    """The `Rollout` of a sampling loop: per step, ``tokens`` [B] long, ``logps`` [B] float32
    and ``masks`` [B] long (1 where the row was still generating); T = len(tokens)."""
    completion_ids = torch.stack(tokens, dim=1)
    completion_mask = torch.stack(masks, dim=1)
    return Rollout(
        prompt_ids=batch.distinct_ids[batch.group_ids],
        prompt_mask=batch.distinct_mask[batch.group_ids],
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        sample_logp=torch.stack(logps, dim=1),
        group_ids=batch.group_ids,
        texts=_decode_completions(tokenizer, completion_ids, completion_mask),
        prompts=list(batch.prompts),
    )


class _Decoder(Protocol):
    """Incremental decoding: `prefill` runs the prompts, `step` feeds one token per row."""

    def prefill(self) -> torch.Tensor:
        """Next-token logits [B, V] after the prompts."""
        ...

    def step(self, tokens: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """Feed tokens [B] (real where ``active`` [B] bool); next-token logits [B, V]."""
        ...


class _TransformersDecoder:
    """`_Decoder` on transformers' forward and cache: the attention mask grows by a column of
    ``active`` per step and only active rows advance their position (the reference path)."""

    def __init__(self, policy: Policy, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> None:
        self.policy = policy
        self.prompt_ids = prompt_ids
        self.attn = prompt_mask  # [B, P + steps so far]
        self.next_pos = prompt_mask.sum(-1, keepdim=True)  # [B, 1] position of the next token
        self.cache: Any = None

    def prefill(self) -> torch.Tensor:
        logits, self.cache, _ = self.policy.run_lm(
            self.prompt_ids,
            self.attn,
            position_ids_from_mask(self.attn),
            use_cache=True,
            logits_to_keep=1,
        )
        return logits[:, -1]

    def step(self, tokens: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        real = active.long()[:, None]
        self.attn = torch.cat([self.attn, real], dim=1)
        logits, self.cache, _ = self.policy.run_lm(
            tokens[:, None],
            self.attn,
            self.next_pos,
            cache=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.next_pos = self.next_pos + real
        return logits[:, -1]


def _decoder(
    policy: Policy, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, rows: torch.Tensor
) -> _Decoder:
    """A decoder for B rows whose prompts are rows ``rows`` [B] of the N distinct prompts
    [N, P]: `PrefixTreeDecoder` (one pass per distinct prefix) when `Policy.fast_lm` is
    available, else `_TransformersDecoder` on all B rows."""
    lm = policy.fast_lm()
    if lm is None:
        return _TransformersDecoder(policy, prompt_ids[rows], prompt_mask[rows])
    return PrefixTreeDecoder(lm, prompt_ids, prompt_mask, rows)


@torch.no_grad()
def sample(
    policy: Policy,
    tokenizer: TextTokenizer,
    prompts: list[str],
    group_size: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    greedy: bool = False,
) -> Rollout:
    """Sample `group_size` completions for each prompt with a KV cache.

    One forward over the (left-padded) prompts with a KV cache, then one token per step for all
    B rows at once, extending the attention mask and position ids (with `Policy.fast_lm`: a
    `PrefixTreeDecoder`, which runs each distinct prefix once). Rows that emitted EOS emit pad
    (mask 0) afterwards; the loop stops when every row is done or after `max_new_tokens` steps,
    so T <= max_new_tokens. Tokens are drawn from softmax(logits / temperature) by inverse CDF
    with one ``torch.rand(..., generator=generator)`` per row and step (argmax when `greedy`);
    `Rollout.sample_logp` is always the temperature-1 log-prob. Runs in eval mode under
    ``no_grad`` (the caller's train/eval mode is restored). Inside ``policy.reference()`` it
    samples from the reference policy.
    """
    if not greedy and not temperature > 0:
        raise ValueError(f"temperature must be > 0 (or use greedy=True), got {temperature}")
    device = policy.device
    batch = encode_prompts(
        tokenizer, prompts, group_size, max_new_tokens, policy.max_length, device
    )
    pad, eos = tokenizer.pad_id, tokenizer.eos_id
    n_rows = batch.group_ids.shape[0]

    was_training = policy.training
    policy.eval()
    try:
        decoder = _decoder(policy, batch.distinct_ids, batch.distinct_mask, batch.group_ids)
        next_logits = decoder.prefill().float()
        done = torch.zeros(n_rows, dtype=torch.bool, device=device)
        tokens: list[torch.Tensor] = []
        logps: list[torch.Tensor] = []
        masks: list[torch.Tensor] = []
        for step in range(max_new_tokens):
            active = ~done
            tok, lp = next_tokens(next_logits, active, pad, temperature, generator, greedy)
            tokens.append(tok)
            logps.append(lp)
            masks.append(active.long())
            done = done | (tok == eos)
            if step == max_new_tokens - 1 or bool(done.all()):
                break
            next_logits = decoder.step(tok, active).float()
    finally:
        policy.train(was_training)

    return build_rollout(tokenizer, batch, tokens, logps, masks)


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


def completion_logprobs(policy: Policy, rollout: Rollout, reference: bool = False) -> LogProbOutput:
    """Per-token log-probs/entropies/values [B, T] of the rollout's completions.

    Runs `Policy.forward_logprobs` on prompt + completion (under ``policy.reference()`` when
    `reference`). Gradients flow unless the caller wraps this in ``torch.no_grad()``.
    """
    n_completion = int(rollout.completion_ids.shape[1])
    if reference:
        with policy.reference():
            return policy.forward_logprobs(rollout.input_ids, rollout.attention_mask, n_completion)
    return policy.forward_logprobs(rollout.input_ids, rollout.attention_mask, n_completion)


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
    zeros, `group_ids` is ``arange(B)``, so `completion_logprobs` works on the result.
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
