"""Policy surrogates: ``(logp, old_logp, adv, mask, **p) -> (loss_mat [B, T], metrics)``.

``logp`` carries gradients; ``old_logp`` (the sampling policy) and ``adv`` are constants.
r_{i,t} = exp(logp - old_logp) is the token importance ratio. The returned matrix is the
per-token loss to *minimise* (the negated surrogate objective); padding positions are zero.
Metrics are detached scalar tensors (no host sync).
"""

from __future__ import annotations

from typing import Any

import sympy as sp
import torch
from torch import Tensor

from grape_evo.objective.aggregation import masked_mean
from grape_evo.objective.registry import SURROGATES
from grape_evo.objective.symbolic import Symbols as S
from grape_evo.objective.symbolic import clip, num, sg, sigmoid, where

Metrics = dict[str, Tensor]


def _ratio(logp: Tensor, old_logp: Tensor) -> Tensor:
    return torch.exp(logp - old_logp.detach())


KL_AFTER_UPDATE = "kl_after_update"
"""Metric the trainer passes to ``Objective.end_step``: :func:`old_to_new_kl` measured with the
policy after the last update epoch on the rollout batch (read by ``kl_penalty``'s adaptive
beta)."""


def old_to_new_kl(logp: Tensor, old_logp: Tensor, mask: Tensor) -> Tensor:
    """k3 estimate of KL(pi_old || pi_theta) on tokens sampled by pi_old, a detached scalar.

    mean over valid tokens of (r - 1) - log r, r = exp(logp - old_logp) (>= 0, unbiased).
    """
    return _mean_k3((logp - old_logp).detach(), mask)


def _mean_k3(log_r: Tensor, mask: Tensor) -> Tensor:
    return masked_mean(torch.expm1(log_r) - log_r, mask)


def ratio_metrics(ratio: Tensor, mask: Tensor) -> Metrics:
    """The ratio's mean, min and max over valid tokens (1 where there is none) and approx_kl,
    :func:`old_to_new_kl` at the current parameters (before this update)."""
    r = ratio.detach()
    valid = mask.bool()
    low = torch.where(valid, r, torch.inf).amin()
    high = torch.where(valid, r, -torch.inf).amax()
    one = torch.ones((), dtype=r.dtype, device=r.device)
    return {
        "ratio_mean": masked_mean(r, mask),
        "ratio_min": torch.where(torch.isfinite(low), low, one),
        "ratio_max": torch.where(torch.isfinite(high), high, one),
        "approx_kl": _mean_k3(torch.log(r), mask),
    }


def _clipped_objective(
    ratio: Tensor, adv: Tensor, mask: Tensor, clip_low: float, clip_high: float
) -> tuple[Tensor, Tensor]:
    """PPO's min(r A, clip(r, 1 - cl, 1 + ch) A) per token, and the clipped-token indicator."""
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    unclipped_obj = ratio * adv
    clipped_obj = clipped * adv
    was_clipped = (clipped_obj < unclipped_obj).to(ratio.dtype) * mask.to(ratio.dtype)
    return torch.minimum(unclipped_obj, clipped_obj), was_clipped


def _ppo_symbolic(A: sp.Expr, clip_low: float, clip_high: float, dual_clip: float) -> sp.Expr:
    obj = sp.Min(S.ratio * A, clip(S.ratio, 1 - num(clip_low), 1 + num(clip_high)) * A)
    if dual_clip > 0:
        obj = where(A < 0, sp.Max(obj, num(dual_clip) * A), obj)
    return -obj


def _check_dual_clip(clip_low: float, clip_high: float, dual_clip: float) -> str | None:
    if 0.0 < dual_clip <= 1.0:
        return f"parameter 'dual_clip' must be 0 (off) or > 1, got {dual_clip}"
    return None


_CLIP_BOUNDS = {"clip_low": (0.0, 1.0), "clip_high": (0.0, 10.0)}


@SURROGATES.register(
    "reinforce", symbolic=lambda A: -A * S.logp, reference="Williams 1992 (REINFORCE)"
)
def reinforce(logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor) -> tuple[Tensor, Metrics]:
    """L = -A * log pi_theta (no importance ratio, no trust region)."""
    loss = -adv.detach() * logp * mask.to(logp.dtype)
    return loss, ratio_metrics(_ratio(logp, old_logp), mask)


@SURROGATES.register(
    "ppo_clip",
    symbolic=_ppo_symbolic,
    bounds={**_CLIP_BOUNDS, "dual_clip": (0.0, 100.0)},
    check=_check_dual_clip,
    reference="Schulman et al. 2017 (PPO); Yu et al. 2025 (DAPO clip-higher); Ye et al. 2020",
)
def ppo_clip(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float = 0.0,
) -> tuple[Tensor, Metrics]:
    """L = -min(r A, clip(r, 1 - clip_low, 1 + clip_high) A).

    Asymmetric bounds give DAPO's clip-higher. ``dual_clip`` = c > 1 additionally bounds the
    loss of negative-advantage tokens by -c A (Ye et al. 2020, verl's clip_ratio_c); 0 = off.
    Where the clipped branch is active the gradient is exactly zero.
    """
    adv = adv.detach()
    ratio = _ratio(logp, old_logp)
    obj, was_clipped = _clipped_objective(ratio, adv, mask, clip_low, clip_high)
    if dual_clip > 0.0:
        obj = torch.where(adv < 0, torch.maximum(obj, dual_clip * adv), obj)
    m = mask.to(logp.dtype)
    metrics = ratio_metrics(ratio, mask)
    metrics["clip_fraction"] = was_clipped.sum() / m.sum().clamp(min=1.0)
    return -obj * m, metrics


def sequence_ratio(logp: Tensor, old_logp: Tensor, mask: Tensor) -> Tensor:
    """GSPO's s_i = exp(mean_t (logp - old_logp)) over valid tokens, [B] (1 for empty rows)."""
    m = mask.to(logp.dtype)
    log_ratio = ((logp - old_logp.detach()) * m).sum(-1) / m.sum(-1).clamp(min=1.0)
    return torch.exp(log_ratio)


@SURROGATES.register(
    "gspo",
    symbolic=lambda A, clip_low, clip_high: (
        -sp.Min(S.seq_ratio * A, clip(S.seq_ratio, 1 - num(clip_low), 1 + num(clip_high)) * A)
    ),
    bounds=_CLIP_BOUNDS,
    log=("clip_low", "clip_high"),
    reference="Zheng et al. 2025 (GSPO), GSPO-token form",
)
def gspo(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    mask: Tensor,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
) -> tuple[Tensor, Metrics]:
    """L_t = -min(s_{i,t} A, clip(s_{i,t}, 1 - cl, 1 + ch) A), sequence-level ratio.

    s_{i,t} = sg[s_i] * pi_theta(y_t) / sg[pi_theta(y_t)] (GSPO-token): its value is the
    sequence ratio s_i = exp(mean_t log r_{i,t}) and, for a sequence-level advantage, its
    gradient equals GSPO's. Defaults are the paper's (3e-4, 4e-4).
    """
    adv = adv.detach()
    m = mask.to(logp.dtype)
    seq = sequence_ratio(logp, old_logp, mask).detach()
    token_ratio = seq.unsqueeze(-1) * torch.exp(logp - logp.detach())
    obj, was_clipped = _clipped_objective(token_ratio, adv, mask, clip_low, clip_high)
    metrics = ratio_metrics(_ratio(logp, old_logp), mask)
    metrics["clip_fraction"] = was_clipped.sum() / m.sum().clamp(min=1.0)
    return -obj * m, metrics


@SURROGATES.register(
    "cispo",
    symbolic=lambda A, clip_low, clip_high: (
        -sg(clip(S.ratio, 1 - num(clip_low), 1 + num(clip_high))) * A * S.logp
    ),
    bounds={"clip_low": (0.0, 1.0), "clip_high": (0.0, 10.0)},
    reference="MiniMax 2025 (MiniMax-M1, CISPO)",
)
def cispo(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    mask: Tensor,
    clip_low: float = 1.0,
    clip_high: float = 0.28,
) -> tuple[Tensor, Metrics]:
    """L = -sg[clip(r, 1 - clip_low, 1 + clip_high)] * A * log pi_theta.

    The importance weight is clipped and detached, so every token keeps a gradient.
    ``clip_low`` = 1 leaves the weight unbounded below, as in the paper.
    """
    ratio = _ratio(logp, old_logp)
    weight = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high).detach()
    m = mask.to(logp.dtype)
    metrics = ratio_metrics(ratio, mask)
    metrics["clip_fraction"] = masked_mean((weight != ratio.detach()).to(logp.dtype), mask)
    return -weight * adv.detach() * logp * m, metrics


def _sapo_symbolic(A: sp.Expr, tau_pos: float, tau_neg: float) -> sp.Expr:
    def gate(tau: float) -> sp.Expr:
        return 4 / num(tau) * sigmoid(num(tau) * (S.ratio - 1))

    return -where(A > 0, gate(tau_pos) * A, gate(tau_neg) * A)


@SURROGATES.register(
    "sapo",
    symbolic=_sapo_symbolic,
    bounds={"tau_pos": (1e-3, 100.0), "tau_neg": (1e-3, 100.0)},
    reference="Gao et al. 2025 (SAPO, arXiv:2511.20347)",
)
def sapo(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    mask: Tensor,
    tau_pos: float = 1.0,
    tau_neg: float = 1.05,
) -> tuple[Tensor, Metrics]:
    """L = -(4 / tau) * sigmoid(tau * (r - 1)) * A, tau = tau_pos if A > 0 else tau_neg.

    A smooth gate instead of a hard clip: the gradient weight 4 s (1 - s) r (s the sigmoid)
    equals 1 at r = 1 and decays smoothly off-policy.
    """
    adv = adv.detach()
    ratio = _ratio(logp, old_logp)
    tau = torch.where(adv > 0, torch.full_like(adv, tau_pos), torch.full_like(adv, tau_neg))
    gate = (4.0 / tau) * torch.sigmoid(tau * (ratio - 1.0))
    return -gate * adv * mask.to(logp.dtype), ratio_metrics(ratio, mask)


@SURROGATES.register(
    "trpo",
    symbolic=lambda A, max_kl, damping: -S.ratio * A,
    bounds={"max_kl": (1e-6, 1.0), "damping": (0.0, 10.0)},
    log=("max_kl",),
    tags=("trust_region",),
    reference="Schulman et al. 2015 (TRPO)",
)
def trpo(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    mask: Tensor,
    max_kl: float = 0.01,
    damping: float = 0.1,
) -> tuple[Tensor, Metrics]:
    """L = -r A, the importance-sampled surrogate.

    The trust region is enforced by the trainer, not by this loss: it takes a natural-gradient
    step (conjugate gradient on Fisher-vector products with ``damping``) scaled to KL =
    ``max_kl``, then backtracks until the measured KL(old || new) <= ``max_kl`` and the
    surrogate improves.
    """
    ratio = _ratio(logp, old_logp)
    return -ratio * adv.detach() * mask.to(logp.dtype), ratio_metrics(ratio, mask)


def _update_kl_beta(
    state: dict[str, Any], metrics: dict[str, Any], beta: float, target_kl: float, adaptive: bool
) -> dict[str, Any]:
    """PPO paper's rule on d = ``metrics[KL_AFTER_UPDATE]``: beta / 2 when d < target / 1.5,
    beta * 2 when d > 1.5 target. Without that metric beta is left unchanged.
    """
    current = beta if state["kl_beta"] is None else state["kl_beta"]
    kl = metrics.get(KL_AFTER_UPDATE)
    if adaptive and kl is not None:
        if kl < target_kl / 1.5:
            current = current / 2.0
        elif kl > target_kl * 1.5:
            current = current * 2.0
    return {"kl_beta": current}


@SURROGATES.register(
    "kl_penalty",
    symbolic=lambda A, beta, target_kl, adaptive: (
        -S.ratio * A + (S.beta_kl if adaptive else num(beta)) * ((S.ratio - 1) - sp.log(S.ratio))
    ),
    bounds={"beta": (0.0, 100.0), "target_kl": (1e-6, 1.0)},
    log=("beta", "target_kl"),
    update_state=_update_kl_beta,
    tags=("kl_after_update",),
    reference="Schulman et al. 2017 (PPO, arXiv:1707.06347, sec. 4: adaptive KL penalty)",
)
def kl_penalty(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    mask: Tensor,
    beta: float = 1.0,
    target_kl: float = 0.01,
    adaptive: bool = True,
    *,
    kl_beta: float | None = None,
) -> tuple[Tensor, Metrics]:
    """L = -r A + beta_t * [(r - 1) - log r], a penalty on KL(pi_old || pi_theta).

    (r - 1) - log r is the non-negative k3 estimator of KL(old || new) from tokens sampled by
    the old policy. ``beta`` is the initial coefficient; with ``adaptive`` the built objective
    halves or doubles it once per rollout batch (state ``kl_beta``) to track ``target_kl``.
    As in the PPO paper (sec. 4), the KL it compares is d = KL[pi_old, pi_theta] measured after
    the batch's update epochs: the trainer must pass it to ``Objective.end_step`` as the metric
    named :data:`KL_AFTER_UPDATE` (e.g. :func:`old_to_new_kl` from a forward pass after the last
    update). ``approx_kl`` is measured before each update (0 in the first epoch) and is not used.
    Without ``KL_AFTER_UPDATE`` beta does not adapt.
    """
    coef = beta if kl_beta is None else kl_beta
    adv = adv.detach()
    ratio = _ratio(logp, old_logp)
    penalty = (ratio - 1.0) - torch.log(ratio)
    metrics = ratio_metrics(ratio, mask)
    metrics["kl_beta"] = torch.tensor(coef, device=logp.device)
    return (-ratio * adv + coef * penalty) * mask.to(logp.dtype), metrics
