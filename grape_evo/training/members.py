"""What an engine's members are and what they start from: `Member` (objective, learning
rate, seed), copies of a warm start's tensors, the checks a set of members must pass, and
their optimiser (Adam, per-member gradient clipping)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

import torch
from torch import Tensor, nn

from grape_evo.objective.spec import ObjectiveSpec
from grape_evo.policy import Policy, Weights, policy_weights
from grape_evo.policy.forward import VALUE_KEYS
from grape_evo.training.batches import OfflinePairs
from grape_evo.training.config import TrainConfig

T = TypeVar("T")


@dataclass(frozen=True)
class Member:
    """One objective to train, its learning rate and its seed (None: the config's)."""

    spec: ObjectiveSpec
    lr: float
    seed: int | None = None


def seed_configs(
    members: Sequence[Member], config: TrainConfig
) -> tuple[list[int], dict[int, TrainConfig]]:
    """Each member's seed (its own, else ``config.seed``) and, per distinct seed in order of
    first use, ``config`` with that seed."""
    seeds = [config.seed if m.seed is None else m.seed for m in members]
    return seeds, {seed: replace(config, seed=seed) for seed in seeds}


def adam(
    params: Sequence[Sequence[nn.Parameter]], lrs: Sequence[float], device: torch.device
) -> torch.optim.Adam:
    """Adam over members' parameters (``params[i]`` at learning rate ``lrs[i]``), the fused
    kernel on CPU and CUDA. Adam is elementwise, so members of one learning rate share one
    parameter group (one kernel call) and still train as they would alone; a tensor without
    a gradient is skipped, its moments untouched."""
    groups: dict[float, list[nn.Parameter]] = {}
    for own, lr in zip(params, lrs, strict=True):
        groups.setdefault(lr, []).extend(own)
    found = [{"params": ps, "lr": lr} for lr, ps in groups.items() if ps]
    return torch.optim.Adam(found, fused=device.type in ("cpu", "cuda"))


def clip_grad_norms_(params: Sequence[Sequence[nn.Parameter]], max_norm: float) -> Tensor:
    """`torch.nn.utils.clip_grad_norm_(params[i], max_norm)` for every member i at once, bit
    for bit: N_i = ||(||g||_2 for g in member i's gradients)||_2, and each of its gradients
    scaled in place by min(1, max_norm / (N_i + 1e-6)). Returns N [len(params)] (0 for a
    member without gradients); a non-finite N_i makes member i's gradients non-finite, as
    torch's does. Members with as many gradients share one row-wise norm (a padded row would
    change the rounding)."""
    grads = [[p.grad for p in own if p.grad is not None] for own in params]
    flat = [g for own in grads for g in own]
    if not flat:
        return torch.zeros(len(params))
    norms = torch.stack(torch._foreach_norm(flat))  # [sum of counts]
    device = norms.device
    totals = torch.zeros(len(params), dtype=norms.dtype, device=device)
    offsets = [0, *itertools.accumulate(len(own) for own in grads)]
    by_count: dict[int, list[int]] = {}
    for i, own in enumerate(grads):
        if own:
            by_count.setdefault(len(own), []).append(i)
    for count, members in by_count.items():
        first = torch.tensor([offsets[i] for i in members], device=device)
        rows = norms[first[:, None] + torch.arange(count, device=device)]  # [members, count]
        totals[members] = torch.linalg.vector_norm(rows, dim=1)
    scale = torch.clamp(max_norm / (totals + 1e-6), max=1.0)
    owner = torch.tensor([i for i, own in enumerate(grads) for _ in own], device=device)
    torch._foreach_mul_(flat, list(scale[owner].unbind()))
    return totals


def frozen_copy(policy: Policy) -> Weights:
    """A warm start's LM tensors (a copy), to score as a frozen reference."""
    return {n: p.detach().clone() for n, p in policy_weights(policy).items() if n not in VALUE_KEYS}


def by_seed(value: T | Mapping[int, T], seed: int) -> dict[int, T]:
    """``value`` by seed: a mapping as it is, else ``{seed: value}``."""
    return dict(value) if isinstance(value, Mapping) else {seed: value}


def check_members(
    members: Sequence[Member],
    seeds: Sequence[int],
    critics: Sequence[bool],
    policies: Mapping[int, Policy],
    pairs: Mapping[int, OfflinePairs],
) -> None:
    """A ValueError unless every member has a finite lr >= 0, a warm start for its seed (with
    a value head when it needs a critic, offline pairs when it trains on them), and members of
    several seeds are fully fine-tuned (a LoRA adapter needs its seed's base weights)."""
    if not members:
        raise ValueError("the engine needs at least one member")
    for i, (member, seed) in enumerate(zip(members, seeds, strict=True)):
        if not (math.isfinite(member.lr) and member.lr >= 0):
            raise ValueError(f"member {i}: lr {member.lr!r} is not a finite number >= 0")
        if seed not in policies:
            raise ValueError(f"member {i}: no warm-start policy for its seed {seed}")
        if critics[i] and policies[seed].value_head is None:
            raise ValueError("a critic advantage needs the policy's value head (value_head=True)")
        if member.spec.canonical().data == "preference_pairs" and seed not in pairs:
            raise ValueError(f"data 'preference_pairs' needs offline pairs (seed {seed})")
    if len(set(seeds)) > 1 and any(policies[s].config.use_lora for s in seeds):
        raise ValueError("members of several seeds need fully fine-tuned policies (no LoRA)")
