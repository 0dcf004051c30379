"""The named input tensors of each expression kind, computed from the objective's data.

Advantage (one value per sequence, [B]; ``R`` is the sequence reward after any KL-in-reward
shaping, the reward every advantage estimator sees):

* ``G``: size of the sequence's group (sequences sharing a ``group_id``);
* ``mean_G``, ``std_G``: the group's mean and population std (ddof 0) of R;
* ``min_G``, ``max_G``: the group's smallest and largest R;
* ``rank_G``: the 0-based rank of R in its group divided by G - 1, so in [0, 1] (ties share
  their average rank); a group of one has rank_G = 0.5 (the middle: lowest and highest);
* ``p_G``: the fraction of the group with R > 0.

When every reward of a group is equal (a group of one included), ``mean_G`` is exactly R and
``std_G`` exactly 0, so that ``R - mean_G`` is 0 with no rounding residue (the same guard as
``group_zscore``).

Drift (per token, [B, T]): ``log_r`` = logp - old_logp, ``r`` = exp(log_r) (gradients flow
through both), ``A`` the advantage (a constant). Preference (per pair, [B]):
``chosen_logratio`` a = log pi(y_w) - log pi_ref(y_w), ``rejected_logratio`` b likewise,
``rho`` = beta (a - b), and ``beta`` (a 0-dim constant).
"""

from __future__ import annotations

import torch
from torch import Tensor

from grape_evo.objective.advantages import group_average_rank, group_min_max, group_stats
from grape_evo.objective.batch import PreferenceBatch
from grape_evo.objective.preference import log_ratios


def advantage_inputs(rewards: Tensor, group_ids: Tensor) -> dict[str, Tensor]:
    """The advantage inputs, each [B], in ``rewards``' dtype (float32 for integer rewards)."""
    dtype = rewards.dtype if rewards.is_floating_point() else torch.float32
    reward = rewards.to(dtype)
    count, mean, sq = group_stats(reward, group_ids, dtype)
    low, high = group_min_max(reward, group_ids)
    constant = low == high
    avg_rank, _ = group_average_rank(reward, group_ids)
    _, positive, _ = group_stats((reward > 0).to(dtype), group_ids, dtype)
    rank = torch.where(
        count > 1, avg_rank / (count - 1.0).clamp(min=1.0), torch.full_like(avg_rank, 0.5)
    )
    return {
        "R": reward,
        "mean_G": torch.where(constant, reward, mean),
        "std_G": torch.where(constant, torch.zeros_like(sq), (sq / count).sqrt()),
        "min_G": low,
        "max_G": high,
        "rank_G": rank,
        "p_G": positive,
        "G": count,
    }


def drift_inputs(logp: Tensor, old_logp: Tensor, adv: Tensor) -> dict[str, Tensor]:
    """``r``, ``log_r`` (with gradients through ``logp``) and the constant ``A``, [B, T]."""
    log_r = logp - old_logp.detach()
    return {"r": torch.exp(log_r), "log_r": log_r, "A": adv.detach()}


def preference_inputs(pairs: PreferenceBatch, beta: float) -> dict[str, Tensor]:
    """``rho``, ``chosen_logratio``, ``rejected_logratio`` [B] and ``beta`` (0-dim)."""
    a, b = log_ratios(pairs)
    return {
        "rho": beta * (a - b),
        "chosen_logratio": a,
        "rejected_logratio": b,
        "beta": torch.full((), beta, dtype=a.dtype, device=a.device),
    }
