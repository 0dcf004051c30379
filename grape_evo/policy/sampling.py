"""Batched group sampling with a KV cache, and token log-probs of (prompt, completion) batches.

Shapes: N prompts, G completions per prompt, B = N * G rows (the G rows of one prompt are
contiguous), P prompt tokens (left-padded), T completion tokens (right-padded).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from grape_evo.policy.model import LogProbOutput, Policy, position_ids_from_mask
from grape_evo.policy.tokenizer import TextTokenizer

__all__ = ["Rollout", "completion_logprobs", "encode_pairs", "sample"]


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


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into ([R, W] ids, [R, W] mask)."""
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r) :] = 1
    return ids, mask


def _right_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists into ([R, W] ids, [R, W] mask)."""
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
    return ids, mask


def _draw(
    logits: torch.Tensor, temperature: float, generator: torch.Generator | None, greedy: bool
) -> torch.Tensor:
    """Next tokens [B] from float32 logits [B, V]."""
    if greedy:
        return logits.argmax(dim=-1)
    probs = F.softmax(logits / temperature, dim=-1)
    if generator is not None and generator.device.type != probs.device.type:
        # Sample where the generator lives so a seeded CPU generator reproduces on any device.
        return torch.multinomial(probs.to(generator.device), 1, generator=generator).to(
            logits.device
        )[:, 0]
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


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

    One forward over the (left-padded) prompts with ``use_cache=True``, then one token per
    step for all B rows at once, extending the attention mask and position ids. Rows that
    emitted EOS emit pad (mask 0) afterwards; the loop stops when every row is done or after
    `max_new_tokens` steps, so T <= max_new_tokens. Sampling is from
    softmax(logits / temperature) with ``torch.multinomial(..., generator=generator)``
    (argmax when `greedy`); `Rollout.sample_logp` is always the temperature-1 log-prob. Runs
    in eval mode under ``no_grad`` (the caller's train/eval mode is restored). Inside
    ``policy.reference()`` it samples from the reference policy.
    """
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not greedy and not temperature > 0:
        raise ValueError(f"temperature must be > 0 (or use greedy=True), got {temperature}")
    device = policy.device
    pad, eos = tokenizer.pad_id, tokenizer.eos_id
    encoded = [[tokenizer.bos_id, *tokenizer.encode(p)] for p in prompts]
    row_prompts = [p for p in prompts for _ in range(group_size)]
    prompt_ids, prompt_mask = _left_pad([e for e in encoded for _ in range(group_size)], pad)
    limit = policy.max_length
    if limit is not None and prompt_ids.shape[1] + max_new_tokens > limit:
        raise ValueError(
            f"prompt length {prompt_ids.shape[1]} + max_new_tokens {max_new_tokens} exceeds "
            f"the model's maximum length {limit}"
        )
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    n_rows = prompt_ids.shape[0]
    group_ids = torch.arange(len(prompts), device=device).repeat_interleave(group_size)

    was_training = policy.training
    policy.eval()
    try:
        logits, cache, _ = policy.run_lm(
            prompt_ids,
            prompt_mask,
            position_ids_from_mask(prompt_mask),
            use_cache=True,
            logits_to_keep=1,
        )
        next_logits = logits[:, -1].float()
        attn = prompt_mask
        next_pos = prompt_mask.sum(-1, keepdim=True)  # [B, 1] position of the next token
        done = torch.zeros(n_rows, dtype=torch.bool, device=device)
        pad_t = torch.full((n_rows,), pad, dtype=torch.long, device=device)
        tokens: list[torch.Tensor] = []
        logps: list[torch.Tensor] = []
        masks: list[torch.Tensor] = []
        for step in range(max_new_tokens):
            active = ~done
            tok = torch.where(active, _draw(next_logits, temperature, generator, greedy), pad_t)
            lp = F.log_softmax(next_logits, dim=-1).gather(-1, tok[:, None])[:, 0]
            tokens.append(tok)
            logps.append(torch.where(active, lp, torch.zeros_like(lp)))
            masks.append(active.long())
            done = done | (tok == eos)
            if step == max_new_tokens - 1 or bool(done.all()):
                break
            attn = torch.cat([attn, active.long()[:, None]], dim=1)
            logits, cache, _ = policy.run_lm(
                tok[:, None], attn, next_pos, cache=cache, use_cache=True, logits_to_keep=1
            )
            next_logits = logits[:, -1].float()
            next_pos = next_pos + active.long()[:, None]
    finally:
        policy.train(was_training)

    completion_ids = torch.stack(tokens, dim=1)
    completion_mask = torch.stack(masks, dim=1)
    sample_logp = torch.stack(logps, dim=1)
    texts = _decode_completions(tokenizer, completion_ids, completion_mask)
    return Rollout(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        sample_logp=sample_logp,
        group_ids=group_ids,
        texts=texts,
        prompts=row_prompts,
    )


def _decode_completions(
    tokenizer: TextTokenizer, completion_ids: torch.Tensor, completion_mask: torch.Tensor
) -> list[str]:
    """Decode each row's masked tokens, dropping a final EOS."""
    eos = tokenizer.eos_id
    texts = []
    for ids, mask in zip(completion_ids.tolist(), completion_mask.tolist(), strict=True):
        kept = [i for i, m in zip(ids, mask, strict=True) if m]
        if kept and kept[-1] == eos:
            kept = kept[:-1]
        texts.append(tokenizer.decode(kept))
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
    prompt_ids, prompt_mask = _left_pad(p_rows, tokenizer.pad_id)
    completion_ids, completion_mask = _right_pad(c_rows, tokenizer.pad_id)
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
