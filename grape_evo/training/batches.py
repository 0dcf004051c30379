"""From sampled or given text to the tensors an objective consumes.

The trainer samples a :class:`Rollout`, scores it once (rewards, old/reference log-probs,
critic values) into a :class:`ScoredRollout`, then builds :class:`RolloutBatch` or
:class:`PreferenceBatch` objects from fresh forward passes for each update.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

from grape_evo.objective import PreferenceBatch
from grape_evo.policy import Policy, Rollout, completion_logprobs
from grape_evo.tasks import Task


def slice_rollout(rollout: Rollout, index: Tensor) -> Rollout:
    """Rows ``index`` of a rollout (tensors and text lists alike)."""
    rows = index.tolist()
    changes = {}
    for f in fields(rollout):
        value = getattr(rollout, f.name)
        if isinstance(value, Tensor):
            changes[f.name] = value[index.to(value.device)]
        elif isinstance(value, list):
            changes[f.name] = [value[i] for i in rows]
    return replace(rollout, **changes)


@dataclass(frozen=True)
class ScoredRollout:
    """A rollout with everything that stays fixed during its updates (all [B] or [B, T])."""

    rollout: Rollout
    rewards: Tensor
    old_logp: Tensor
    ref_logp: Tensor
    old_values: Tensor | None

    def select(self, index: Tensor) -> ScoredRollout:
        def pick(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[index.to(t.device)]

        return ScoredRollout(
            rollout=slice_rollout(self.rollout, index),
            rewards=pick(self.rewards),
            old_logp=pick(self.old_logp),
            ref_logp=pick(self.ref_logp),
            old_values=pick(self.old_values),
        )


def task_rewards(task: Task, rollout: Rollout) -> Tensor:
    """[B] float32 rewards of the rollout's completions; a non-finite reward is an error."""
    values = task.reward(rollout.prompts, rollout.texts)
    rewards = torch.tensor(values, dtype=torch.float32, device=rollout.completion_ids.device)
    if not torch.isfinite(rewards).all():
        bad = [i for i, v in enumerate(values) if not torch.isfinite(torch.tensor(v))]
        raise ValueError(f"task '{task.name}' returned non-finite rewards at rows {bad[:5]}")
    return rewards


@torch.no_grad()
def score_rollout(policy: Policy, task: Task, rollout: Rollout, need_old: bool) -> ScoredRollout:
    """Rewards, and under no_grad the old (if ``need_old``; else the sampling log-probs) and
    reference log-probs and the critic values."""
    old_logp, old_values = rollout.sample_logp, None
    if need_old or policy.has_value_head:
        out = completion_logprobs(policy, rollout)
        old_logp = out.logp if need_old else old_logp
        old_values = out.values
    ref_logp = completion_logprobs(policy, rollout, reference=True).logp
    return ScoredRollout(rollout, task_rewards(task, rollout), old_logp, ref_logp, old_values)


def online_pairs(rewards: Tensor, group_ids: Tensor, pairing: str) -> tuple[Tensor, Tensor]:
    """Indices (chosen, rejected) of preference pairs formed inside each group.

    ``best_worst``: the group's highest- and lowest-reward members (first in case of ties);
    ``all_pairs``: every ordered pair with a strictly higher reward. Groups whose rewards are
    all equal give no pair.
    """
    r = rewards.tolist()
    groups: dict[int, list[int]] = {}
    for i, g in enumerate(group_ids.tolist()):
        groups.setdefault(g, []).append(i)
    chosen: list[int] = []
    rejected: list[int] = []
    for members in groups.values():
        if pairing == "best_worst":
            best = max(members, key=lambda i: r[i])
            worst = min(members, key=lambda i: r[i])
            if r[best] > r[worst]:
                chosen.append(best)
                rejected.append(worst)
        else:
            for i in members:
                for j in members:
                    if r[i] > r[j]:
                        chosen.append(i)
                        rejected.append(j)
    return torch.tensor(chosen, dtype=torch.long), torch.tensor(rejected, dtype=torch.long)


def sequence_sums(logp: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sequence sums of token log-probs and token counts, both [B] float32."""
    m = mask.to(logp.dtype)
    return (logp * m).sum(-1), m.sum(-1)


def preference_batch(
    logp: Tensor, ref_logp: Tensor, mask: Tensor, chosen: Tensor, rejected: Tensor
) -> PreferenceBatch:
    """Pairs (rows ``chosen`` vs rows ``rejected``) of per-token log-probs [B, T]."""
    seq, length = sequence_sums(logp, mask)
    ref_seq, _ = sequence_sums(ref_logp, mask)
    c, r = chosen.to(seq.device), rejected.to(seq.device)
    return PreferenceBatch(
        chosen_logp=seq[c],
        rejected_logp=seq[r],
        ref_chosen_logp=ref_seq[c].detach(),
        ref_rejected_logp=ref_seq[r].detach(),
        chosen_len=length[c],
        rejected_len=length[r],
    )


@dataclass(frozen=True)
class OfflinePairs:
    """Preference pairs labelled by the task's hidden Bradley-Terry preference."""

    prompts: list[str]
    chosen: list[str]
    rejected: list[str]

    def __len__(self) -> int:
        return len(self.prompts)


def label_pairs(task: Task, rollout: Rollout, seed: int) -> OfflinePairs:
    """Turn a rollout with 2 completions per prompt into labelled pairs.

    Each pair is labelled by one Bradley-Terry draw of ``task.preference`` (noisy labels, as
    from human raters); prompts whose two completions are identical are dropped.
    """
    rng = random.Random(f"pairs|{task.name}|{seed}")
    prompts, chosen, rejected = [], [], []
    for k in range(0, len(rollout.texts), 2):
        prompt, a, b = rollout.prompts[k], rollout.texts[k], rollout.texts[k + 1]
        if task.normalize(a) == task.normalize(b):
            continue
        if not task.preference(prompt, a, b, rng):
            a, b = b, a
        prompts.append(prompt)
        chosen.append(a)
        rejected.append(b)
    return OfflinePairs(prompts, chosen, rejected)
