"""Loss aggregation over tokens: ``(loss_mat: Tensor[B, T], mask: Tensor[B, T], **p) -> scalar``.

Masked tokens never contribute. Sequence-level modes average over the sequences that have at
least one completion token (a fully masked row is ignored, not counted as a zero). An empty
batch (no valid token) aggregates to 0.
"""

from __future__ import annotations

import sympy as sp
from torch import Tensor

from grape_evo.objective.registry import AGGREGATIONS
from grape_evo.objective.symbolic import Symbols as S
from grape_evo.objective.symbolic import num


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over the positions where ``mask`` is 1 (0 when there are none)."""
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp(min=1.0)


def _per_token_sum(loss_mat: Tensor, mask: Tensor) -> Tensor:
    """[B]: sum over each sequence's valid tokens."""
    return (loss_mat * mask.to(loss_mat.dtype)).sum(-1)


def _mean_over_valid_rows(per_row: Tensor, mask: Tensor) -> Tensor:
    valid = (mask.sum(-1) > 0).to(per_row.dtype)
    return (per_row * valid).sum() / valid.sum().clamp(min=1.0)


def _sum_tokens(loss: sp.Expr) -> sp.Expr:
    return sp.Sum(sp.Sum(loss, (S.t, 1, S.len_i)), (S.i, 1, S.B))


@AGGREGATIONS.register(
    "token_mean",
    symbolic=lambda loss: _sum_tokens(loss) / S.N,
    reference="DAPO (Yu et al. 2025), TRL/verl token-mean",
)
def token_mean(loss_mat: Tensor, mask: Tensor) -> Tensor:
    """sum_{i,t} L_{i,t} m_{i,t} / sum_{i,t} m_{i,t}: every token weighs the same."""
    return masked_mean(loss_mat, mask)


@AGGREGATIONS.register(
    "seq_mean_token_mean",
    symbolic=lambda loss: sp.Sum(sp.Sum(loss, (S.t, 1, S.len_i)) / S.len_i, (S.i, 1, S.B)) / S.B,
    reference="GRPO (Shao et al. 2024)",
)
def seq_mean_token_mean(loss_mat: Tensor, mask: Tensor) -> Tensor:
    """mean_i [ sum_t L_{i,t} m_{i,t} / |o_i| ]: each sequence weighs the same."""
    lengths = mask.to(loss_mat.dtype).sum(-1)
    return _mean_over_valid_rows(_per_token_sum(loss_mat, mask) / lengths.clamp(min=1.0), mask)


@AGGREGATIONS.register(
    "seq_mean_token_sum",
    symbolic=lambda loss: _sum_tokens(loss) / S.B,
    reference="verl seq-mean-token-sum",
)
def seq_mean_token_sum(loss_mat: Tensor, mask: Tensor) -> Tensor:
    """mean_i [ sum_t L_{i,t} m_{i,t} ]: longer sequences weigh proportionally more."""
    return _mean_over_valid_rows(_per_token_sum(loss_mat, mask), mask)


@AGGREGATIONS.register(
    "seq_mean_token_sum_norm",
    symbolic=lambda loss, max_len: (
        _sum_tokens(loss) / (S.B * (num(max_len) if max_len > 0 else S.n_max))
    ),
    bounds={"max_len": (0, 1_000_000)},
    reference="Liu et al. 2025 (Dr. GRPO); verl seq-mean-token-sum-norm",
)
def seq_mean_token_sum_norm(loss_mat: Tensor, mask: Tensor, max_len: int = 0) -> Tensor:
    """sum_{i,t} L_{i,t} m_{i,t} / (B * n_max): Dr. GRPO's constant normaliser.

    n_max is ``max_len`` when > 0, else the width T of ``loss_mat``. The built objective pads
    the loss to the batch's ``generation_budget`` (``max_new_tokens``) first, so T is the
    generation budget, constant during training, as in Dr. GRPO, TRL's ``loss_type="dr_grpo"``
    (``max_completion_length``) and verl's ``seq-mean-token-sum-norm`` (the padded response
    length). B counts the sequences with at least one token (TRL divides by every row, verl's
    ``agg_loss`` by no row count).
    """
    n_max = max_len if max_len > 0 else loss_mat.shape[-1]
    return _mean_over_valid_rows(_per_token_sum(loss_mat, mask), mask) / n_max


@AGGREGATIONS.register(
    "token_sum", symbolic=_sum_tokens, reference="sum over every token (no normalisation)"
)
def token_sum(loss_mat: Tensor, mask: Tensor) -> Tensor:
    """sum_{i,t} L_{i,t} m_{i,t}."""
    return _per_token_sum(loss_mat, mask).sum()
