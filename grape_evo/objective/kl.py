"""Per-token KL(pi_theta || pi_ref) estimators: ``(logp, ref_logp) -> Tensor[B, T]``.

With d = log pi_theta(y_t) - log pi_ref(y_t) and y_t ~ pi_theta (Schulman 2020, "Approximating
KL divergence"): ``k1`` = d (unbiased, can be negative), ``k2`` = d^2 / 2 (biased, low
variance), ``k3`` = exp(-d) + d - 1 (unbiased, always >= 0; GRPO's choice), ``abs`` = |d|.
"""

from __future__ import annotations

import sympy as sp
import torch
from torch import Tensor

from grape_evo.objective.registry import KL_ESTIMATORS
from grape_evo.objective.symbolic import Symbols as S

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
    d = logp - ref_logp
    return torch.expm1(-d) + d


@KL_ESTIMATORS.register("abs", symbolic=lambda: sp.Abs(_D), reference="|d|")
def abs_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """|d|."""
    return (logp - ref_logp).abs()
