"""Advantage estimators: ``(batch: RolloutBatch, **params) -> Tensor[B, T]``.

Outcome-reward estimators compute one value per sequence and broadcast it over the completion
tokens (zero on padding). Group statistics use ``batch.group_ids``: sequences with the same id
were sampled for the same prompt. A group of size 1 has no relative signal: every group-relative
estimator returns 0 for it (never NaN).
"""

from __future__ import annotations

from typing import Any

import sympy as sp
import torch
from torch import Tensor

from grape_evo.objective.batch import RolloutBatch
from grape_evo.objective.registry import ADVANTAGES
from grape_evo.objective.symbolic import Symbols as S
from grape_evo.objective.symbolic import is_group_max, mean_G, num, rank, std_B, whiten_B


def broadcast(per_sequence: Tensor, mask: Tensor) -> Tensor:
    """[B] -> [B, T] float32, zero on padding (``mask`` may be bool, int or float)."""
    return per_sequence.to(torch.float32).unsqueeze(-1) * mask.to(torch.float32)


def group_stats(
    values: Tensor, group_ids: Tensor, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sequence group size, group mean and group sum of squared deviations, each [B].

    ``values``: [B]; ``group_ids``: [B] integer ids (any values, need not be contiguous);
    computed in ``dtype``.
    """
    unique, inverse = torch.unique(group_ids, return_inverse=True)
    n_groups = unique.numel()
    values = values.to(dtype)
    count = torch.zeros(n_groups, dtype=values.dtype, device=values.device)
    count.index_add_(0, inverse, torch.ones_like(values))
    total = torch.zeros_like(count).index_add_(0, inverse, values)
    mean = total / count
    sq = torch.zeros_like(count).index_add_(0, inverse, (values - mean[inverse]) ** 2)
    return count[inverse], mean[inverse], sq[inverse]


def group_std(values: Tensor, group_ids: Tensor, unbiased: bool) -> Tensor:
    """Per-sequence std of its group, [B]; 0 for groups of size 1."""
    count, _, sq = group_stats(values, group_ids)
    denom = (count - 1.0) if unbiased else count
    return torch.where(count > 1, sq / denom.clamp(min=1.0), torch.zeros_like(sq)).sqrt()


def group_min_max(values: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sequence minimum and maximum of its group, each [B] (in ``values``' dtype)."""
    unique, inverse = torch.unique(group_ids, return_inverse=True)
    shape = (unique.numel(),)
    low = torch.full(shape, torch.inf, dtype=values.dtype, device=values.device)
    high = torch.full(shape, -torch.inf, dtype=values.dtype, device=values.device)
    low = low.scatter_reduce(0, inverse, values, reduce="amin")
    high = high.scatter_reduce(0, inverse, values, reduce="amax")
    return low[inverse], high[inverse]


def group_average_rank(values: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sequence 0-based rank within its group (ties share their average rank) and the
    group size, each [B] in ``values``' dtype. Compares all pairs: O(B^2) memory."""
    same_group = group_ids.unsqueeze(0) == group_ids.unsqueeze(1)
    less = ((values.unsqueeze(0) < values.unsqueeze(1)) & same_group).sum(1).to(values.dtype)
    equal = ((values.unsqueeze(0) == values.unsqueeze(1)) & same_group).sum(1).to(values.dtype)
    return less + (equal - 1.0) / 2.0, same_group.sum(1).to(values.dtype)


def _group_constant(values: Tensor, group_ids: Tensor) -> Tensor:
    """[B] bool: every member of the sequence's group has the same value."""
    low, high = group_min_max(values.to(torch.float32), group_ids)
    return low == high


def _centred(values: Tensor, group_ids: Tensor) -> Tensor:
    """x_i - mean of x over i's group, [B]; exactly 0 for constant (and singleton) groups.

    The float mean of equal values can be off by one ulp; a later division by a tiny std would
    blow that residue up, so constant groups are zeroed explicitly.
    """
    _, mean, _ = group_stats(values, group_ids)
    centred = values.to(mean.dtype) - mean
    return torch.where(_group_constant(values, group_ids), torch.zeros_like(centred), centred)


def _safe_divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    """numerator / denominator, 0 where the denominator is 0 (a 0/0 from eps = 0)."""
    ok = denominator > 0
    return torch.where(ok, numerator / torch.where(ok, denominator, 1.0), 0.0)


@ADVANTAGES.register("none", symbolic=lambda: sp.Integer(1), reference="SFT: A = 1")
def no_advantage(batch: RolloutBatch) -> Tensor:
    """A = 1 on every completion token (maximum likelihood / SFT)."""
    return batch.mask.to(torch.float32).clone()


@ADVANTAGES.register("reward", symbolic=lambda: S.R, reference="Williams 1992 (REINFORCE)")
def reward_advantage(batch: RolloutBatch) -> Tensor:
    """A = R_i: plain REINFORCE without a baseline."""
    return broadcast(batch.rewards, batch.mask)


def _update_ema(state: dict[str, Any], metrics: dict[str, Any], decay: float) -> dict[str, Any]:
    mean = metrics["reward_mean"]
    old = state.get("baseline")
    return {"baseline": mean if old is None else decay * old + (1.0 - decay) * mean}


@ADVANTAGES.register(
    "ema_baseline",
    symbolic=lambda decay: S.R - S.b,
    bounds={"decay": (0.0, 0.9999)},
    update_state=_update_ema,
    reference="Williams 1992; Sutton & Barto 13.4 (REINFORCE with baseline)",
)
def ema_baseline(
    batch: RolloutBatch, decay: float = 0.9, *, baseline: float | None = None
) -> Tensor:
    """A = R_i - b, b an exponential moving average of earlier batches' mean reward.

    ``baseline`` is state carried by the built objective, updated once per rollout batch as
    b <- decay * b + (1 - decay) * mean(R). On the first batch (no baseline yet) b is the
    batch's own mean reward.
    """
    rewards = batch.rewards.to(torch.float32)
    b = rewards.mean() if baseline is None else torch.tensor(baseline, device=rewards.device)
    return broadcast(rewards - b, batch.mask)


@ADVANTAGES.register(
    "group_mean",
    tags=("group_relative",),
    symbolic=lambda: S.R - S.mu_G,
    reference="Liu et al. 2025 (Dr. GRPO)",
)
def group_mean(batch: RolloutBatch) -> Tensor:
    """A = R_i - mean_G(R): GRPO without the std division (Dr. GRPO)."""
    return broadcast(_centred(batch.rewards, batch.group_ids), batch.mask)


@ADVANTAGES.register(
    "group_zscore",
    tags=("group_relative",),
    symbolic=lambda eps, unbiased_std: (S.R - S.mu_G) / (S.sigma_G + num(eps)),
    bounds={"eps": (0.0, 1.0)},
    log=("eps",),
    reference="Shao et al. 2024 (DeepSeekMath, GRPO)",
)
def group_zscore(batch: RolloutBatch, eps: float = 1e-6, unbiased_std: bool = True) -> Tensor:
    """A = (R_i - mean_G R) / (std_G R + eps).

    ``unbiased_std`` uses Bessel's correction (torch.std's default, as TRL and verl do); the
    DeepSeekMath paper does not say which. A group with all rewards equal gets A = 0.
    """
    std = group_std(batch.rewards, batch.group_ids, unbiased_std)
    return broadcast(_safe_divide(_centred(batch.rewards, batch.group_ids), std + eps), batch.mask)


def _batch_zscore_symbolic(eps: float, std_of: str) -> sp.Expr:
    scale = S.sigma_B if std_of == "raw" else std_B(S.R - S.mu_G)
    return (S.R - S.mu_G) / (scale + num(eps))


@ADVANTAGES.register(
    "batch_zscore",
    tags=("group_relative",),
    symbolic=_batch_zscore_symbolic,
    bounds={"eps": (0.0, 1.0)},
    choices={"std_of": ("raw", "centred")},
    log=("eps",),
    added=("std_of",),
    reference=(
        "std_of raw: Liu et al. 2025 (Lite PPO, arXiv:2508.08221), TRL scale_rewards='batch'; "
        "std_of centred: Hu 2025 (REINFORCE++-baseline, arXiv:2501.03262)"
    ),
)
def batch_zscore(batch: RolloutBatch, eps: float = 1e-6, std_of: str = "raw") -> Tensor:
    """A = (R_i - mean_G R) / (std_B + eps): group baseline, batch-level scale.

    std_B is a Bessel-corrected std over every sequence of the batch, of what ``std_of`` says:
    ``raw``, the rewards R (TRL GRPOTrainer's ``scale_rewards="batch"``, Lite PPO);
    ``centred``, the group-centred rewards R - mean_G R (REINFORCE++-baseline's global
    normalisation, per sequence as ms-swift implements it; verl and OpenRLHF whiten per token,
    which is ``reinforce_pp``). ``raw`` is the default because it was this component's only
    behaviour before ``std_of`` existed.
    """
    centred = _centred(batch.rewards, batch.group_ids)
    values = batch.rewards.to(torch.float32) if std_of == "raw" else centred
    std = values.std() if values.numel() > 1 else torch.zeros((), device=values.device)
    return broadcast(_safe_divide(centred, std + eps), batch.mask)


@ADVANTAGES.register(
    "rloo",
    tags=("group_relative",),
    symbolic=lambda: S.G / (S.G - 1) * (S.R - S.mu_G),
    reference="Kool et al. 2019; Ahmadian et al. 2024 (RLOO)",
)
def rloo(batch: RolloutBatch) -> Tensor:
    """A = R_i - mean_{j != i} R_j = G / (G - 1) * (R_i - mean_G R) (leave-one-out baseline)."""
    count, _, _ = group_stats(batch.rewards, batch.group_ids)
    scale = torch.where(count > 1, count / (count - 1.0).clamp(min=1.0), torch.zeros_like(count))
    return broadcast(scale * _centred(batch.rewards, batch.group_ids), batch.mask)


def masked_whiten(values: Tensor, mask: Tensor, eps: float, shift_mean: bool = True) -> Tensor:
    """Standardise ``values`` [B, T] over the tokens where ``mask`` is 1; zero elsewhere.

    Uses the unbiased token variance; constant values (one valid token included) give 0.
    """
    m = mask.to(values.dtype)
    n = m.sum()
    valid = m > 0
    constant = values[valid].amax() == values[valid].amin() if bool(valid.any()) else True
    mean = (values * m).sum() / n.clamp(min=1.0)
    centred = torch.zeros_like(values) if constant else values - mean
    var = ((centred**2) * m).sum() / (n - 1.0).clamp(min=1.0)
    out = _safe_divide(centred, torch.sqrt(var + eps).expand_as(centred))
    if not shift_mean:
        out = out + mean
    return out * m


def _reverse_cumsum(x: Tensor) -> Tensor:
    """out[:, t] = sum_{s >= t} x[:, s]."""
    return torch.flip(torch.cumsum(torch.flip(x, dims=[-1]), dim=-1), dims=[-1])


def _reinforce_pp_symbolic(eps: float, group_baseline: bool, baseline_of: str) -> sp.Expr:
    if not group_baseline:
        return whiten_B(S.R)
    return whiten_B(S.R - (S.mu_G if baseline_of == "reward" else mean_G(S.R)))


@ADVANTAGES.register(
    "reinforce_pp",
    tags=("token_rewards",),
    symbolic=_reinforce_pp_symbolic,
    bounds={"eps": (0.0, 1.0)},
    choices={"baseline_of": ("reward", "return")},
    log=("eps",),
    added=("baseline_of",),
    reference=(
        "Hu 2025 (REINFORCE++, arXiv:2501.03262); OpenRLHF reinforce(_baseline) "
        "(baseline_of reward); verl reinforce_plus_plus(_baseline) (baseline_of return)"
    ),
)
def reinforce_pp(
    batch: RolloutBatch,
    eps: float = 1e-8,
    group_baseline: bool = True,
    baseline_of: str = "reward",
) -> Tensor:
    """A_t = whiten_B(G_t): returns standardised over every valid token of the batch.

    ``group_baseline=False`` is REINFORCE++: G_t = R_i + sum_{s >= t} k_s, the return-to-go of
    the outcome reward plus the per-token rewards k (a KL-in-reward penalty). True is
    REINFORCE++-baseline, whose group mean is taken, when per-token rewards are present, of
    what ``baseline_of`` says:

    * ``reward``: G_t = (R_i - mean_G R) + sum_{s >= t} k_s (OpenRLHF's reinforce_baseline,
      the paper authors' implementation; the default, this component's earlier behaviour);
    * ``return``: G_t = Q_i - mean_G Q for every t, Q_i = R_i + sum_s k_s (verl's
      compute_reinforce_plus_plus_baseline_outcome_advantage).

    The paper's REINFORCE++-baseline puts its KL in the loss, where the two agree.
    """
    mask = batch.mask.to(torch.float32)
    rewards = batch.rewards.to(torch.float32)
    token_rewards = (
        None if batch.token_rewards is None else batch.token_rewards.to(torch.float32) * mask
    )
    if group_baseline and baseline_of == "return":
        total = rewards if token_rewards is None else rewards + token_rewards.sum(-1)
        return masked_whiten(broadcast(_centred(total, batch.group_ids), mask), mask, eps)
    outcome = _centred(rewards, batch.group_ids) if group_baseline else rewards
    returns = broadcast(outcome, mask)
    if token_rewards is not None:
        returns = returns + _reverse_cumsum(token_rewards) * mask
    return masked_whiten(returns, mask, eps)


@ADVANTAGES.register(
    "best_of_group",
    tags=("group_relative",),
    symbolic=lambda scale: is_group_max(S.R) * (S.N / S.N_sel if scale == "sft" else 1),
    choices={"scale": ("group", "sft")},
    added=("scale",),
    reference="Dong et al. 2023 (RAFT, arXiv:2304.06767); rejection-sampling fine-tuning",
)
def best_of_group(batch: RolloutBatch, scale: str = "group") -> Tensor:
    """A = w_i: 1 / n_max for each sequence whose reward is its group's maximum, else 0.

    n_max is the number of tied maxima, so each group contributes a total weight of 1 and the
    estimator is permutation-equivariant. A singleton group has nothing to select from: 0.

    ``scale="group"`` (default; the earlier behaviour) returns w as is: with ``reinforce`` and
    ``token_mean`` the selected tokens' NLL is divided by *every* sampled token, about 1/G of
    SFT on the selected completions. ``scale="sft"`` multiplies w by N / sum_j w_j |o_j| (N the
    valid tokens of the batch the advantage is computed on), so that ``reinforce`` +
    ``token_mean`` is exactly SFT (the token mean of -log pi) on the selected completions, tied
    maxima weighted 1 / n_max: RAFT's fine-tuning step. Under another aggregation it is the same
    batch-constant rescaling.
    """
    rewards = batch.rewards.to(torch.float32)
    unique, inverse = torch.unique(batch.group_ids, return_inverse=True)
    n_groups = unique.numel()
    group_max = torch.full((n_groups,), -torch.inf, device=rewards.device)
    group_max = group_max.scatter_reduce(0, inverse, rewards, reduce="amax")
    is_max = (rewards == group_max[inverse]).to(rewards.dtype)
    n_max = torch.zeros(n_groups, device=rewards.device).index_add_(0, inverse, is_max)
    count = torch.zeros(n_groups, device=rewards.device).index_add_(
        0, inverse, torch.ones_like(rewards)
    )
    weight = torch.where(count[inverse] > 1, is_max / n_max[inverse], torch.zeros_like(is_max))
    if scale == "sft":
        lengths = batch.mask.to(torch.float32).sum(-1)
        weight = weight * _safe_divide(lengths.sum(), (weight * lengths).sum())
    return broadcast(weight, batch.mask)


@ADVANTAGES.register(
    "rank",
    tags=("group_relative",),
    symbolic=lambda: (rank(S.R) - (S.G - 1) / 2) / (S.G - 1),
    reference="centred rank (fitness shaping, Wierstra et al. 2014 NES)",
)
def rank_advantage(batch: RolloutBatch) -> Tensor:
    """A = (rank_G(R_i) - (G - 1) / 2) / (G - 1), in [-1/2, 1/2].

    rank_G is the 0-based rank within the group, ties sharing their average rank; the scale
    1 / (G - 1) makes the range independent of the group size. Singleton groups get 0.
    """
    avg_rank, count = group_average_rank(batch.rewards.to(torch.float32), batch.group_ids)
    centred = avg_rank - (count - 1.0) / 2.0
    adv = torch.where(count > 1, centred / (count - 1.0).clamp(min=1.0), torch.zeros_like(centred))
    return broadcast(adv, batch.mask)


def _gae_symbolic(gamma: float, lam: float, whiten: bool, **_critic: object) -> sp.Expr:
    k = sp.Symbol("l", integer=True, nonnegative=True)
    delta = sp.Function(r"\delta")
    expr = sp.Sum((num(gamma) * num(lam)) ** k * delta(S.t + k), (k, 0, sp.oo))
    return whiten_B(expr) if whiten else expr


@ADVANTAGES.register(
    "gae",
    tags=("token_rewards", "critic"),
    symbolic=_gae_symbolic,
    bounds={
        "gamma": (0.0, 1.0),
        "lam": (0.0, 1.0),
        "value_coef": (0.0, 100.0),
        "value_clip": (0.0, 10.0),
    },
    choices={"critic": ("shared", "separate")},
    added=("critic", "value_coef", "value_clip"),
    reference=(
        "Schulman et al. 2016 (GAE); Ouyang et al. 2022 (PPO for LMs); critic separate, "
        "value_clip 0.2, value_coef 0.1: TRL PPOTrainer (vf_coef, cliprange_value)"
    ),
)
def gae(
    batch: RolloutBatch,
    gamma: float = 1.0,
    lam: float = 0.95,
    whiten: bool = True,
    critic: str = "shared",
    value_coef: float = 0.5,
    value_clip: float = 0.0,
) -> Tensor:
    """Generalised advantage estimation with the critic ``batch.values`` [B, T].

    Token rewards r_t = token_rewards_t, plus R_i on the last completion token;
    delta_t = r_t + gamma * V_{t+1} - V_t (V = 0 after the last token);
    A_t = sum_l (gamma * lam)^l delta_{t+l}. ``whiten`` standardises A over the batch's valid
    tokens, as TRL's PPO trainer does. Returns for the value loss are A (before whitening) + V;
    see :func:`gae_advantages_and_returns`.

    The critic itself is trained by the trainer with these settings: ``critic`` ``shared`` is a
    value head on the policy's trunk, ``separate`` a value model of its own (a copy of the warm
    start with a value head, as TRL and verl train it); its loss, added to the policy's with
    weight ``value_coef``, is 0.5 * token mean of max((V - G)^2, (V_clip - G)^2) with
    V_clip = V_old + clip(V - V_old, -value_clip, value_clip) (``value_clip`` 0: unclipped).
    """
    adv, _ = gae_advantages_and_returns(batch, gamma, lam)
    return masked_whiten(adv, batch.mask.to(adv.dtype), 1e-8) if whiten else adv


def gae_advantages_and_returns(
    batch: RolloutBatch, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Raw GAE advantages and value targets (A + V), both [B, T], zero on padding."""
    if batch.values is None:
        raise ValueError("advantage 'gae' needs critic values in the batch (a value head)")
    mask = batch.mask.to(torch.float32)
    values = batch.values.detach().to(torch.float32) * mask
    lengths = mask.sum(-1).long()
    last = (lengths - 1).clamp(min=0)
    rewards = torch.zeros_like(mask)
    if batch.token_rewards is not None:
        rewards = batch.token_rewards.to(torch.float32) * mask
    has_tokens = (lengths > 0).to(mask.dtype)
    rewards = rewards.scatter_add(
        1, last.unsqueeze(-1), (batch.rewards.to(torch.float32) * has_tokens).unsqueeze(-1)
    )
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=-1) * torch.cat(
        [mask[:, 1:], torch.zeros_like(mask[:, :1])], dim=-1
    )
    deltas = (rewards + gamma * next_values - values) * mask
    adv = torch.zeros_like(deltas)
    running = torch.zeros_like(deltas[:, 0])
    for t in range(deltas.shape[-1] - 1, -1, -1):
        running = deltas[:, t] + gamma * lam * running * mask[:, t]
        adv[:, t] = running
    adv = adv * mask
    return adv, (adv + values) * mask
