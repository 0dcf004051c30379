"""The forward protocol's member axis: M weight sets scored and decoded in lockstep give each
member exactly what it gets alone, on both implementations.

* `score` of M = 3 members (different weights, prompts, group sizes, row counts and completion
  lengths; value heads on some) equals each member scored alone (M = 1) within 1e-5, on
  `StackedGPT2`, on `TransformersForward` through ``vmap`` and through its per-member loop; the
  two implementations agree for M = 3. Padding rows and positions score 0.
* A member whose weights are its reference's scores exactly (bit for bit) what the reference
  scores on a `StackedGPT2` built for stacked calls, in both layouts.
* `MemberRows.distinct`: the reference scored once on the distinct rows equals it scored on every
  member's rows.
* `decode` of M = 3 members in lockstep (members that stop at different steps, shared and own
  keys) gives each member its rollout alone; greedy decoding (no keys) is the argmax of
  transformers' logits under the member's weights.
* Gradients: a member's loss reaches its own weights only, as when it is scored alone.
* LoRA: members are adapters (and value heads) on the shared base, scored by transformers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch
import torch.nn.functional as F
from model_helpers import make_eos_likely, perturbed
from torch.func import functional_call

from grape_evo.policy import (
    CharTokenizer,
    Forward,
    Policy,
    Rollout,
    TokenOutputs,
    Weights,
    decode,
    encode_pairs,
    forward_for,
    policy_weights,
    position_ids_from_mask,
    rows_of,
    stream_key,
)
from grape_evo.policy.forward import VALUE_KEYS, shared_prompts
from grape_evo.policy.stacked_gpt2 import StackedGPT2
from grape_evo.policy.transformers_forward import TransformersForward

Make = Callable[..., Policy]
# Member 0: 2 prompts x group 3; member 1: 1 long prompt x group 2; member 2: 4 prompts x group 1
# with the longest completion. Rows, prompt widths and completion lengths all differ.
MEMBER_PAIRS = [
    [
        ("12+34=", "46"),
        ("12+34=", "47"),
        ("12+34=", "4"),
        ("7+8=", "15"),
        ("7+8=", "1"),
        ("7+8=", "150"),
    ],
    [("100+250=", "350"), ("100+250=", "35")],
    [("9+9=", "18"), ("1+1=", "2"), ("5+5=", "10"), ("3+4=", "7777")],
]
FORWARDS = ["stacked", "stacked_dense", "vmap", "loop"]


def _rollout(tok: CharTokenizer, pairs: Sequence[tuple[str, str]]) -> Rollout:
    return encode_pairs(tok, [p for p, _ in pairs], [c for _, c in pairs])


def _forward(policy: Policy, kind: str) -> Forward:
    """The stacked forward (as it chooses, or always dense), or the transformers forward with
    or without vmap."""
    if kind.startswith("stacked"):
        stacked = StackedGPT2(policy.lm, policy.reference_lm)
        stacked.dense = True if kind == "stacked_dense" else None
        return stacked
    forward = TransformersForward(policy)
    forward.vmap_ok = kind == "vmap"
    return forward


def _members(policy: Policy, scale: float = 0.05) -> list[Weights]:
    """Three perturbed copies of the policy's weights; member 1 has no value head."""
    base = policy_weights(policy)
    weights = [perturbed(base, seed, scale) for seed in (1, 2, 3)]
    weights[1] = {n: w for n, w in weights[1].items() if n not in VALUE_KEYS}
    return weights


def _assert_member(
    together: TokenOutputs, m: int, alone: TokenOutputs, mask: torch.Tensor, atol: float = 1e-5
) -> None:
    """Member m of a lockstep score equals its score alone on its [b, t] block (mask: its
    completion mask) and is 0 on the padding around it."""
    b, t = mask.shape
    real = mask.bool()
    for name in ("logp", "entropy", "values"):
        got, want = getattr(together, name), getattr(alone, name)
        if want is None:  # no value head of its own: zeros beside members that have one
            assert got is None or bool((got[m] == 0).all()), name
            continue
        torch.testing.assert_close(got[m, :b, :t], want[0], atol=atol, rtol=0, msg=name)
        assert bool((got[m, b:] == 0).all()) and bool((got[m, :, t:] == 0).all()), name
    if alone.log_dist is not None:
        assert together.log_dist is not None
        torch.testing.assert_close(
            together.log_dist[m, :b, :t][real], alone.log_dist[0][real], atol=atol, rtol=0
        )


# ---------------------------------------------------------------------- rows


def test_shared_prompts_merges_consecutive_rows() -> None:
    ids = torch.tensor([[0, 5], [0, 5], [6, 7], [0, 5], [0, 5]])
    mask = torch.tensor([[0, 1], [0, 1], [1, 1], [0, 1], [1, 1]])
    distinct, distinct_mask, rows = shared_prompts(ids, mask)
    assert rows.tolist() == [0, 0, 1, 2, 3]
    assert torch.equal(distinct[rows], ids) and torch.equal(distinct_mask[rows], mask)


def test_member_rows_stack_pads_rows_prompts_and_completions(tok: CharTokenizer) -> None:
    rollouts = [_rollout(tok, pairs) for pairs in MEMBER_PAIRS]
    rows = rows_of(rollouts, tok.pad_id)
    assert rows.ids.shape == (3, 6, 5) and rows.mask.shape == (3, 6, 5)  # most rows, longest T
    assert rows.prompts.ids.shape == (3, 4, 9)  # most distinct prompts, longest prompt
    prompt_ids, prompt_mask = rows.prompts.row_prompts()
    for m, r in enumerate(rollouts):
        b, t = r.completion_ids.shape
        p = r.prompt_ids.shape[1]
        assert torch.equal(rows.ids[m, :b, :t], r.completion_ids)
        assert torch.equal(rows.mask[m, :b, :t], r.completion_mask)
        assert bool((rows.mask[m, b:] == 0).all()) and bool((rows.mask[m, :, t:] == 0).all())
        # Left padding of the prompts: the prompt's own tokens end each row, mask 0 before.
        assert torch.equal(prompt_ids[m, :b, -p:], r.prompt_ids)
        assert torch.equal(prompt_mask[m, :b, -p:], r.prompt_mask)
        assert bool((prompt_mask[m, :b, :-p] == 0).all())
    assert rows.prompts.rows[0].tolist() == [0, 0, 0, 1, 1, 1]
    assert rows.prompts.rows[1].tolist() == [0, 0, 0, 0, 0, 0]  # padding rows read prompt 0
    selected = rows.select([2, 0])
    assert torch.equal(selected.ids, rows.ids[[2, 0]])
    assert torch.equal(selected.prompts.rows, rows.prompts.rows[[2, 0]])


# ---------------------------------------------------------------------- scoring


@pytest.mark.parametrize("kind", FORWARDS)
def test_members_score_what_they_score_alone(
    make_policy: Make, tok: CharTokenizer, kind: str
) -> None:
    policy = make_policy(seed=1, value_head=True)
    forward = _forward(policy, kind)
    weights = _members(policy)
    rollouts = [_rollout(tok, pairs) for pairs in MEMBER_PAIRS]
    with torch.no_grad():
        together = forward.score(rows_of(rollouts, tok.pad_id), weights, full=True)
        assert together.values is not None
        for m, rollout in enumerate(rollouts):
            alone = forward.score(rows_of([rollout], tok.pad_id), weights[m : m + 1], full=True)
            assert (alone.values is None) == (m == 1)
            _assert_member(together, m, alone, rollout.completion_mask)
    if kind == "vmap":
        assert isinstance(forward, TransformersForward) and forward.vmap_ok  # vmap really ran


@pytest.mark.parametrize("dense", [False, True])
def test_a_member_at_its_warm_start_scores_exactly_its_reference(
    make_policy: Make, tok: CharTokenizer, dense: bool
) -> None:
    """With ``stacks`` (an engine whose calls stack weight sets), M = 3 copies of the frozen
    reference's weights score bit for bit the reference's log-probs (M = 1) in the same
    layout: no gap between two LayerNorm formulas becomes a KL gradient that Adam, which
    rescales gradients of any size, would turn into a step."""
    policy = make_policy(seed=4)
    weights = policy_weights(policy)
    with torch.no_grad():  # LayerNorm weights away from 1 and biases away from 0
        for name, value in perturbed(weights, seed=5).items():
            weights[name].copy_(value)
    policy.freeze_reference()
    stacked = StackedGPT2(policy.lm, policy.reference_lm, stacks=True)
    stacked.dense = dense
    rollout = _rollout(tok, MEMBER_PAIRS[0])
    with torch.no_grad():
        reference = stacked.score(rows_of([rollout], tok.pad_id), None)
        together = stacked.score(rows_of([rollout] * 3, tok.pad_id), [weights] * 3)
    for m in range(3):
        assert torch.equal(together.logp[m], reference.logp[0]), m


@pytest.mark.parametrize("dense", [False, True])
def test_stacked_equals_transformers_for_members(
    make_policy: Make, tok: CharTokenizer, dense: bool
) -> None:
    policy = make_policy(seed=2, value_head=True)
    weights = _members(policy)
    rollouts = [_rollout(tok, pairs) for pairs in MEMBER_PAIRS]
    rows = rows_of(rollouts, tok.pad_id)
    transformers = TransformersForward(policy)
    stacked = StackedGPT2(policy.lm, None)
    stacked.dense = dense
    with torch.no_grad():
        fast = stacked.score(rows, weights, full=True)
        slow = transformers.score(rows, weights, full=True)
    assert transformers.vmap_ok
    for name in ("logp", "entropy", "values"):
        torch.testing.assert_close(getattr(fast, name), getattr(slow, name), atol=1e-5, rtol=0)
    real = rows.mask.bool()
    assert fast.log_dist is not None and slow.log_dist is not None
    torch.testing.assert_close(fast.log_dist[real], slow.log_dist[real], atol=1e-5, rtol=0)
    # The members differ, so agreeing is not agreeing on one member.
    assert (fast.logp[0, :2, :2] - fast.logp[2, :2, :2]).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["stacked", "loop"])
def test_distinct_rows_score_the_reference_once(
    make_policy: Make, tok: CharTokenizer, kind: str
) -> None:
    policy = make_policy(seed=3)
    policy.freeze_reference()
    forward = _forward(policy, kind)
    # Members 0 and 1 hold the same rows, member 2 fewer: 6 + 2 + 1 (padding) distinct rows.
    rollouts = [_rollout(tok, MEMBER_PAIRS[0]), _rollout(tok, MEMBER_PAIRS[0])]
    rollouts.append(_rollout(tok, MEMBER_PAIRS[1]))
    rows = rows_of(rollouts, tok.pad_id)
    distinct, index = rows.distinct()
    assert distinct.ids.shape[:2] == (1, 9) and index.shape == (3, 6)
    assert torch.equal(index[0], index[1])
    with torch.no_grad():
        once = forward.score(distinct, None)
        for m in range(3):
            each = forward.score(rows.select([m]), None)
            for name in ("logp", "entropy"):
                got = getattr(once, name)[0][index[m]]
                torch.testing.assert_close(got, getattr(each, name)[0], atol=1e-5, rtol=0)
            assert once.values is None and each.values is None


# ---------------------------------------------------------------------- decoding


def _decode_weights(policy: Policy, tok: CharTokenizer) -> list[Weights]:
    """Three members that stop at different steps: EOS very likely, somewhat likely, as is."""
    weights = [perturbed(policy_weights(policy), seed) for seed in (1, 2, 3)]
    make_eos_likely(weights[0], tok.eos_id, 2.0)
    make_eos_likely(weights[1], tok.eos_id, 1.0)
    return weights


DECODE_PROMPTS = [["12+34=", "7+8="], ["100+250="], ["9+9=", "1+1=", "5+5="]]
GROUPS = [3, 2, 1]


def _assert_same_rollout(a: Rollout, b: Rollout, tol: float = 1e-6) -> None:
    """The same tokens, masks and texts; log-probs within ``tol`` absolute plus ``tol``
    relative (batches of other shapes round float32 sums differently: a few ulps)."""
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert torch.equal(a.completion_mask, b.completion_mask)
    torch.testing.assert_close(a.sample_logp, b.sample_logp, atol=tol, rtol=tol)
    assert a.texts == b.texts and a.prompts == b.prompts
    assert torch.equal(a.prompt_ids, b.prompt_ids) and torch.equal(a.group_ids, b.group_ids)


@pytest.mark.parametrize("kind", ["stacked", "loop"])
def test_decode_members_in_lockstep_equals_alone(
    make_policy: Make, tok: CharTokenizer, kind: str
) -> None:
    policy = make_policy(seed=4)
    forward = _forward(policy, kind)
    weights = _decode_weights(policy, tok)
    keys = [stream_key(0, "sample"), stream_key(0, "sample"), stream_key(1, "sample")]
    together = decode(forward, weights, tok, DECODE_PROMPTS, GROUPS, 10, keys, 0.9)
    for m, rollout in enumerate(together):
        one = slice(m, m + 1)
        args = (tok, DECODE_PROMPTS[one], GROUPS[one], 10, keys[one], 0.9)
        alone = decode(forward, weights[one], *args)[0]
        assert rollout.completion_ids.shape[0] == len(DECODE_PROMPTS[m]) * GROUPS[m]
        _assert_same_rollout(rollout, alone)
    lengths = [r.completion_ids.shape[1] for r in together]
    assert len(set(lengths)) == 3 and max(lengths) == 10  # each member stopped at its own step
    assert bool((together[1].completion_mask == 0).any())  # and rows within a member too


def test_decode_paths_agree_for_members(make_policy: Make, tok: CharTokenizer) -> None:
    policy = make_policy(seed=5)
    weights = _decode_weights(policy, tok)
    keys = [stream_key(2, "sample")] * 3
    args = (tok, DECODE_PROMPTS, GROUPS, 10, keys)
    fast = decode(_forward(policy, "stacked"), weights, *args)
    slow = decode(_forward(policy, "loop"), weights, *args)
    for a, b in zip(fast, slow, strict=True):
        _assert_same_rollout(a, b, tol=1e-5)


def test_members_sharing_a_key_share_random_numbers(make_policy: Make, tok: CharTokenizer) -> None:
    """Same weights, prompts and key: the same rollout (common random numbers); another key:
    another rollout."""
    policy = make_policy(seed=6)
    weights = [policy_weights(policy)] * 3
    keys = [stream_key(3, "sample"), stream_key(3, "sample"), stream_key(4, "sample")]
    prompts = [["12+34=", "7+8="]] * 3
    rollouts = decode(forward_for(policy), weights, tok, prompts, [4] * 3, 8, keys)
    _assert_same_rollout(rollouts[0], rollouts[1], tol=0)
    assert not torch.equal(rollouts[0].completion_ids, rollouts[2].completion_ids)


@pytest.mark.parametrize("kind", ["stacked", "loop"])
def test_greedy_decode_is_argmax(make_policy: Make, tok: CharTokenizer, kind: str) -> None:
    policy = make_policy(seed=7)
    weights = _decode_weights(policy, tok)
    rollouts = decode(_forward(policy, kind), weights, tok, DECODE_PROMPTS, GROUPS, 8, None)
    for w, rollout in zip(weights, rollouts, strict=True):
        mask = rollout.attention_mask
        with torch.no_grad():
            kwargs = {"attention_mask": mask, "position_ids": position_ids_from_mask(mask)}
            logits = functional_call(policy.lm, w, (), {"input_ids": rollout.input_ids, **kwargs})
        t = rollout.completion_ids.shape[1]
        step_logits = logits.logits[:, -t - 1 : -1].float()
        real = rollout.completion_mask.bool()
        assert torch.equal(rollout.completion_ids[real], step_logits.argmax(-1)[real])
        assert bool((rollout.completion_ids[~real] == tok.pad_id).all())
        want = F.log_softmax(step_logits, -1).gather(-1, rollout.completion_ids[..., None])
        torch.testing.assert_close(rollout.sample_logp[real], want[..., 0][real], atol=1e-5, rtol=0)


# ---------------------------------------------------------------------- gradients


def _leaves(weights: Weights) -> Weights:
    return {n: w.detach().clone().requires_grad_(True) for n, w in weights.items()}


def _loss(out: TokenOutputs, m: int, coef: torch.Tensor) -> torch.Tensor:
    """A fixed linear function of member m's logp, entropy and values ([b, t] each; coef
    [3, b, t])."""
    assert out.values is not None
    b, t = coef.shape[1:]
    parts = (out.logp[m], out.entropy[m], out.values[m])
    return sum((c * x[:b, :t]).sum() for c, x in zip(coef, parts, strict=True))


@pytest.mark.parametrize("kind", FORWARDS)
def test_member_gradients_equal_alone_and_stay_in_the_member(
    make_policy: Make, tok: CharTokenizer, kind: str
) -> None:
    policy = make_policy(seed=8, value_head=True)
    forward = _forward(policy, kind)
    members = _members(policy)
    members[1] = {**members[1], **{n: members[0][n] * 0.5 for n in VALUE_KEYS}}
    rollouts = [_rollout(tok, pairs) for pairs in MEMBER_PAIRS]
    rows = rows_of(rollouts, tok.pad_id)
    coef = torch.randn((3, *rows.ids.shape), generator=torch.Generator().manual_seed(0))
    leaves = [_leaves(w) for w in members]
    out = forward.score(rows, leaves)
    losses = [_loss(out, m, coef[:, m]) for m in range(3)]
    own = torch.autograd.grad(losses[0], list(leaves[0].values()), retain_graph=True)
    others = [p for w in leaves[1:] for p in w.values()]
    for g in torch.autograd.grad(losses[0], others, retain_graph=True, allow_unused=True):
        assert g is None or bool((g == 0).all())  # member 0's loss moves only member 0
    assert any(bool((g != 0).any()) for g in own)
    together = torch.autograd.grad(sum(losses), [p for w in leaves for p in w.values()])
    grads = iter(together)
    for m, rollout in enumerate(rollouts):
        alone_leaves = _leaves(members[m])
        alone = forward.score(rows_of([rollout], tok.pad_id), [alone_leaves])
        b, t = rollout.completion_ids.shape
        loss = _loss(alone, 0, coef[:, m, :b, :t])
        want = torch.autograd.grad(loss, list(alone_leaves.values()))
        for name, w in zip(alone_leaves, want, strict=True):
            torch.testing.assert_close(next(grads), w, atol=1e-5, rtol=0, msg=name)
    if kind == "vmap":
        assert isinstance(forward, TransformersForward) and forward.vmap_ok  # vmap really ran


# ---------------------------------------------------------------------- LoRA


def _hf_logp(policy: Policy, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log-probs [B, T] of the completion tokens (0 on padding) and, with a value head, its
    values [B, T], from the policy's own transformers forward."""
    mask = rollout.attention_mask
    t = rollout.completion_ids.shape[1]
    out = policy.lm(
        input_ids=rollout.input_ids,
        attention_mask=mask,
        position_ids=position_ids_from_mask(mask),
        output_hidden_states=True,
    )
    logp = F.log_softmax(out.logits[:, -t - 1 : -1].float(), -1)
    logp = logp.gather(-1, rollout.completion_ids[..., None])[..., 0] * rollout.completion_mask
    values = None
    if policy.value_head is not None:
        hidden = out.hidden_states[-1][:, -t - 1 : -1]
        values = policy.value_head(hidden)[..., 0] * rollout.completion_mask
    return logp, values


@pytest.mark.parametrize("vmap", [True, False])
def test_lora_members_are_adapters(make_policy: Make, tok: CharTokenizer, vmap: bool) -> None:
    policy = make_policy(lora_rank=4, value_head=True)
    forward = forward_for(policy)
    assert isinstance(forward, TransformersForward)
    forward.vmap_ok = vmap
    weights = policy_weights(policy)
    names = list(weights)
    assert names[-2:] == list(VALUE_KEYS) and all("lora_" in n for n in names[:-2])
    assert {id(w) for w in weights.values()} == {id(p) for p in policy.trainable_parameters()}
    members = [perturbed(weights, seed, 0.2) for seed in (1, 2)]  # lora_B != 0: adapters act
    rollouts = [_rollout(tok, MEMBER_PAIRS[0]), _rollout(tok, MEMBER_PAIRS[2])]
    with torch.no_grad():
        together = forward.score(rows_of(rollouts, tok.pad_id), members)
        for m, (member, rollout) in enumerate(zip(members, rollouts, strict=True)):
            alone = make_policy(lora_rank=4, value_head=True)  # the same base (same seed)
            params = dict(alone.trainable_named_parameters())
            for name, w in member.items():
                params[name].copy_(w)
            logp, values = _hf_logp(alone, rollout)
            b, t = logp.shape
            torch.testing.assert_close(together.logp[m, :b, :t], logp, atol=1e-5, rtol=0)
            assert together.values is not None and values is not None
            torch.testing.assert_close(together.values[m, :b, :t], values, atol=1e-5, rtol=0)
        reference = forward.score(rows_of(rollouts[:1], tok.pad_id), None)
        with policy.lm.disable_adapter():
            base, _ = _hf_logp(policy, rollouts[0])
    assert forward.vmap_ok == vmap
    torch.testing.assert_close(reference.logp[0], base, atol=1e-5, rtol=0)
    assert reference.values is None
    assert (together.logp[0, :6, :4] - reference.logp[0]).abs().max() > 1e-3
