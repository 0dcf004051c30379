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
update the old log-probs are the new ones (ratio 1); otherwise they differ.

`same_behaviour` compares two records with a tolerance (components compute in float32, so two
spellings of one function agree to about 1e-7, never bit for bit): a campaign evaluates
objectives that behave the same once.
"""

from __future__ import annotations

import hashlib
import json
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
_B, _T, _BUDGET = 8, 5, 8
_REWARDS = (
    (0.0, 1.0, 0.0, 1.0, 0.25, 0.25, 0.9, 0.1),
    (1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.5, 0.5),
    (0.2, 0.4, 0.6, 0.8, 1.0, 0.0, 0.0, 0.0),
)


def _rollout_probe(step: int, single_update: bool) -> tuple[RolloutBatch, list[Tensor]]:
    """A deterministic [8, 5] batch of two groups of 4 (the last rows shorter), and its leaves:
    the log-probs and the entropies (both functions of the policy in training)."""
    g = torch.Generator().manual_seed(1000 + step)
    logp = (-torch.rand(_B, _T, generator=g, dtype=DT) * 3.0).requires_grad_()
    entropy = torch.rand(_B, _T, generator=g, dtype=DT).requires_grad_()
    old = (
        logp.detach()
        if single_update
        else logp.detach() + 0.3 * torch.randn(_B, _T, generator=g, dtype=DT)
    )
    mask = torch.ones(_B, _T, dtype=DT)
    mask[5, 3:] = 0.0
    mask[7, 1:] = 0.0
    batch = RolloutBatch(
        logp=logp,
        old_logp=old,
        ref_logp=logp.detach() - 0.2 * torch.rand(_B, _T, generator=g, dtype=DT),
        mask=mask,
        rewards=torch.tensor(_REWARDS[step], dtype=DT),
        group_ids=torch.arange(_B) // 4,
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


def _responses(objective: Objective, spec: ObjectiveSpec) -> list[float]:
    single = spec.epochs == spec.minibatches == 1 and spec.staleness == 0
    out = []
    for step in range(STEPS):
        if spec.preference is not None:
            pairs, leaves = _pair_probe(step)
            loss, metrics = objective(pairs)
        else:
            batch, leaves = _rollout_probe(step, single)
            loss, metrics = objective(batch)
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        for g, leaf in zip(grads, leaves, strict=True):
            out += [0.0] * leaf.numel() if g is None else g.flatten().tolist()
        floats = {k: float(v) for k, v in metrics.items()}
        floats[KL_AFTER_UPDATE] = 0.02 * (step + 1)
        objective.end_step(floats)
    return out


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
    """``{"outside": hash of the settings outside the loss, "probes": [gradients, ...]}``
    (see the module docstring); JSON-ready, so a campaign stores it with the trial."""
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
