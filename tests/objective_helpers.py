"""Batches and a loss-and-gradient comparison shared by the objective tests (importable: pytest
puts tests/ on the path)."""

from __future__ import annotations

import torch

from grape_evo.objective import ObjectiveSpec, PreferenceBatch, RolloutBatch, build_objective

TOL = 1e-6

# three groups of four (one all-equal with a non-dyadic reward), rows right-padded
_REWARDS = [1.0, 0.0, 0.5, 2.0, -1.0, 0.3, 0.3, 1.5, 0.7, 0.7, 0.7, 0.7]
_GROUPS = [0, 0, 0, 0, 5, 5, 5, 5, 9, 9, 9, 9]
_LENGTHS = [5, 3, 4, 1, 2, 5, 4, 3, 5, 2, 1, 4]
# log-ratios spread so that tokens fall inside and outside [0.8, 1.2], for both signs of A
_LOG_RATIOS = [-0.9, -0.3, -0.15, -0.05, 0.0, 0.05, 0.1, 0.15, 0.3, 0.9]


def rollouts() -> RolloutBatch:
    b, t = len(_REWARDS), max(_LENGTHS)
    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1.0 if j < n else 0.0 for j in range(t)] for n in _LENGTHS])
    old = -torch.rand(b, t, generator=g) * 2.0
    pick = torch.randint(len(_LOG_RATIOS), (b, t), generator=g)
    logp = (old + torch.tensor(_LOG_RATIOS)[pick]).requires_grad_(True)
    return RolloutBatch(
        logp=logp,
        old_logp=old,
        ref_logp=old + 0.2 * torch.randn(b, t, generator=g),
        mask=mask,
        rewards=torch.tensor(_REWARDS),
        group_ids=torch.tensor(_GROUPS),
    )


def loss_and_grad(spec: dict, batch) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The objective's loss and its gradient w.r.t. the policy log-probs (flattened)."""
    loss, metrics = build_objective(ObjectiveSpec.from_dict(spec))(batch)
    if isinstance(batch, RolloutBatch):
        leaves = [batch.logp]
    else:
        leaves = [batch.chosen_logp, batch.rejected_logp]
    grads = torch.autograd.grad(loss, leaves)
    return loss.detach(), torch.cat([g.flatten() for g in grads]), metrics


def assert_same(a: dict, b: dict, batch) -> None:
    la, ga, _ = loss_and_grad(a, batch)
    lb, gb, _ = loss_and_grad(b, batch)
    assert torch.isfinite(la) and torch.isfinite(ga).all()
    torch.testing.assert_close(la, lb, rtol=TOL, atol=TOL)
    torch.testing.assert_close(ga, gb, rtol=TOL, atol=TOL)


def pairs() -> PreferenceBatch:
    g = torch.Generator().manual_seed(1)
    n = 16
    chosen = (-torch.rand(n, generator=g, dtype=torch.float64) * 40).requires_grad_(True)
    rejected = (-torch.rand(n, generator=g, dtype=torch.float64) * 40).requires_grad_(True)
    ref_c = chosen.detach() + torch.randn(n, generator=g, dtype=torch.float64) * 8
    ref_r = rejected.detach() + torch.randn(n, generator=g, dtype=torch.float64) * 8
    lengths = torch.randint(1, 20, (2, n), generator=g).to(torch.float64)
    return PreferenceBatch(chosen, rejected, ref_c, ref_r, lengths[0], lengths[1])
