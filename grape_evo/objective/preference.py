"""Pairwise preference losses: ``(pairs: PreferenceBatch, beta, **p) -> Tensor[B]`` (per pair).

Notation: a = log pi(y_w) - log pi_ref(y_w) and b = log pi(y_l) - log pi_ref(y_l) are the
chosen and rejected log-ratios (token sums; Delta_w and Delta_l in formulas) and h = a - b.
Formulas follow the papers; where TRL makes a different choice the docstring says so.
"""

from __future__ import annotations

import sympy as sp
import torch
import torch.nn.functional as F
from torch import Tensor

from grape_evo.objective.batch import PreferenceBatch
from grape_evo.objective.registry import PREFERENCE_LOSSES
from grape_evo.objective.symbolic import Symbols as S
from grape_evo.objective.symbolic import num, relu, sigmoid

_A = S.delta_w
_B = S.delta_l
_H = _A - _B
_BETA_BOUNDS = {"beta": (1e-4, 100.0)}
_SMOOTHING = {"label_smoothing": (0.0, 0.5)}


def log_ratios(pairs: PreferenceBatch) -> tuple[Tensor, Tensor]:
    return (
        pairs.chosen_logp - pairs.ref_chosen_logp.detach(),
        pairs.rejected_logp - pairs.ref_rejected_logp.detach(),
    )


def _logsig(x: sp.Expr) -> sp.Expr:
    return sp.log(sigmoid(x))


def _smoothed_logistic(z: Tensor, label_smoothing: float) -> Tensor:
    """-(1 - eps) log sigmoid(z) - eps log sigmoid(-z) (conservative DPO when eps > 0)."""
    return -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


def _smoothed_symbolic(z: sp.Expr, label_smoothing: float) -> sp.Expr:
    eps = num(label_smoothing)
    return -(1 - eps) * _logsig(z) - eps * _logsig(-z)


@PREFERENCE_LOSSES.register(
    "sigmoid",
    symbolic=lambda beta, label_smoothing: _smoothed_symbolic(num(beta) * _H, label_smoothing),
    bounds={**_BETA_BOUNDS, **_SMOOTHING},
    log=("beta",),
    reference="Rafailov et al. 2023 (DPO); Mitchell 2023 (cDPO label smoothing)",
)
def sigmoid_loss(pairs: PreferenceBatch, beta: float = 0.1, label_smoothing: float = 0.0) -> Tensor:
    """-log sigmoid(beta h) (label-smoothed: cDPO)."""
    a, b = log_ratios(pairs)
    return _smoothed_logistic(beta * (a - b), label_smoothing)


@PREFERENCE_LOSSES.register(
    "sigmoid_norm",
    symbolic=lambda beta, label_smoothing: _smoothed_symbolic(
        num(beta) * (_A / S.len_w - _B / S.len_l), label_smoothing
    ),
    bounds={**_BETA_BOUNDS, **_SMOOTHING},
    log=("beta",),
    reference="DPO on length-normalised log-ratios (cf. SimPO's length normalisation, R-DPO)",
)
def sigmoid_norm(pairs: PreferenceBatch, beta: float = 1.0, label_smoothing: float = 0.0) -> Tensor:
    """-log sigmoid(beta (a / |y_w| - b / |y_l|)): DPO with per-token log-ratios."""
    a, b = log_ratios(pairs)
    z = beta * (a / pairs.chosen_len.clamp(min=1.0) - b / pairs.rejected_len.clamp(min=1.0))
    return _smoothed_logistic(z, label_smoothing)


@PREFERENCE_LOSSES.register(
    "hinge",
    symbolic=lambda beta: relu(1 - num(beta) * _H),
    bounds=_BETA_BOUNDS,
    log=("beta",),
    reference="Zhao et al. 2023 (SLiC-HF), TRL loss_type='hinge'",
)
def hinge(pairs: PreferenceBatch, beta: float = 0.1) -> Tensor:
    """max(0, 1 - beta h)."""
    a, b = log_ratios(pairs)
    return torch.relu(1.0 - beta * (a - b))


def _ipo_symbolic(beta: float, length_normalize: bool) -> sp.Expr:
    h = _A / S.len_w - _B / S.len_l if length_normalize else _H
    return (h - 1 / (2 * num(beta))) ** 2


@PREFERENCE_LOSSES.register(
    "ipo",
    symbolic=_ipo_symbolic,
    bounds=_BETA_BOUNDS,
    log=("beta",),
    reference="Azar et al. 2023 (IPO)",
)
def ipo(pairs: PreferenceBatch, beta: float = 0.1, length_normalize: bool = False) -> Tensor:
    """(h - 1 / (2 beta))^2, zero at the log-ratio gap h = 1 / (2 beta).

    The paper's Eq. 17 is written on sequence log-probabilities (``length_normalize=False``,
    our default); TRL divides every log-ratio by its length first (``length_normalize=True``),
    noting that the IPO authors confirmed the paper's reported results used that form.
    """
    a, b = log_ratios(pairs)
    if length_normalize:
        a = a / pairs.chosen_len.clamp(min=1.0)
        b = b / pairs.rejected_len.clamp(min=1.0)
    return (a - b - 1.0 / (2.0 * beta)) ** 2


@PREFERENCE_LOSSES.register(
    "robust",
    symbolic=lambda beta, label_smoothing: (
        (
            -(1 - num(label_smoothing)) * _logsig(num(beta) * _H)
            + num(label_smoothing) * _logsig(-num(beta) * _H)
        )
        / (1 - 2 * num(label_smoothing))
    ),
    bounds={**_BETA_BOUNDS, "label_smoothing": (0.0, 0.49)},
    log=("beta",),
    reference="Chowdhury et al. 2024 (robust DPO), TRL loss_type='robust'",
)
def robust(pairs: PreferenceBatch, beta: float = 0.1, label_smoothing: float = 0.1) -> Tensor:
    """[-(1 - e) log sigmoid(beta h) + e log sigmoid(-beta h)] / (1 - 2e), e the flip rate.

    An unbiased loss under labels flipped with probability e.
    """
    a, b = log_ratios(pairs)
    z = beta * (a - b)
    e = label_smoothing
    return (-(1.0 - e) * F.logsigmoid(z) + e * F.logsigmoid(-z)) / (1.0 - 2.0 * e)


@PREFERENCE_LOSSES.register(
    "sppo_hard",
    symbolic=lambda beta: (_A - 1 / (2 * num(beta))) ** 2 + (_B + 1 / (2 * num(beta))) ** 2,
    bounds=_BETA_BOUNDS,
    log=("beta",),
    reference="Wu et al. 2024 (SPPO, hard-label form), TRL loss_type='sppo_hard'",
)
def sppo_hard(pairs: PreferenceBatch, beta: float = 0.1) -> Tensor:
    """(a - 1 / (2 beta))^2 + (b + 1 / (2 beta))^2: push the winner up, the loser down."""
    a, b = log_ratios(pairs)
    return (a - 0.5 / beta) ** 2 + (b + 0.5 / beta) ** 2


@PREFERENCE_LOSSES.register(
    "nca_pair",
    symbolic=lambda beta: (
        -_logsig(num(beta) * _A) - _logsig(-num(beta) * _A) / 2 - _logsig(-num(beta) * _B) / 2
    ),
    bounds=_BETA_BOUNDS,
    log=("beta",),
    reference="Chen et al. 2024 (NCA), TRL loss_type='nca_pair'",
)
def nca_pair(pairs: PreferenceBatch, beta: float = 0.1) -> Tensor:
    """-log sigmoid(beta a) - 1/2 log sigmoid(-beta a) - 1/2 log sigmoid(-beta b)."""
    a, b = log_ratios(pairs)
    return -F.logsigmoid(beta * a) - 0.5 * F.logsigmoid(-beta * a) - 0.5 * F.logsigmoid(-beta * b)


@PREFERENCE_LOSSES.register(
    "apo_zero",
    symbolic=lambda beta: 1 - sigmoid(num(beta) * _A) + sigmoid(num(beta) * _B),
    bounds=_BETA_BOUNDS,
    log=("beta",),
    reference="D'Oosterlinck et al. 2024 (APO-zero), TRL loss_type='apo_zero'",
)
def apo_zero(pairs: PreferenceBatch, beta: float = 0.1) -> Tensor:
    """(1 - sigmoid(beta a)) + sigmoid(beta b): raise the winner, lower the loser."""
    a, b = log_ratios(pairs)
    return (1.0 - torch.sigmoid(beta * a)) + torch.sigmoid(beta * b)


@PREFERENCE_LOSSES.register(
    "apo_down",
    symbolic=lambda beta: sigmoid(num(beta) * _A) + 1 - sigmoid(num(beta) * _H),
    bounds=_BETA_BOUNDS,
    log=("beta",),
    reference="D'Oosterlinck et al. 2024 (APO-down), TRL loss_type='apo_down'",
)
def apo_down(pairs: PreferenceBatch, beta: float = 0.1) -> Tensor:
    """sigmoid(beta a) + (1 - sigmoid(beta h)): lower both, the loser more."""
    a, b = log_ratios(pairs)
    return torch.sigmoid(beta * a) + (1.0 - torch.sigmoid(beta * (a - b)))


def _discopop_symbolic(beta: float, tau: float) -> sp.Expr:
    z = num(beta) * _H
    modulation = sigmoid(z / num(tau))
    return -_logsig(z) * (1 - modulation) + sp.exp(-z) * modulation


@PREFERENCE_LOSSES.register(
    "discopop",
    symbolic=_discopop_symbolic,
    bounds={**_BETA_BOUNDS, "tau": (1e-4, 10.0)},
    log=("beta", "tau"),
    reference="Chan et al. 2024 (DiscoPOP / LRML), TRL loss_type='discopop'",
)
def discopop(pairs: PreferenceBatch, beta: float = 0.1, tau: float = 0.05) -> Tensor:
    """Log-ratio modulated loss: (1 - m) (-log sigmoid(z)) + m exp(-z), z = beta h,
    m = sigmoid(z / tau): a blend of the logistic (DPO) and exponential losses.
    """
    a, b = log_ratios(pairs)
    z = beta * (a - b)
    modulation = torch.sigmoid(z / tau)
    return -F.logsigmoid(z) * (1.0 - modulation) + torch.exp(-z) * modulation


@PREFERENCE_LOSSES.register(
    "simpo",
    symbolic=lambda beta, gamma, label_smoothing: _smoothed_symbolic(
        num(beta) * (S.logp_w / S.len_w - S.logp_l / S.len_l) - num(gamma), label_smoothing
    ),
    bounds={**_BETA_BOUNDS, "gamma": (0.0, 100.0), **_SMOOTHING},
    log=("beta",),
    reference="Meng et al. 2024 (SimPO); TRL CPO loss_type='simpo'",
)
def simpo(
    pairs: PreferenceBatch, beta: float = 2.0, gamma: float = 0.5, label_smoothing: float = 0.0
) -> Tensor:
    """-log sigmoid(beta (log pi(y_w) / |y_w| - log pi(y_l) / |y_l|) - gamma).

    Reference-free and length-normalised, with target margin ``gamma`` (the paper's gamma,
    TRL's ``simpo_gamma``).
    """
    z = beta * (
        pairs.chosen_logp / pairs.chosen_len.clamp(min=1.0)
        - pairs.rejected_logp / pairs.rejected_len.clamp(min=1.0)
    )
    return _smoothed_logistic(z - gamma, label_smoothing)
