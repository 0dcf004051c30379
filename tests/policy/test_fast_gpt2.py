"""The lean GPT-2 forward (`fast_gpt2`) computes what transformers' forward computes.

* Logits and final hidden states at every scored position equal the HF forward's (float32,
  atol 1e-5) on left-padded batches with shared prompts, shared completion prefixes, padding
  after EOS and a hole in the completion mask, for each supported GELU.
* `Policy.forward_logprobs` (policy, reference, value head) and `sample` (same generator seed:
  the same tokens and log-probs) agree between the fast path and ``fast_path = False``.
* LoRA, hooks and other non-plain models fall back to the transformers forward.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from model_helpers import tiny_gpt2

from grape_evo.policy import (
    CharTokenizer,
    Policy,
    completion_logprobs,
    encode_pairs,
    fast_gpt2,
    position_ids_from_mask,
    sample,
)

Make = Callable[..., Policy]
# Two groups of identical prompts (so prompt and completion prefixes are shared), a
# completion that ends early (right padding) and prompts of different lengths (left padding).
PAIRS = [
    ("12+34=", "46"),
    ("12+34=", "47"),
    ("12+34=", "46"),
    ("7+8=", "15"),
    ("7+8=", ""),
    ("100+250=", "350"),
    ("100+250=", "3"),
]


def _batch(tok: CharTokenizer, hole: bool = False) -> tuple[torch.Tensor, torch.Tensor, int]:
    rollout = encode_pairs(tok, [p for p, _ in PAIRS], [c for _, c in PAIRS])
    mask = rollout.attention_mask.clone()
    if hole:  # a masked token between real ones: the mask alone decides what is attended
        mask[0, rollout.prompt_ids.shape[1] + 1] = 0
    return rollout.input_ids, mask, int(rollout.completion_ids.shape[1])


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]
ATOL = {"cpu": 1e-5, "cuda": 1e-4}  # CUDA kernels (SDPA, GEMM) reduce in other orders


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation", ["gelu_pytorch_tanh", "gelu_new", "gelu"])
@pytest.mark.parametrize("hole", [False, True])
def test_logits_equal_transformers(
    tok: CharTokenizer, activation: str, hole: bool, device: str
) -> None:
    lm = tiny_gpt2(activation=activation).to(device)
    assert fast_gpt2.supports(lm)
    ids, mask, t = (x.to(device) if isinstance(x, torch.Tensor) else x for x in _batch(tok, hole))
    with torch.no_grad():
        out = lm(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids_from_mask(mask),
            output_hidden_states=True,
        )
        logits, hidden, index = fast_gpt2.completion_logits(lm, ids, mask, t)
    length = ids.shape[1]
    want_logits = out.logits[:, length - t - 1 : length - 1]
    want_hidden = out.hidden_states[-1][:, length - t - 1 : length - 1]
    real = mask[:, -t:].bool()  # positions whose predicted token is real
    assert index.shape == real.shape
    # Shared prompts and completion prefixes are computed once: fewer positions than rows.
    assert logits.shape[0] == hidden.shape[0] == int(index.max()) + 1 < index.numel()
    atol = ATOL[device]
    torch.testing.assert_close(logits[index][real], want_logits[real], atol=atol, rtol=0)
    torch.testing.assert_close(hidden[index][real], want_hidden[real], atol=atol, rtol=0)


def test_single_completion_token(tok: CharTokenizer) -> None:
    lm = tiny_gpt2(activation="gelu_pytorch_tanh")
    ids, mask, _ = _batch(tok)
    with torch.no_grad():
        want = lm(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask))
        logits, _, index = fast_gpt2.completion_logits(lm, ids, mask, 1)
    torch.testing.assert_close(logits[index[:, 0]], want.logits[:, -2], atol=1e-5, rtol=0)


def test_shared_prompts_merges_consecutive_rows() -> None:
    ids = torch.tensor([[0, 5], [0, 5], [6, 7], [0, 5], [0, 5]])
    mask = torch.tensor([[0, 1], [0, 1], [1, 1], [0, 1], [1, 1]])
    distinct, distinct_mask, rows = fast_gpt2.shared_prompts(ids, mask)
    assert rows.tolist() == [0, 0, 1, 2, 3]
    assert torch.equal(distinct[rows], ids) and torch.equal(distinct_mask[rows], mask)


def _both_paths(policy: Policy, fn: Callable[[], object]) -> tuple[object, object]:
    """``fn()`` on the fast path, then on the transformers path."""
    assert policy.fast_lm() is not None
    fast = fn()
    policy.fast_path = False
    try:
        assert policy.fast_lm() is None
        slow = fn()
    finally:
        policy.fast_path = True
    return fast, slow


def test_forward_logprobs_match_on_policy_reference_and_values(
    make_policy: Make, tok: CharTokenizer
) -> None:
    policy = make_policy(seed=3, value_head=True)
    policy.freeze_reference()
    with torch.no_grad():
        for p in policy.lm.parameters():
            p.add_(0.05 * torch.randn_like(p))  # the reference now differs from the policy
    rollout = encode_pairs(tok, [p for p, _ in PAIRS], [c for _, c in PAIRS])

    def score() -> tuple:
        with torch.no_grad():
            cur = completion_logprobs(policy, rollout)
            ref = completion_logprobs(policy, rollout, reference=True)
        return cur, ref

    (fast, fast_ref), (slow, slow_ref) = _both_paths(policy, score)
    for a, b in ((fast, slow), (fast_ref, slow_ref)):
        torch.testing.assert_close(a.logp, b.logp, atol=1e-5, rtol=0)
        torch.testing.assert_close(a.entropy, b.entropy, atol=1e-5, rtol=0)
    assert fast.values is not None and slow.values is not None
    torch.testing.assert_close(fast.values, slow.values, atol=1e-5, rtol=0)
    assert (fast.logp - fast_ref.logp).abs().max() > 1e-3


@pytest.mark.parametrize(("temperature", "greedy"), [(1.0, False), (0.7, False), (1.0, True)])
def test_sample_matches_transformers_path(
    make_policy: Make, tok: CharTokenizer, temperature: float, greedy: bool
) -> None:
    policy = make_policy(seed=5)
    prompts = ["12+34=", "7+8=", "100+250="]

    def draw() -> object:
        gen = torch.Generator().manual_seed(11)
        return sample(policy, tok, prompts, 16, 10, temperature, generator=gen, greedy=greedy)

    fast, slow = _both_paths(policy, draw)
    assert torch.equal(fast.completion_ids, slow.completion_ids)
    assert torch.equal(fast.completion_mask, slow.completion_mask)
    torch.testing.assert_close(fast.sample_logp, slow.sample_logp, atol=1e-5, rtol=0)
    assert fast.texts == slow.texts
    if not greedy:  # some rows emitted EOS before the limit, so padding is exercised
        assert (fast.completion_mask == 0).any()


def test_falls_back_for_lora_hooks_and_switch(make_policy: Make, tok: CharTokenizer) -> None:
    plain = make_policy()
    assert plain.fast_lm() is plain.hf_model
    lora = make_policy(lora_rank=4)
    assert lora.fast_lm() is None
    with lora.reference():
        assert lora.fast_lm() is None
    handle = plain.hf_model.get_output_embeddings().register_forward_hook(lambda *_: None)
    assert plain.fast_lm() is None
    handle.remove()
    assert plain.fast_lm() is not None
    plain.fast_path = False
    assert plain.fast_lm() is None
