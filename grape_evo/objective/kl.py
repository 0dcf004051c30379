"""Per-token KL(pi_theta || pi_ref) estimators: ``(logp, ref_logp) -> Tensor[B, T]``.

With d = log pi_theta(y_t) - log pi_ref(y_t) and y_t ~ pi_theta (Schulman 2020, "Approximating
KL divergence"): ``k1`` = d (unbiased, can be negative), ``k2`` = d^2 / 2 (biased, low
variance), ``k3`` = exp(-d) + d - 1 (unbiased, always >= 0; GRPO's choice, unclamped as in
TRL), ``k3_clamped`` = min(k3, 10) (verl's ``low_var_kl``), ``abs`` = |d|.
"""

from __future__ import annotations

import sympy as sp
import torch
from torch import Tensor

from grape_evo.objective.registry import KL_ESTIMATORS
from grape_evo.objective.symbolic import Symbols as S
from grape_evo.objective.symbolic import num

_D = S.d
_REF = "Schulman 2020, Approximating KL divergence"


@KL_ESTIMATORS.register("k1", symbolic=lambda: _D, reference=_REF)
def k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """d = log pi_theta - log pi_ref."""
    return logp - ref_logp


@KL_ESTIMATORS.register("k2", symbolic=lambda: _D**2 / 2, reference=_REF)
def k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """d^2 / 2."""
    return 0.5 * (logp - ref_logp) ** 2


@KL_ESTIMATORS.register("k3", symbolic=lambda: sp.exp(-_D) + _D - 1, reference=_REF)
def k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """exp(-d) + d - 1 >= 0."""
    return _k3_of(logp - ref_logp)


def _k3_of(d: Tensor) -> Tensor:
    return torch.expm1(-d) + d


K3_CLAMP = 10.0
_D_CLAMP = 20.0


@KL_ESTIMATORS.register(
    "k3_clamped",
    symbolic=lambda: sp.Min(sp.exp(-_D) + _D - 1, num(K3_CLAMP)),
    reference=f"{_REF}; verl kl_penalty 'low_var_kl' (clamped to [-10, 10])",
)
def k3_clamped(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """min(exp(-d) + d - 1, 10), d first clamped to [-20, 20]; zero gradient where clamped.

    verl's ``low_var_kl`` / ``k3``: the clamp bounds the penalty (and its gradient) of tokens on
    which policy and reference disagree strongly. Clamping d keeps exp finite, so the gradient
    is 0 there, not NaN; at |d| = 20 the estimate is already >= 19, so the clamp of d never
    changes the value.
    """
    return _k3_of((logp - ref_logp).clamp(-_D_CLAMP, _D_CLAMP)).clamp(max=K3_CLAMP)


@KL_ESTIMATORS.register("abs", symbolic=lambda: sp.Abs(_D), reference="|d|")
def abs_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """|d|."""
    return (logp - ref_logp).abs()
