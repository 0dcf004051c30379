"""Group sampling (`sample`: `decode` of one policy) on both forwards, rollout masks, and
log-probs of given pairs (`score`).

Random draws come from the counter-based streams: token j of row b is drawn with
``uniforms(key, b, j)``, so an independent sampler that recomputes the whole forward at every step
with the same uniforms must draw the same tokens.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from model_helpers import make_eos_likely

from grape_evo.policy import (
    CharTokenizer,
    Policy,
    Rollout,
    encode_pairs,
    forward_for,
    sample,
    score,
    stream_key,
)
from grape_evo.policy.stacked_gpt2 import StackedGPT2
from grape_evo.policy.streams import uniforms
from grape_evo.policy.transformers_forward import TransformersForward

Make = Callable[..., Policy]
EosBias = Callable[[Policy, int, float], object]
PROMPTS = ["12+34=", "7+8=", "100+250="]


@torch.no_grad()
def _sample_without_cache(
    policy: Policy,
    tok: CharTokenizer,
    prompts: list[str],
    group_size: int,
    max_new_tokens: int,
    key: int | None,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference sampler: recompute transformers' full forward over everything so far at every
    step; draw with the uniforms of (key, row, step), or greedily for key None."""
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
        if key is None:
            choice = last.argmax(-1)
        else:  # inverse CDF: the number of cumulative probabilities at or below u * total
            cdf = F.softmax(last / temperature, -1).cumsum(-1)
            u = uniforms(torch.tensor([key]), len(rows), len(toks))[0, :, None]
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


def _eos_more_likely(
    policy: Policy, tok: CharTokenizer, path: str, bias: float, hook: EosBias
) -> None:
    """Raise the EOS logit by about ``bias`` on the given path: with the forward ``hook`` on the
    LM head (the policy then runs the transformers forward), or by an edit of its weights (which
    keeps the stacked fast path)."""
    if path == "transformers":
        hook(policy, tok.eos_id, bias)
    else:
        make_eos_likely(dict(policy.lm.named_parameters()), tok.eos_id, bias / 4)
    want = TransformersForward if path == "transformers" else StackedGPT2
    assert isinstance(forward_for(policy), want)


PATHS = ["stacked", "transformers"]


def test_shapes_groups_and_prompt_layout(make_policy: Make, tok: CharTokenizer) -> None:
    r = sample(make_policy(), PROMPTS, group_size=4, max_new_tokens=6, key=0)
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


@pytest.mark.parametrize("path", PATHS)
def test_same_key_same_rollout(make_policy: Make, path: str) -> None:
    policy = make_policy()
    policy.fast_path = path == "stacked"
    a = sample(policy, PROMPTS, group_size=3, max_new_tokens=8, key=stream_key(7))
    b = sample(policy, PROMPTS, group_size=3, max_new_tokens=8, key=stream_key(7))
    c = sample(policy, PROMPTS, group_size=3, max_new_tokens=8, key=stream_key(8))
    _assert_same(a, b)
    assert not torch.equal(a.completion_ids, c.completion_ids)


@pytest.mark.parametrize(
    ("path", "bias", "temperature", "greedy"),
    [
        ("transformers", 0.0, 1.0, False),
        ("transformers", 3.0, 1.0, False),
        ("transformers", 3.0, 0.7, False),
        ("transformers", 3.0, 1.0, True),
        ("stacked", 0.0, 1.0, False),
        ("stacked", 3.0, 1.0, False),
        ("stacked", 3.0, 0.7, False),
        ("stacked", 3.0, 1.0, True),
    ],
)
def test_kv_cache_matches_full_recompute(
    make_policy: Make,
    tok: CharTokenizer,
    eos_bias: EosBias,
    path: str,
    bias: float,
    temperature: float,
    greedy: bool,
) -> None:
    policy = make_policy(seed=1)
    _eos_more_likely(policy, tok, path, bias, eos_bias)
    key = None if greedy else stream_key(3)
    r = sample(policy, PROMPTS, 4, max_new_tokens=12, temperature=temperature, key=key)
    ids, mask, logp = _sample_without_cache(policy, tok, PROMPTS, 4, 12, key, temperature)
    assert torch.equal(r.completion_ids, ids)
    assert torch.equal(r.completion_mask, mask)
    torch.testing.assert_close(r.sample_logp, logp, atol=1e-5, rtol=0)
    if bias and not greedy:  # some rows stopped early: padding after EOS is exercised
        assert (mask == 0).any()


@pytest.mark.parametrize(
    ("lora_rank", "path"), [(0, "transformers"), (0, "stacked"), (4, "transformers")]
)
def test_sample_logp_equals_recomputed_logp(
    make_policy: Make, tok: CharTokenizer, eos_bias: EosBias, lora_rank: int, path: str
) -> None:
    policy = make_policy(seed=2, lora_rank=lora_rank, value_head=True)
    _eos_more_likely(policy, tok, path, 3.0, eos_bias)
    for temperature in (1.0, 0.5):
        r = sample(policy, PROMPTS, 4, 10, temperature=temperature, key=stream_key(1))
        with torch.no_grad():
            out = score(policy, r)
        torch.testing.assert_close(out.logp, r.sample_logp, atol=1e-5, rtol=0)
        assert out.values is not None and out.values.shape == r.sample_logp.shape


@pytest.mark.parametrize("path", PATHS)
def test_masks_after_eos(
    make_policy: Make, tok: CharTokenizer, eos_bias: EosBias, path: str
) -> None:
    policy = make_policy(seed=4)
    _eos_more_likely(policy, tok, path, 3.0, eos_bias)
    r = sample(policy, PROMPTS, 6, max_new_tokens=12, key=stream_key(5))
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


@pytest.mark.parametrize("path", PATHS)
def test_stops_when_all_rows_done(
    make_policy: Make, tok: CharTokenizer, eos_bias: EosBias, path: str
) -> None:
    policy = make_policy()
    # EOS is (almost surely) every row's first token: p(other) < 1e-19, and key 0 draws an
    # ordinary uniform there (no hash fixed point, see test_streams)
    _eos_more_likely(policy, tok, path, 50.0, eos_bias)
    r = sample(policy, PROMPTS, 2, max_new_tokens=10, key=0)
    assert r.completion_ids.shape == (6, 1)
    assert r.completion_ids[:, 0].tolist() == [tok.eos_id] * 6
    assert r.texts == [""] * 6


@pytest.mark.parametrize("path", PATHS)
def test_greedy_is_deterministic_argmax(make_policy: Make, tok: CharTokenizer, path: str) -> None:
    policy = make_policy(seed=9)
    policy.fast_path = path == "stacked"
    a = sample(policy, PROMPTS, 2, 5, key=None)
    b = sample(policy, PROMPTS, 2, 5, key=None)
    _assert_same(a, b)
    assert torch.equal(a.completion_ids[0::2], a.completion_ids[1::2])  # identical within group
    # first greedy token of prompt 0 = argmax of the next-token logits after the prompt
    row = [tok.bos_id, *tok.encode(PROMPTS[0])]
    with torch.no_grad():
        logits = policy.lm(input_ids=torch.tensor([row])).logits[0, -1]
    assert a.completion_ids[0, 0].item() == int(logits.argmax())


def test_train_mode_kept_and_length_limit(make_policy: Make) -> None:
    policy = make_policy()
    policy.train()
    sample(policy, PROMPTS[:1], 1, 3, key=0)
    assert policy.training
    with pytest.raises(ValueError, match="maximum length 128"):
        sample(policy, PROMPTS[:1], 1, 125, key=0)
    with pytest.raises(ValueError, match="temperature"):
        sample(policy, PROMPTS[:1], 1, 3, temperature=0.0)
    with pytest.raises(ValueError, match="group_size"):
        sample(policy, PROMPTS[:1], 0, 3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        sample(policy, PROMPTS[:1], 1, 0)


def test_reference_sampling_and_logprobs_with_lora(make_policy: Make) -> None:
    policy = make_policy(lora_rank=4)
    with torch.no_grad():
        for p in policy.trainable_parameters():
            p.add_(0.3 * torch.randn_like(p))
    r = sample(policy, PROMPTS, 2, 6, key=0, reference=True)
    with torch.no_grad():
        ref = score(policy, r, reference=True)
        cur = score(policy, r)
    torch.testing.assert_close(ref.logp, r.sample_logp, atol=1e-5, rtol=0)
    assert (cur.logp - ref.logp).abs().max() > 1e-3


def test_reference_sampling_full_finetune_is_the_frozen_copy(make_policy: Make) -> None:
    """After `freeze_reference` and a change of the weights, sampling the reference draws what
    the unchanged policy draws (same seed, same weights, same key)."""
    policy, unchanged = make_policy(seed=6), make_policy(seed=6)
    policy.freeze_reference()
    with torch.no_grad():
        for p in policy.trainable_parameters():
            p.add_(0.3 * torch.randn_like(p))
    ref = sample(policy, PROMPTS, 3, 8, key=stream_key(4), reference=True)
    _assert_same(ref, sample(unchanged, PROMPTS, 3, 8, key=stream_key(4)))
    cur = sample(policy, PROMPTS, 3, 8, key=stream_key(4))
    assert not torch.equal(cur.completion_ids, ref.completion_ids)


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
    out = score(policy, r)
    assert out.logp.shape == (2, 3) and out.logp[0, 2] == 0 and torch.all(out.logp[:, :2] < 0)
    out.logp.sum().backward()  # differentiable, e.g. for SFT
    assert all(p.grad is not None for p in policy.trainable_parameters())


def test_encode_pairs_truncates(tok: CharTokenizer) -> None:
    r = encode_pairs(tok, ["123456"], ["abcdef"], max_len=5)
    # completion keeps max_len-1 = 4 tokens (EOS cut), prompt keeps its last token
    assert r.completion_ids.tolist() == [[14, 15, 16, 17]]
    assert r.prompt_ids.tolist() == [[10]]


@pytest.mark.parametrize("path", PATHS)
def test_non_finite_logits_raise(make_policy: Make, path: str) -> None:
    policy = make_policy()
    policy.fast_path = path == "stacked"
    with torch.no_grad():
        policy.hf_model.transformer.ln_f.bias.fill_(float("nan"))
    with pytest.raises(ValueError, match="inf or nan"):
        sample(policy, PROMPTS, 2, 3, key=0)
