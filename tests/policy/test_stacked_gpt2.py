"""The stacked GPT-2 forward (`stacked_gpt2`) computes what transformers' forward computes.

* Log-distributions (so logits up to a constant), log-probs, entropies and final hidden states at
  every scored position equal the HF forward's (float32, atol 1e-5) on left-padded batches with
  shared prompts, shared completion prefixes, padding after EOS and a hole in the completion
  mask, for each supported GELU; shared prefixes run once.
* `score` (policy, reference, value head) and `sample` (same key: the same tokens and log-probs)
  agree between the fast path and ``fast_path = False``.
* LoRA, hooks and other non-plain models fall back to the transformers forward; transformers'
  own output recorders do not.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from model_helpers import tiny_gpt2

from grape_evo.policy import (
    CharTokenizer,
    MemberRows,
    Policy,
    Rollout,
    encode_pairs,
    forward_for,
    position_ids_from_mask,
    rows_of,
    sample,
    score,
    stream_key,
)
from grape_evo.policy.stacked_gpt2 import StackedGPT2, supports
from grape_evo.policy.transformers_forward import TransformersForward

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


def _rollout(tok: CharTokenizer, pairs: list[tuple[str, str]], hole: bool = False) -> Rollout:
    rollout = encode_pairs(tok, [p for p, _ in pairs], [c for _, c in pairs])
    if not hole:
        return rollout
    mask = rollout.completion_mask.clone()
    mask[0, 1] = 0  # a masked token between real ones: the mask alone decides what is attended
    return dataclasses.replace(rollout, completion_mask=mask)


def _count_head_positions(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of positions each `StackedGPT2._head` call computes, appended as it runs."""
    positions: list[int] = []
    head = StackedGPT2._head

    def counting_head(self: StackedGPT2, w: Any, x: torch.Tensor) -> Any:
        positions.append(x.shape[1])
        return head(self, w, x)

    monkeypatch.setattr(StackedGPT2, "_head", counting_head)
    return positions


def _hf_reference(lm: torch.nn.Module, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' logits [B, T, V] and final hidden states [B, T, H] at the positions that
    predict the completion tokens."""
    ids, mask = rollout.input_ids, rollout.attention_mask
    t = rollout.completion_ids.shape[1]
    out = lm(
        input_ids=ids,
        attention_mask=mask,
        position_ids=position_ids_from_mask(mask),
        output_hidden_states=True,
    )
    length = ids.shape[1]
    scored = slice(length - t - 1, length - 1)
    return out.logits[:, scored], out.hidden_states[-1][:, scored]


def _basis_heads(weights: dict[str, torch.Tensor], width: int) -> list[dict[str, torch.Tensor]]:
    """``width`` members with the same LM weights and value head e_i (bias 0): member i's values
    are coordinate i of the final hidden state."""
    eye = torch.eye(width, device=weights["transformer.wte.weight"].device)
    zero = torch.zeros(1, device=eye.device)
    return [{**weights, "value_head.weight": e[None], "value_head.bias": zero} for e in eye]


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]
ATOL = {"cpu": 1e-5, "cuda": 1e-4}  # CUDA kernels (SDPA, GEMM) reduce in other orders


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation", ["gelu_pytorch_tanh", "gelu_new", "gelu"])
@pytest.mark.parametrize("hole", [False, True])
@pytest.mark.parametrize("dense", [False, True])
def test_logits_equal_transformers(
    tok: CharTokenizer,
    activation: str,
    hole: bool,
    dense: bool,
    device: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lm = tiny_gpt2(activation=activation).to(device)
    assert supports(lm)
    rollout = _rollout(tok, PAIRS, hole).to(device)
    rows = rows_of([rollout], tok.pad_id)
    weights = dict(lm.named_parameters())
    positions = _count_head_positions(monkeypatch)
    forward = StackedGPT2(lm, None)
    forward.dense = dense
    with torch.no_grad():
        want_logits, want_hidden = _hf_reference(lm, rollout)
        want_dist = F.log_softmax(want_logits, -1)
        out = forward.score(rows, [weights], full=True)
        basis = _basis_heads(weights, lm.config.n_embd)
        hidden = forward.score(rows_of([rollout] * len(basis), tok.pad_id), basis).values
    b, t = rollout.completion_ids.shape
    # The tree computes shared prompts and completion prefixes once: fewer positions than
    # tokens; the dense block one position per completion token.
    assert positions[0] < b * t if not dense else positions[0] == b * t
    real = rollout.completion_mask.bool()  # positions whose predicted token is real
    atol = ATOL[device]
    assert out.log_dist is not None and out.log_dist.shape == (1, b, t, tok.vocab_size)
    torch.testing.assert_close(out.log_dist[0][real], want_dist[real], atol=atol, rtol=0)
    want_logp = want_dist.gather(-1, rollout.completion_ids[..., None])[..., 0]
    want_entropy = -(want_dist.exp() * want_dist).sum(-1)
    torch.testing.assert_close(out.logp[0][real], want_logp[real], atol=atol, rtol=0)
    torch.testing.assert_close(out.entropy[0][real], want_entropy[real], atol=atol, rtol=0)
    assert bool((out.logp[0][~real] == 0).all()) and bool((out.entropy[0][~real] == 0).all())
    assert out.values is None and hidden is not None
    got_hidden = hidden.permute(1, 2, 0)  # [B, T, H]
    torch.testing.assert_close(got_hidden[real], want_hidden[real], atol=atol, rtol=0)
    assert bool((got_hidden[~real] == 0).all())
    got_logits = got_hidden @ lm.lm_head.weight.T  # the logits those states give
    torch.testing.assert_close(got_logits[real], want_logits[real], atol=atol, rtol=0)


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        # No prompt repeats: nothing to share, one dense block (every completion token a
        # position).
        ([(f"{i}+{i}=", str(2 * i)) for i in range(10, 74)], "dense"),
        # 64 copies of one row: the tree runs the prompt once and one node per level.
        ([("12+34=", "46464")] * 64, "tree"),
    ],
)
def test_the_cheaper_layout_is_chosen(
    tok: CharTokenizer,
    pairs: list[tuple[str, str]],
    expected: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lm = tiny_gpt2(activation="gelu_pytorch_tanh")
    rollout = _rollout(tok, pairs)
    positions = _count_head_positions(monkeypatch)
    with torch.no_grad():
        out = StackedGPT2(lm, None).score(
            rows_of([rollout], tok.pad_id), [dict(lm.named_parameters())]
        )
        want = F.log_softmax(_hf_reference(lm, rollout)[0], -1)
    b, t = rollout.completion_ids.shape
    distinct_positions = 1 + (t - 1)  # one prompt, then one node per completion position
    assert positions == [b * t] if expected == "dense" else positions == [distinct_positions]
    real = rollout.completion_mask.bool()
    want_logp = want.gather(-1, rollout.completion_ids[..., None])[..., 0]
    torch.testing.assert_close(out.logp[0][real], want_logp[real], atol=1e-5, rtol=0)


@pytest.mark.parametrize("dense", [False, True])
def test_single_completion_token(tok: CharTokenizer, dense: bool) -> None:
    lm = tiny_gpt2(activation="gelu_pytorch_tanh")
    forward = StackedGPT2(lm, None)
    forward.dense = dense
    rollout = _rollout(tok, [(p, "") for p, _ in PAIRS])  # every completion is EOS alone
    assert rollout.completion_ids.shape == (len(PAIRS), 1)
    with torch.no_grad():
        want = F.log_softmax(_hf_reference(lm, rollout)[0], -1)
        out = forward.score(rows_of([rollout], tok.pad_id), [dict(lm.named_parameters())], True)
    assert out.log_dist is not None
    torch.testing.assert_close(out.log_dist[0], want, atol=1e-5, rtol=0)


def _both_paths(policy: Policy, fn: Callable[[], Any]) -> tuple[Any, Any]:
    """``fn()`` on the fast path, then on the transformers path."""
    assert isinstance(forward_for(policy), StackedGPT2)
    fast = fn()
    policy.fast_path = False
    try:
        assert isinstance(forward_for(policy), TransformersForward)
        slow = fn()
    finally:
        policy.fast_path = True
    return fast, slow


def test_score_matches_on_policy_reference_and_values(
    make_policy: Make, tok: CharTokenizer
) -> None:
    policy = make_policy(seed=3, value_head=True)
    policy.freeze_reference()
    with torch.no_grad():
        for p in policy.lm.parameters():
            p.add_(0.05 * torch.randn_like(p))  # the reference now differs from the policy
    rollout = _rollout(tok, PAIRS)

    def both() -> tuple:
        with torch.no_grad():
            return score(policy, rollout, full=True), score(policy, rollout, reference=True)

    (fast, fast_ref), (slow, slow_ref) = _both_paths(policy, both)
    for a, b in ((fast, slow), (fast_ref, slow_ref)):
        torch.testing.assert_close(a.logp, b.logp, atol=1e-5, rtol=0)
        torch.testing.assert_close(a.entropy, b.entropy, atol=1e-5, rtol=0)
    assert fast.values is not None and slow.values is not None
    torch.testing.assert_close(fast.values, slow.values, atol=1e-5, rtol=0)
    assert fast.log_dist is not None and slow.log_dist is not None
    real = rollout.completion_mask.bool()
    torch.testing.assert_close(fast.log_dist[real], slow.log_dist[real], atol=1e-5, rtol=0)
    assert fast_ref.values is None and slow_ref.values is None
    assert (fast.logp - fast_ref.logp).abs().max() > 1e-3


@pytest.mark.parametrize(("temperature", "greedy"), [(1.0, False), (0.7, False), (1.0, True)])
def test_sample_matches_transformers_path(
    make_policy: Make, temperature: float, greedy: bool
) -> None:
    policy = make_policy(seed=5)
    prompts = ["12+34=", "7+8=", "100+250="]
    key = None if greedy else stream_key(11)
    fast, slow = _both_paths(policy, lambda: sample(policy, prompts, 16, 10, temperature, key))
    assert torch.equal(fast.completion_ids, slow.completion_ids)
    assert torch.equal(fast.completion_mask, slow.completion_mask)
    torch.testing.assert_close(fast.sample_logp, slow.sample_logp, atol=1e-5, rtol=0)
    assert fast.texts == slow.texts
    if not greedy:  # some rows emitted EOS before the limit, so padding is exercised
        assert (fast.completion_mask == 0).any()


def test_falls_back_for_lora_hooks_and_switch(make_policy: Make) -> None:
    plain = make_policy()
    assert supports(plain.hf_model) and isinstance(forward_for(plain), StackedGPT2)
    lora = make_policy(lora_rank=4)
    assert not supports(lora.lm) and isinstance(forward_for(lora), TransformersForward)
    with lora.reference():
        assert isinstance(forward_for(lora), TransformersForward)
    handle = plain.hf_model.get_output_embeddings().register_forward_hook(lambda *_: None)
    assert isinstance(forward_for(plain), TransformersForward)
    handle.remove()
    assert isinstance(forward_for(plain), StackedGPT2)
    plain.fast_path = False
    assert isinstance(forward_for(plain), TransformersForward)
    plain.fast_path = True
    plain.freeze_reference()
    assert plain.reference_lm is not None
    # The reference runs on the same forward: a hook on it alone also forces the fallback.
    handle = plain.reference_lm.transformer.register_forward_pre_hook(lambda *_: None)
    assert isinstance(forward_for(plain), TransformersForward)
    handle.remove()
    assert isinstance(forward_for(plain), StackedGPT2)


def test_output_recorders_keep_the_fast_path(make_policy: Make, tok: CharTokenizer) -> None:
    """transformers installs output-recording hooks the first time ``output_hidden_states`` is
    used; they change no output, so the stacked forward still applies (and still agrees)."""
    policy = make_policy(seed=2)
    with torch.no_grad():
        policy.lm(input_ids=torch.tensor([[tok.bos_id, 5]]), output_hidden_states=True)
    hooks = [
        h
        for module in policy.lm.modules()
        for h in (*module._forward_hooks.values(), *module._forward_pre_hooks.values())
    ]
    assert hooks  # the recorders this test is about are there
    assert supports(policy.lm) and isinstance(forward_for(policy), StackedGPT2)
    rollout = _rollout(tok, PAIRS)
    with torch.no_grad():
        fast, slow = _both_paths(policy, lambda: score(policy, rollout))
    torch.testing.assert_close(fast.logp, slow.logp, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "config",
    [
        {"activation": "relu"},
        {"add_cross_attention": True},
        {"scale_attn_weights": False},
        {"scale_attn_by_inverse_layer_idx": True},
        {"reorder_and_upcast_attn": True},
    ],
)
def test_unsupported_gpt2_variants(config: dict[str, Any]) -> None:
    assert not supports(tiny_gpt2(**config))


def test_unsupported_dropout_head_bias_and_global_hooks() -> None:
    lm = tiny_gpt2(resid_pdrop=0.1)
    assert supports(lm)  # eval mode: dropout is off
    assert not supports(lm.train())
    lm = tiny_gpt2()
    lm.lm_head.bias = torch.nn.Parameter(torch.zeros(lm.config.vocab_size))
    assert not supports(lm)
    handle = torch.nn.modules.module.register_module_forward_hook(lambda *_: None)
    try:
        assert not supports(tiny_gpt2())
    finally:
        handle.remove()
    assert supports(tiny_gpt2())


def test_rows_of_pads_members(tok: CharTokenizer) -> None:
    """`rows_of` of one rollout is its rows as member 0, prompts merged per group."""
    rollout = _rollout(tok, PAIRS)
    rows = rows_of([rollout], tok.pad_id)
    assert isinstance(rows, MemberRows)
    assert torch.equal(rows.ids[0], rollout.completion_ids)
    assert torch.equal(rows.mask[0], rollout.completion_mask)
    assert rows.prompts.ids.shape[1] == 3  # three runs of equal prompts
    prompt_ids, prompt_mask = rows.prompts.row_prompts()
    assert torch.equal(prompt_ids[0], rollout.prompt_ids)
    assert torch.equal(prompt_mask[0], rollout.prompt_mask)
