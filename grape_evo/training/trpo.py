"""A TRPO update (Schulman et al. 2015): natural gradient by conjugate gradient on
Fisher-vector products, scaled to the trust region, then a backtracking line search.

The Fisher matrix is the Hessian of the mean token KL(pi_old || pi_theta) over the full
next-token distributions, at theta = theta_old; products with it are taken by double
back-propagation, never forming the matrix.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


def _flat(tensors: tuple[Tensor | None, ...], params: list[nn.Parameter]) -> Tensor:
    parts = [
        (t if t is not None else torch.zeros_like(p)).reshape(-1)
        for t, p in zip(tensors, params, strict=True)
    ]
    return torch.cat(parts)


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor], b: Tensor, iters: int = 10, tol: float = 1e-10
) -> Tensor:
    """Approximately solve A x = b for symmetric positive-definite A given x -> A x."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r @ r
    for _ in range(iters):
        if rr < tol:
            break
        ap = matvec(p)
        alpha = rr / (p @ ap).clamp(min=1e-12)
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def trpo_step(
    params: list[nn.Parameter],
    loss_fn: Callable[[], Tensor],
    kl_fn: Callable[[], Tensor],
    max_kl: float,
    damping: float,
    cg_iters: int = 10,
    backtracks: int = 10,
) -> dict[str, float]:
    """One trust-region step on ``params``; ``loss_fn`` is the surrogate to minimise and
    ``kl_fn`` the mean KL(old || current) (zero at the starting point).

    Returns the measured KL after the step, the accepted step fraction (0 = rejected, the
    parameters are left unchanged) and the loss before and after.
    """
    loss = loss_fn()
    grads = _flat(torch.autograd.grad(loss, params, allow_unused=True), params)

    def fisher_vector(v: Tensor) -> Tensor:
        kl = kl_fn()
        kl_grad = _flat(
            torch.autograd.grad(kl, params, create_graph=True, allow_unused=True), params
        )
        hv = torch.autograd.grad(kl_grad @ v, params, allow_unused=True)
        return _flat(hv, params) + damping * v

    direction = conjugate_gradient(fisher_vector, -grads, cg_iters)
    curvature = direction @ fisher_vector(direction)
    old = torch.nn.utils.parameters_to_vector(params).detach().clone()
    result = {"loss_before": float(loss.detach()), "trpo_kl": 0.0, "step_fraction": 0.0}
    result["loss_after"] = result["loss_before"]
    if not torch.isfinite(curvature) or curvature <= 0:
        return result
    full_step = direction * torch.sqrt(2.0 * max_kl / curvature)
    with torch.no_grad():
        for k in range(backtracks):
            fraction = 0.5**k
            torch.nn.utils.vector_to_parameters(old + fraction * full_step, params)
            new_loss, kl = float(loss_fn()), float(kl_fn())
            if kl <= max_kl and new_loss < result["loss_before"]:
                result.update(trpo_kl=kl, step_fraction=fraction, loss_after=new_loss)
                return result
        torch.nn.utils.vector_to_parameters(old, params)
    return result
