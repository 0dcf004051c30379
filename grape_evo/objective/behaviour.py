"""Behaviour probes: objectives that train identically are found equal, whatever their spelling.

`ObjectiveSpec.key` hashes the canonical spec, so it misses objectives that are the same
function in a given regime: with one update per batch on fresh samples the ratio is exactly 1,
so SAPO, PPO-clip and REINFORCE with the same advantage give the same loss and gradient.
`behaviour` records what the trainer uses instead: the gradient of the built objective's loss
w.r.t. the log-probs and entropies on fixed probe batches (the loss's value itself never
trains: SAPO's
-gate(r) A and REINFORCE's -A log pi differ in value, not in gradient, at r = 1), over three
consecutive batches with the
objective's state advanced in between (EMA baselines, adaptive coefficients), and a hash of the
settings that act outside the loss (data kind, group size, regime, pairing, critic and
trust-region settings). Probe batches follow the spec's regime: on fresh samples with one
update the old log-probs are the new ones (ratio 1); otherwise the token log-ratios cover a
fine grid over [-0.75, 0.75] and the sequences' mean log-ratios a log grid from 1e-5 to 0.5,
so two clips farther apart than the grids' steps act differently (token clips about 5e-4
apart in log-ratio, sequence clips a factor 1.12 apart). A record keeps 128 fixed random
projections of the gradients (a fingerprint: vectors that differ anywhere differ there almost
surely), not the gradients themselves.

`same_behaviour` compares two records with a tolerance (components compute in float32, so two
spellings of one function agree to about 1e-7, never bit for bit): a campaign evaluates
objectives that behave the same once.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import torch
from torch import Tensor

from grape_evo.objective.batch import PreferenceBatch, RolloutBatch
from grape_evo.objective.builder import Objective, build_objective
from grape_evo.objective.spec import ObjectiveSpec
from grape_evo.objective.surrogates import KL_AFTER_UPDATE

DT = torch.float64
RTOL, ATOL = 1e-5, 1e-7
STEPS = 3
_GROUPS, _G, _T, _BUDGET = 32, 4, 32, 32
_B = _GROUPS * _G
_TOKEN_SPAN = 0.75  # token log-ratios of a multi-update probe lie in [-0.75, 0.75]
_SEQUENCE_POINTS = 96  # sequence log-ratio magnitudes: a log grid from 1e-5 to 0.5
_FINGERPRINT = 128  # random projections of the probe responses kept in a record


def _rewards(step: int) -> Tensor:
    """[B] rewards: pass/fail groups, continuous groups, ties and an all-equal group."""
    g = torch.Generator().manual_seed(3000 + step)
    binary = (torch.rand(_B // 2, generator=g) < 0.5).to(DT)
    continuous = torch.rand(_B // 2, generator=g, dtype=DT)
    rewards = torch.cat([binary, continuous])
    rewards[-_G:] = 0.7  # one group all equal
    return rewards


def _log_ratio_offsets(step: int, rewards: Tensor, g: torch.Generator) -> Tensor:
    """[B, T] log pi - log pi_old of a multi-update probe.

    Tokens: every token a point of a fine grid over [-0.75, 0.75] (step 1.5 / (B T - 1),
    shifted by a third of a step per probe step), centred within its sequence. Sequences: the
    mean log-ratio of a sequence whose reward is above its group's mean is a positive point,
    below it a negative point, of a log grid from 1e-5 to 0.5 (``_SEQUENCE_POINTS`` points,
    a third of them per probe step). Ratio clips act on r > 1 where A > 0 and on r < 1 where
    A < 0, and any advantage that rises with the reward has those signs, so token-level clips
    (~0.2) and sequence-level ones (GSPO's ~3e-4) that differ by more than the grids' steps
    act differently on the probe.
    """
    n = _B * _T
    spacing = 2 * _TOKEN_SPAN / (n - 1)
    grid = torch.linspace(-_TOKEN_SPAN, _TOKEN_SPAN, n, dtype=DT) + spacing * step / STEPS
    tokens = grid[torch.randperm(n, generator=g)].view(_B, _T)
    tokens = tokens - tokens.mean(dim=1, keepdim=True)
    points = torch.logspace(-5, math.log10(0.5), _SEQUENCE_POINTS, dtype=DT)[step::STEPS]
    centred = rewards - rewards.view(_GROUPS, _G).mean(dim=1).repeat_interleave(_G)
    rows = torch.zeros(_B, dtype=DT)
    for sign, chosen in ((1.0, centred > 0), (-1.0, centred < 0)):
        index = chosen.nonzero().flatten()
        rows[index] = sign * points[torch.arange(len(index)) % len(points)]
    return tokens + rows[:, None]


def _rollout_probe(step: int, single_update: bool) -> tuple[RolloutBatch, list[Tensor]]:
    """A deterministic [128, 32] batch of 32 groups of 4 (two rows shorter), and its leaves: the
    log-probs and the entropies (both functions of the policy in training). With one update
    on fresh samples the old log-probs are the new ones; otherwise see
    :func:`_log_ratio_offsets`."""
    g = torch.Generator().manual_seed(1000 + step)
    logp = (-torch.rand(_B, _T, generator=g, dtype=DT) * 3.0).requires_grad_()
    entropy = torch.rand(_B, _T, generator=g, dtype=DT).requires_grad_()
    rewards = _rewards(step)
    offsets = (
        torch.zeros(_B, _T, dtype=DT) if single_update else _log_ratio_offsets(step, rewards, g)
    )
    old = logp.detach() - offsets
    mask = torch.ones(_B, _T, dtype=DT)
    mask[5, 20:] = 0.0
    mask[7, 1:] = 0.0
    batch = RolloutBatch(
        logp=logp,
        old_logp=old,
        ref_logp=logp.detach() - 0.2 * torch.rand(_B, _T, generator=g, dtype=DT),
        mask=mask,
        rewards=rewards,
        group_ids=torch.arange(_B) // _G,
        values=torch.randn(_B, _T, generator=g, dtype=DT),
        entropy=entropy,
        generation_budget=_BUDGET,
    )
    return batch, [logp, entropy]


def _pair_probe(step: int) -> tuple[PreferenceBatch, list[Tensor]]:
    g = torch.Generator().manual_seed(2000 + step)
    chosen = (-torch.rand(6, generator=g, dtype=DT) * 8.0).requires_grad_()
    rejected = (-torch.rand(6, generator=g, dtype=DT) * 8.0).requires_grad_()
    lengths = torch.tensor([3.0, 5.0, 2.0, 7.0, 4.0, 6.0], dtype=DT)
    batch = PreferenceBatch(
        chosen_logp=chosen,
        rejected_logp=rejected,
        ref_chosen_logp=chosen.detach() + torch.randn(6, generator=g, dtype=DT),
        ref_rejected_logp=rejected.detach() + torch.randn(6, generator=g, dtype=DT),
        chosen_len=lengths,
        rejected_len=lengths.flip(0),
    )
    return batch, [chosen, rejected]


def _fingerprint(responses: list[Tensor]) -> list[float]:
    """``_FINGERPRINT`` fixed Gaussian projections of the concatenated responses, scaled by
    1/sqrt(n): two response vectors that differ anywhere differ here (almost surely), and
    equal ones agree to their own rounding."""
    x = torch.cat(responses)
    g = torch.Generator().manual_seed(4242)
    directions = torch.randn(_FINGERPRINT, x.numel(), generator=g, dtype=DT)
    return (directions @ x / math.sqrt(x.numel())).tolist()


def _responses(objective: Objective, spec: ObjectiveSpec) -> list[float]:
    single = spec.epochs == spec.minibatches == 1 and spec.staleness == 0
    out: list[Tensor] = []
    for step in range(STEPS):
        if spec.preference is not None:
            pairs, leaves = _pair_probe(step)
            loss, metrics = objective(pairs)
        else:
            batch, leaves = _rollout_probe(step, single)
            loss, metrics = objective(batch)
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        for g, leaf in zip(grads, leaves, strict=True):
            out.append(torch.zeros(leaf.numel(), dtype=DT) if g is None else g.flatten().to(DT))
        floats = {k: float(v) for k, v in metrics.items()}
        floats[KL_AFTER_UPDATE] = 0.02 * (step + 1)
        objective.end_step(floats)
    return _fingerprint(out)


def _outside_the_loss(spec: ObjectiveSpec) -> dict[str, Any]:
    """The canonical settings that act outside the objective's loss."""
    d = spec.to_dict()
    keep = ("data", "group_size", "epochs", "minibatches", "staleness")
    out: dict[str, Any] = {k: d[k] for k in keep}
    if spec.preference is not None:
        out["pairing"] = spec.preference.pairing
    objective = build_objective(spec)
    if "critic" in objective.advantage.component.tags and spec.preference is None:
        out["critic"] = objective.advantage.params
    if "trust_region" in objective.surrogate.component.tags and spec.preference is None:
        out["trust_region"] = objective.surrogate.params
    return out


def behaviour(spec: ObjectiveSpec) -> dict[str, Any]:
    """``{"outside": hash of the settings outside the loss, "probes": a fingerprint of the
    gradients}`` (see the module docstring); JSON-ready, so a campaign stores it with the
    trial."""
    canonical = spec.canonical()
    outside = json.dumps(_outside_the_loss(canonical), sort_keys=True, default=str)
    return {
        "outside": hashlib.sha256(outside.encode()).hexdigest()[:16],
        "probes": _responses(build_objective(canonical), canonical),
    }


def same_behaviour(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two `behaviour` records train identically: the same settings outside the loss
    and the same probe responses within ``RTOL``, ``ATOL``."""
    if a.get("outside") != b.get("outside") or len(a["probes"]) != len(b["probes"]):
        return False
    x, y = torch.tensor(a["probes"], dtype=DT), torch.tensor(b["probes"], dtype=DT)
    return bool(torch.allclose(x, y, rtol=RTOL, atol=ATOL, equal_nan=True))
