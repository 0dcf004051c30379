"""The weight bank: a call that reads weight sets as rows of the bank computes, and gets as
gradients, exactly (bit for bit) what the same sets give as separate leaves stacked per call.

* `StackedGPT2.score` on bank rows (every row in order; a subset with a repeat and another
  order; value heads on some sets) equals it on per-set copies, outputs and each set's
  gradients, with `torch.equal`; so do the transformers forward's value heads.
* Each set's own leaves alias its rows: an in-place update of one shows in the next call.
* `bind_grads`: the active sets' gradients are their rows of the bank's, zeroed; the others'
  are None (Adam skips them).
* Sets with other tensors than the first are refused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch
from model_helpers import perturbed

from grape_evo.policy import CharTokenizer, Policy, Weights, encode_pairs, policy_weights, rows_of
from grape_evo.policy.forward import VALUE_KEYS, MemberRows, value_head_of
from grape_evo.policy.stacked_gpt2 import StackedGPT2
from grape_evo.policy.weight_bank import WeightBank

PAIRS = [
    [("12+34=", "46"), ("12+34=", "47"), ("7+8=", "150")],
    [("100+250=", "350"), ("1+1=", "2")],
    [("9+9=", "18"), ("5+5=", "1")],
]


def _sets(policy: Policy) -> list[Weights]:
    """Three different weight sets: no value head, then two with one (a policy with its own
    head, a critic)."""
    base = policy_weights(policy)
    lm = {n: w for n, w in base.items() if n not in VALUE_KEYS}
    return [perturbed(lm, 1), perturbed(base, 2), perturbed(base, 3)]


def _rows(tok: CharTokenizer, order: Sequence[int]) -> MemberRows:
    pairs = [PAIRS[k] for k in order]
    return rows_of(
        [encode_pairs(tok, [p for p, _ in x], [c for _, c in x]) for x in pairs], tok.pad_id
    )


def _leaves(sets: Sequence[Weights]) -> list[dict[str, torch.Tensor]]:
    return [{n: w.detach().clone().requires_grad_() for n, w in s.items()} for s in sets]


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 0, 2)], ids=["every_row", "subset_repeat"])
@pytest.mark.parametrize("dense", [True, False], ids=["dense", "tree"])
def test_bank_rows_score_and_differentiate_as_stacked_leaves(
    make_policy: Callable[..., Policy], tok: CharTokenizer, order: tuple[int, ...], dense: bool
) -> None:
    policy = make_policy(value_head=True)
    sets = _sets(policy)
    bank, separate = WeightBank(sets), _leaves(sets)
    forward = StackedGPT2(policy.lm, None, stacks=True)
    forward.dense = dense
    rows = _rows(tok, [k % 3 for k in range(len(order))])
    bank.bind_grads(range(3))
    ours = forward.score(rows, bank.rows(order))
    theirs = forward.score(rows, [separate[k] for k in order])
    for a, b in zip(ours, theirs, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.equal(a, b)
    assert ours.values is not None  # two of the sets have a value head

    def loss(out: tuple[torch.Tensor | None, ...]) -> torch.Tensor:
        assert out[0] is not None and out[2] is not None
        return (out[0] * torch.arange(1.0, 1.0 + out[0].numel()).view_as(out[0])).sum() + (
            out[2] ** 2
        ).sum()

    loss(ours).backward()
    loss(theirs).backward()
    for k in range(3):
        for name, leaf in separate[k].items():
            mine = bank.sets[k][name].grad
            assert mine is not None
            if k not in order:  # not in the call: its row of the bank's gradient stays zero
                assert leaf.grad is None and not mine.any(), (k, name)
            else:
                assert leaf.grad is not None
                assert torch.equal(mine, leaf.grad), (k, name)


def test_value_heads_of_bank_rows_equal_the_per_set_heads(
    make_policy: Callable[..., Policy],
) -> None:
    policy = make_policy(value_head=True)
    sets = _sets(policy)
    bank = WeightBank(sets)
    width = policy.lm.config.n_embd
    for order in [(0, 1, 2), (1, 2), (2, 1), (0,)]:
        ours = value_head_of(bank.rows(order), width, torch.device("cpu"))
        theirs = value_head_of([sets[k] for k in order], width, torch.device("cpu"))
        if order == (0,):
            assert ours is None and theirs is None
            continue
        assert ours is not None and theirs is not None
        assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1]), order


def test_a_sets_leaves_alias_its_rows(make_policy: Callable[..., Policy]) -> None:
    policy = make_policy()
    sets = _sets(policy)[:1] * 2
    bank = WeightBank(sets)
    name = "transformer.h.0.mlp.c_fc.weight"
    with torch.no_grad():
        bank.sets[1][name].add_(1.0)
    stacked = bank.rows([0, 1]).stacked()[name]
    assert torch.equal(stacked[1], sets[0][name] + 1.0)
    assert torch.equal(stacked[0], sets[0][name])
    assert torch.equal(sets[1][name], sets[0][name])  # the originals are never changed


def test_bind_grads_gives_the_active_sets_zeroed_rows_and_the_others_none(
    make_policy: Callable[..., Policy],
) -> None:
    policy = make_policy(value_head=True)
    bank = WeightBank(_sets(policy))
    name = "transformer.wpe.weight"
    bank.bind_grads([0, 2])
    assert all(p.grad is None for p in bank.sets[1].values())
    grad = bank.sets[2][name].grad
    assert grad is not None and not grad.any()
    grad.fill_(3.0)  # a view: it writes the bank's gradient
    assert torch.equal(bank.lm[name].grad[2], torch.full_like(grad, 3.0))
    bank.bind_grads([1])
    assert all(p.grad is None for k in (0, 2) for p in bank.sets[k].values())
    head = bank.sets[1][VALUE_KEYS[0]].grad
    assert head is not None and not head.any()
    assert not bank.lm[name].grad.any()  # zeroed


def test_sets_with_other_tensors_are_refused(make_policy: Callable[..., Policy]) -> None:
    sets = _sets(make_policy())
    del sets[1]["transformer.wpe.weight"]
    with pytest.raises(ValueError, match="weight set 1 has other tensors"):
        WeightBank(sets)
