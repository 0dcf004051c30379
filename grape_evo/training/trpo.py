"""TRPO's update (Schulman et al. 2015) for M members at once: natural gradient by conjugate
gradient on Fisher-vector products, scaled to the trust region, then a backtracking line search.

The Fisher matrix of member m is the Hessian of its mean token KL(pi_old || pi_theta) over the
full next-token distributions, at theta = theta_old; products with it are taken by double
back-propagation, never forming the matrix. Members share no parameters, so one backward of
the summed KLs gives every member's own product, and every scalar of the algorithm (step sizes,
curvature, accepted fraction) is a vector [M].
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from grape_evo.objective.aggregation import masked_mean
from grape_evo.policy import TokenOutputs


def _flat(grads: tuple[Tensor | None, ...], params: list[list[nn.Parameter]]) -> Tensor:
    """[M, D] per-member flat vectors of ``grads`` (in ``params``' order, zeros for None)."""
    flat = iter(grads)
    rows = []
    for member in params:
        parts = [next(flat) for _ in member]
        rows.append(
            torch.cat(
                [
                    (g if g is not None else torch.zeros_like(p)).reshape(-1)
                    for g, p in zip(parts, member, strict=True)
                ]
            )
        )
    return torch.stack(rows)


def _set(params: list[list[nn.Parameter]], vectors: Tensor) -> None:
    """Write each member's flat vector [D] into its parameters, in place (they may alias a
    weight bank's rows)."""
    with torch.no_grad():
        flat = [p for member in params for p in member]
        for p, piece in zip(flat, _split(vectors, params), strict=True):
            p.copy_(piece.view_as(p))


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor], b: Tensor, iters: int = 10, tol: float = 1e-10
) -> Tensor:
    """Approximately solve A_m x_m = b_m for every row m of b [M, D], given x -> A x row-wise
    (each A_m symmetric positive-definite); a row stops moving once its residual is below tol."""
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr = (r * r).sum(-1)
    for _ in range(iters):
        moving = rr >= tol
        if not bool(moving.any()):
            break
        ap = matvec(p)
        alpha = torch.where(moving, rr / (p * ap).sum(-1).clamp(min=1e-12), 0.0)
        x = x + alpha[:, None] * p
        r = r - alpha[:, None] * ap
        rr_new = (r * r).sum(-1)
        p = r + torch.where(moving, rr_new / rr.clamp(min=1e-30), 0.0)[:, None] * p
        rr = rr_new
    return x


def trust_region_step(
    params: list[list[nn.Parameter]],
    loss_fn: Callable[[], Tensor],
    kl_fn: Callable[[], Tensor],
    max_kl: Tensor,
    damping: Tensor,
    cg_iters: int = 10,
    backtracks: int = 10,
) -> dict[str, Tensor]:
    """One trust-region step of every member on its ``params[m]``.

    ``loss_fn()`` gives the members' surrogate losses [M] to minimise and ``kl_fn()`` their mean
    KL(old || current) [M] (zero at the start). ``max_kl``, ``damping``: [M]. Member m's step
    is ``full_m = d_m sqrt(2 max_kl_m / d_m^T F_m d_m)`` along the CG solution d_m of
    ``F_m d = -g_m``; the line search tries fractions 1, 1/2, 1/4, ... and accepts, per member,
    the first with KL <= max_kl_m and a lower loss. A member with no accepted fraction (or no
    positive curvature) keeps its parameters.

    Returns [M] tensors: ``loss_before``, ``loss_after``, ``trpo_kl`` (KL after the step) and
    ``step_fraction`` (0: rejected).
    """
    flat_params = [p for member in params for p in member]
    losses = loss_fn()
    grads = _flat(torch.autograd.grad(losses.sum(), flat_params, allow_unused=True), params)

    def fisher_vector(v: Tensor) -> Tensor:
        kl_grads = torch.autograd.grad(
            kl_fn().sum(), flat_params, create_graph=True, allow_unused=True
        )
        product = sum(
            (g * v_part.view_as(g)).sum()
            for g, v_part in zip(kl_grads, _split(v, params), strict=True)
            if g is not None
        )
        hv = torch.autograd.grad(product, flat_params, allow_unused=True)
        return _flat(hv, params) + damping[:, None] * v

    direction = conjugate_gradient(fisher_vector, -grads, cg_iters)
    curvature = (direction * fisher_vector(direction)).sum(-1)
    old = _flat(tuple(p.detach() for p in flat_params), params)
    ok = torch.isfinite(curvature) & (curvature > 0)
    scale = torch.where(ok, torch.sqrt(2.0 * max_kl / curvature.clamp(min=1e-30)), 0.0)
    full_step = direction * scale[:, None]
    before = losses.detach()
    result = {
        "loss_before": before,
        "loss_after": before.clone(),
        "trpo_kl": torch.zeros_like(before),
        "step_fraction": torch.zeros_like(before),
    }
    pending = ok.clone()
    with torch.no_grad():
        for k in range(backtracks):
            if not bool(pending.any()):
                break
            fraction = torch.where(pending, 0.5**k, result["step_fraction"])
            _set(params, old + fraction[:, None] * full_step)
            new_loss, kl = loss_fn(), kl_fn()
            accept = pending & (kl <= max_kl) & (new_loss < before)
            result["step_fraction"] = torch.where(accept, 0.5**k, result["step_fraction"])
            result["loss_after"] = torch.where(accept, new_loss, result["loss_after"])
            result["trpo_kl"] = torch.where(accept, kl, result["trpo_kl"])
            pending &= ~accept
        _set(params, old + result["step_fraction"][:, None] * full_step)
    return result


def _split(vectors: Tensor, params: list[list[nn.Parameter]]) -> list[Tensor]:
    """``vectors`` [M, D] cut into one piece per parameter, in ``params``' flat order."""
    pieces = []
    for row, member in zip(vectors, params, strict=True):
        pieces.extend(torch.split(row, [p.numel() for p in member]))
    return pieces


def trust_region_members(
    score: Callable[[bool], list[TokenOutputs]],
    losses: Callable[[list[TokenOutputs]], Tensor],
    masks: list[Tensor],
    params: list[list[nn.Parameter]],
    max_kl: Tensor,
    damping: Tensor,
) -> dict[str, Tensor]:
    """`trust_region_step` of M members on their batches: ``score(full)`` gives each member's
    outputs on its rows (``full``: with its next-token distributions), ``losses(outputs)``
    their losses [M]; the KL is KL(old || current) over the full distributions, the mean over
    each member's completion tokens (``masks[m]`` [B, T])."""
    with torch.no_grad():
        old = [o.log_dist for o in score(True)]

    def kls() -> Tensor:
        per_member = []
        for before, after, mask in zip(old, score(True), masks, strict=True):
            assert before is not None and after.log_dist is not None
            kl = (before.exp() * (before - after.log_dist)).sum(-1)  # [B, T]
            per_member.append(masked_mean(kl, mask))
        return torch.stack(per_member)

    # Fisher-vector products differentiate twice; only the math attention kernel can.
    with sdpa_kernel(SDPBackend.MATH):
        return trust_region_step(params, lambda: losses(score(False)), kls, max_kl, damping)
