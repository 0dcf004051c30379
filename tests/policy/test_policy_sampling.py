"""Group sampling with a KV cache, rollout masks, and log-probs of given pairs."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from grape_evo.policy import (
    CharTokenizer,
    Policy,
    Rollout,
    completion_logprobs,
    encode_pairs,
    sample,
)

Make = Callable[..., Policy]
PROMPTS = ["12+34=", "7+8=", "100+250="]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@torch.no_grad()
def _sample_without_cache(
    policy: Policy,
    tok: CharTokenizer,
    prompts: list[str],
    group_size: int,
    max_new_tokens: int,
    generator: torch.Generator,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference sampler: recompute the full forward over everything so far at every step."""
    rows = [[tok.bos_id, *tok.encode(p)] for p in prompts for _ in range(group_size)]
    width = max(len(r) for r in rows)
    ids = torch.tensor([[tok.pad_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    done = torch.zeros(len(rows), dtype=torch.bool)
    toks, logps, masks = [], [], []
    for _ in range(max_new_tokens):
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = policy.lm(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        last = logits[:, -1].float()
        # Inverse CDF: the number of cumulative probabilities at or below u * total.
        cdf = F.softmax(last / temperature, -1).cumsum(-1)
        u = torch.rand(len(rows), 1, generator=generator)
        choice = (cdf <= u * cdf[:, -1:]).sum(-1)
        live = ~done
        choice = torch.where(live, choice, torch.full_like(choice, tok.pad_id))
        lp = F.log_softmax(last, -1)[torch.arange(len(rows)), choice]
        toks.append(choice)
        logps.append(torch.where(live, lp, torch.zeros_like(lp)))
        masks.append(live.long())
        done = done | (choice == tok.eos_id)
        ids = torch.cat([ids, choice[:, None]], 1)
        mask = torch.cat([mask, live.long()[:, None]], 1)
        if done.all():
            break
    return torch.stack(toks, 1), torch.stack(masks, 1), torch.stack(logps, 1)


def _assert_same(a: Rollout, b: Rollout) -> None:
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert torch.equal(a.completion_mask, b.completion_mask)
    assert torch.equal(a.sample_logp, b.sample_logp)
    assert a.texts == b.texts


def test_shapes_groups_and_prompt_layout(make_policy: Make, tok: CharTokenizer) -> None:
    r = sample(make_policy(), tok, PROMPTS, group_size=4, max_new_tokens=6, generator=_gen(0))
    assert r.completion_ids.shape == r.completion_mask.shape == r.sample_logp.shape
    assert r.completion_ids.shape[0] == 12 and r.completion_ids.shape[1] <= 6
    assert r.group_ids.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert r.prompts == [p for p in PROMPTS for _ in range(4)]
    assert r.sample_logp.dtype == torch.float32
    # "100+250=" is the longest prompt: 1 bos + 8 chars; "7+8=" has 4 pad slots on the left.
    assert r.prompt_ids.shape == (12, 9)
    assert r.prompt_ids[4].tolist() == [0, 0, 0, 0, 1, 11, 67, 12, 71]
    assert r.prompt_mask[4].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1]
    for g in range(3):
        block = r.prompt_ids[4 * g : 4 * g + 4]
        assert torch.equal(block, block[:1].expand_as(block))


def test_same_seed_same_rollout(make_policy: Make, tok: CharTokenizer) -> None:
    policy = make_policy()
    a = sample(policy, tok, PROMPTS, group_size=3, max_new_tokens=8, generator=_gen(7))
    b = sample(policy, tok, PROMPTS, group_size=3, max_new_tokens=8, generator=_gen(7))
    c = sample(policy, tok, PROMPTS, group_size=3, max_new_tokens=8, generator=_gen(8))
    _assert_same(a, b)
    assert not torch.equal(a.completion_ids, c.completion_ids)


@pytest.mark.parametrize(("bias", "temperature"), [(0.0, 1.0), (3.0, 1.0), (3.0, 0.7)])
def test_kv_cache_matches_full_recompute(
    make_policy: Make, tok: CharTokenizer, eos_bias, bias: float, temperature: float
) -> None:
    policy = make_policy(seed=1)
    eos_bias(policy, tok.eos_id, bias)
    r = sample(
        policy, tok, PROMPTS, 4, max_new_tokens=12, temperature=temperature, generator=_gen(3)
    )
    ids, mask, logp = _sample_without_cache(
        policy, tok, PROMPTS, 4, 12, generator=_gen(3), temperature=temperature
    )
    assert torch.equal(r.completion_ids, ids)
    assert torch.equal(r.completion_mask, mask)
    torch.testing.assert_close(r.sample_logp, logp, atol=1e-5, rtol=0)


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_sample_logp_equals_recomputed_logp(
    make_policy: Make, tok: CharTokenizer, eos_bias, lora_rank: int
) -> None:
    policy = make_policy(seed=2, lora_rank=lora_rank, value_head=True)
    eos_bias(policy, tok.eos_id, 3.0)
    for temperature in (1.0, 0.5):
        r = sample(policy, tok, PROMPTS, 4, 10, temperature=temperature, generator=_gen(1))
        with torch.no_grad():
            out = completion_logprobs(policy, r)
        torch.testing.assert_close(out.logp, r.sample_logp, atol=1e-5, rtol=0)
        assert out.values is not None and out.values.shape == r.sample_logp.shape


def test_masks_after_eos(make_policy: Make, tok: CharTokenizer, eos_bias) -> None:
    policy = make_policy(seed=4)
    eos_bias(policy, tok.eos_id, 3.0)
    r = sample(policy, tok, PROMPTS, 6, max_new_tokens=12, generator=_gen(5))
    ids, mask = r.completion_ids.tolist(), r.completion_mask.tolist()
    saw_early_eos = False
    for row_ids, row_mask, text in zip(ids, mask, r.texts, strict=True):
        n = sum(row_mask)
        assert row_mask == [1] * n + [0] * (len(row_mask) - n)  # ones then zeros
        assert all(t == tok.pad_id for t in row_ids[n:])
        assert tok.eos_id not in row_ids[: n - 1]
        if tok.eos_id in row_ids:
            assert row_ids[n - 1] == tok.eos_id  # EOS kept, mask 1
            saw_early_eos = saw_early_eos or n < len(row_mask)
            body = row_ids[: n - 1]
        else:
            assert n == len(row_mask)  # ran to the length limit
            body = row_ids[:n]
        # decode by hand: pad/bos (sampled mid-completion by an untrained model) vanish
        chars = {0: "", 1: "", 3: "<unk>"} | {i + 4: c for i, c in enumerate(tok.alphabet)}
        assert text == "".join(chars[t] for t in body)
    assert saw_early_eos
    assert torch.all(r.sample_logp[r.completion_mask == 0] == 0)
    assert torch.all(r.sample_logp[r.completion_mask == 1] < 0)


def test_stops_when_all_rows_done(make_policy: Make, tok: CharTokenizer, eos_bias) -> None:
    policy = make_policy()
    eos_bias(policy, tok.eos_id, 50.0)  # EOS is (almost surely) the first token of every row
    r = sample(policy, tok, PROMPTS, 2, max_new_tokens=10, generator=_gen(0))
    assert r.completion_ids.shape == (6, 1)
    assert r.completion_ids[:, 0].tolist() == [tok.eos_id] * 6
    assert r.texts == [""] * 6


def test_greedy_is_deterministic_argmax(make_policy: Make, tok: CharTokenizer) -> None:
    policy = make_policy(seed=9)
    a = sample(policy, tok, PROMPTS, 2, 5, greedy=True, generator=_gen(0))
    b = sample(policy, tok, PROMPTS, 2, 5, greedy=True, generator=_gen(1))
    _assert_same(a, b)
    assert torch.equal(a.completion_ids[0::2], a.completion_ids[1::2])  # identical within group
    # first greedy token of prompt 0 = argmax of the next-token logits after the prompt
    row = [tok.bos_id, *tok.encode(PROMPTS[0])]
    with torch.no_grad():
        logits = policy.lm(input_ids=torch.tensor([row])).logits[0, -1]
    assert a.completion_ids[0, 0].item() == int(logits.argmax())


def test_train_mode_restored_and_length_limit(make_policy: Make, tok: CharTokenizer) -> None:
    policy = make_policy()
    policy.train()
    sample(policy, tok, PROMPTS[:1], 1, 3, generator=_gen(0))
    assert policy.training
    with pytest.raises(ValueError, match="maximum length 128"):
        sample(policy, tok, PROMPTS[:1], 1, 125, generator=_gen(0))
    with pytest.raises(ValueError, match="temperature"):
        sample(policy, tok, PROMPTS[:1], 1, 3, temperature=0.0)


def test_reference_sampling_and_logprobs_with_lora(make_policy: Make, tok: CharTokenizer) -> None:
    policy = make_policy(lora_rank=4)
    with torch.no_grad():
        for p in policy.trainable_parameters():
            p.add_(0.3 * torch.randn_like(p))
    with policy.reference():
        r = sample(policy, tok, PROMPTS, 2, 6, generator=_gen(0))
    with torch.no_grad():
        ref = completion_logprobs(policy, r, reference=True)
        cur = completion_logprobs(policy, r)
    torch.testing.assert_close(ref.logp, r.sample_logp, atol=1e-5, rtol=0)
    assert (cur.logp - ref.logp).abs().max() > 1e-3


def test_encode_pairs(make_policy: Make, tok: CharTokenizer) -> None:
    r = encode_pairs(tok, ["1+2=", "10+20="], ["3", "30"], max_len=32)
    # prompts: [bos]+"1+2=" (5) and [bos]+"10+20=" (7); completions "3"+eos and "30"+eos
    assert r.prompt_ids.tolist() == [[0, 0, 1, 5, 67, 6, 71], [1, 5, 4, 67, 6, 4, 71]]
    assert r.prompt_mask.tolist() == [[0, 0, 1, 1, 1, 1, 1], [1] * 7]
    assert r.completion_ids.tolist() == [[7, 2, 0], [7, 4, 2]]
    assert r.completion_mask.tolist() == [[1, 1, 0], [1, 1, 1]]
    assert r.group_ids.tolist() == [0, 1]
    assert torch.all(r.sample_logp == 0)
    policy = make_policy()
    out = completion_logprobs(policy, r)
    assert out.logp.shape == (2, 3) and out.logp[0, 2] == 0 and torch.all(out.logp[:, :2] < 0)
    out.logp.sum().backward()  # differentiable, e.g. for SFT


def test_encode_pairs_truncates(tok: CharTokenizer) -> None:
    r = encode_pairs(tok, ["123456"], ["abcdef"], max_len=5)
    # completion keeps max_len-1 = 4 tokens (EOS cut), prompt keeps its last token
    assert r.completion_ids.tolist() == [[14, 15, 16, 17]]
    assert r.prompt_ids.tolist() == [[10]]


def test_non_finite_logits_raise(make_policy: Make, tok: CharTokenizer) -> None:
    policy = make_policy()
    with torch.no_grad():
        policy.hf_model.transformer.ln_f.bias.fill_(float("nan"))
    with pytest.raises(ValueError, match="inf or nan"):
        sample(policy, tok, PROMPTS, 2, 3, generator=_gen(0))
