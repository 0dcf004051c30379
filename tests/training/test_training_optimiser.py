"""The engine's optimiser over all members at once equals one optimiser per member."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from grape_evo.training.members import adam, clip_grad_norms_


def _members(counts: list[int], scales: list[float], seed: int) -> list[list[nn.Parameter]]:
    """Members with ``counts[i]`` tensors of assorted sizes, gradients of size ``scales[i]``."""
    gen = torch.Generator().manual_seed(seed)
    members = []
    for count, scale in zip(counts, scales, strict=True):
        own = []
        for _ in range(count):
            p = nn.Parameter(
                torch.randn(int(torch.randint(1, 40, (1,), generator=gen)), generator=gen)
            )
            p.grad = scale * torch.randn(p.shape, generator=gen)
            own.append(p)
        members.append(own)
    return members


def _copy(members: list[list[nn.Parameter]]) -> list[list[nn.Parameter]]:
    copies = []
    for own in members:
        copies.append([nn.Parameter(p.detach().clone()) for p in own])
        for p, q in zip(own, copies[-1], strict=True):
            q.grad = None if p.grad is None else p.grad.clone()
    return copies


@pytest.mark.parametrize("max_norm", [1.0, 0.05, math.inf])
def test_clipping_every_member_at_once_is_torch_clipping_each(max_norm: float) -> None:
    # Members of 3, 5 and 0 gradients (policy, policy + critic, none), norms from 1e-3 to 1e2:
    # some clipped, some not.
    members = _members([3, 5, 5, 0, 3], [1e-3, 1.0, 100.0, 1.0, 0.1], seed=0)
    alone = _copy(members)
    expected = [torch.nn.utils.clip_grad_norm_(own, max_norm) for own in alone]
    norms = clip_grad_norms_(members, max_norm)
    assert norms.shape == (5,)
    assert float(norms[3]) == 0.0
    for i, (ours, theirs) in enumerate(zip(members, alone, strict=True)):
        assert torch.equal(norms[i], expected[i]), i
        for p, q in zip(ours, theirs, strict=True):
            assert torch.equal(p.grad, q.grad), i


def test_clipping_scales_to_the_limit() -> None:
    # One member, gradients (3, 4): norm 5, clipped to 1 -> (0.6, 0.8) up to the 1e-6 guard.
    p = nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([3.0, 4.0])
    norms = clip_grad_norms_([[p]], 1.0)
    assert float(norms[0]) == pytest.approx(5.0)
    torch.testing.assert_close(p.grad, torch.tensor([0.6, 0.8]) * 5 / (5 + 1e-6))


def test_members_of_one_rate_share_a_group_and_train_as_alone() -> None:
    # lrs 1e-3, 1e-3, 3e-4: two groups; every member's steps equal its own Adam's, and a
    # member without gradients in a step keeps its weights and moments.
    members = _members([3, 3, 2], [1.0, 0.5, 2.0], seed=1)
    alone = _copy(members)
    lrs = [1e-3, 1e-3, 3e-4]
    shared = adam(members, lrs, torch.device("cpu"))
    own = [torch.optim.Adam(a, lr=lr, fused=True) for a, lr in zip(alone, lrs, strict=True)]
    assert len(shared.param_groups) == 2
    for step in range(3):
        if step == 1:  # member 1 sits this update out
            for p, q in zip(members[1], alone[1], strict=True):
                p.grad = q.grad = None
        elif step == 2:
            for p, q in zip(members[1], alone[1], strict=True):
                p.grad = torch.ones_like(p)
                q.grad = torch.ones_like(q)
        before = [p.detach().clone() for p in members[1]]
        shared.step()
        if step == 1:
            assert all(torch.equal(p, b) for p, b in zip(members[1], before, strict=True))
        for optimiser in own:
            optimiser.step()
        for ours, theirs in zip(members, alone, strict=True):
            for p, q in zip(ours, theirs, strict=True):
                assert torch.equal(p, q), step
