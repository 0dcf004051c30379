"""What a member trains on in one step, for each kind of data.

* ``on_policy``: ``prompts_per_step`` prompts x ``group_size`` completions sampled from the
  member's own weights (all on-policy members decode in lockstep, `sample_members`);
* ``demonstrations``: ``batch_size`` gold (prompt, completion) pairs (`demonstration_batch`);
* ``preference_pairs``: ``batch_size // 2`` pairs drawn from a fixed set sampled once from the
  reference policy and labelled by the task's hidden Bradley-Terry preference
  (`offline_pair_batch`).

Each becomes a `MemberBatch`: rows [B, T] with everything that stays fixed during the step's
updates. Prompt and sampling streams depend only on (seed, step), so members with the same
seed see the same prompts and the same random numbers (common random numbers).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace

import torch
from torch import Tensor

from grape_evo.objective import PreferenceBatch
from grape_evo.objective.spec import ObjectiveSpec
from grape_evo.policy import (
    Forward,
    Policy,
    Rollout,
    Weights,
    decode,
    encode_pairs,
    rows_of,
    sample,
    stream_key,
)
from grape_evo.policy.tokenizer import TextTokenizer
from grape_evo.tasks import Task
from grape_evo.training.config import TrainConfig


def step_seed(seed: int, step: int, stream: int) -> int:
    """The seed of a data stream (1: prompts, 2: demonstrations, 3: offline pairs, 4: the
    prompts the offline pairs are sampled for) at ``step``."""
    return (seed * 1_000_003 + step * 7_919 + stream) % (2**31 - 1)


def prompts_per_step(config: TrainConfig, group_size: int) -> int:
    """On-policy prompts per step: ``max(1, batch_size // group_size)``."""
    return max(1, config.batch_size // group_size)


def train_prompts(task: Task, config: TrainConfig, step: int, group_size: int) -> list[str]:
    """The training prompts of on-policy step ``step`` (the same for every member with the same
    group size and seed)."""
    n_prompts = prompts_per_step(config, group_size)
    return task.prompts("train", n_prompts, step_seed(config.seed, step, 1))


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


@dataclass
class MemberBatch:
    """One member's rows for one step and what stays fixed during its updates.

    ``rewards`` [B]; ``old_logp``, ``ref_logp``, ``old_values``, ``returns``, ``advantages``
    [B, T]; ``pairs``: (chosen, rejected) row indices [n] of a preference loss;
    ``ref_pair_sums``: the reference's log-prob sums (chosen, rejected) [n] of offline pairs;
    ``old_is_new``: the update's own detached log-probs are the old ones (one update per batch
    at temperature 1: the ratio is exactly 1); ``updates``: the rows of each gradient update
    (None: all rows); ``metrics``: the step's data metrics.
    """

    rollout: Rollout
    rewards: Tensor
    old_logp: Tensor
    ref_logp: Tensor | None = None
    old_values: Tensor | None = None
    returns: Tensor | None = None
    advantages: Tensor | None = None
    pairs: tuple[Tensor, Tensor] | None = None
    ref_pair_sums: tuple[Tensor, Tensor] | None = None
    old_is_new: bool = False
    updates: list[Tensor | None] = field(default_factory=list)
    metrics: dict[str, Tensor] = field(default_factory=dict)

    @property
    def mask(self) -> Tensor:
        return self.rollout.completion_mask


def task_rewards(task: Task, rollout: Rollout) -> Tensor:
    """[B] float32 rewards of the rollout's completions; a non-finite reward is an error."""
    values = task.reward(rollout.prompts, rollout.texts)
    rewards = torch.tensor(values, dtype=torch.float32, device=rollout.completion_ids.device)
    if not torch.isfinite(rewards).all():
        bad = [i for i, v in enumerate(values) if not torch.isfinite(torch.tensor(v))]
        raise ValueError(f"task '{task.name}' returned non-finite rewards at rows {bad[:5]}")
    return rewards


def sample_members(
    forward: Forward,
    weights: Sequence[Weights],
    tokenizer: TextTokenizer,
    task: Task,
    configs: Sequence[TrainConfig],
    steps: Sequence[int],
    specs: Sequence[ObjectiveSpec],
    max_length: int | None,
    device: torch.device,
) -> list[MemberBatch]:
    """On-policy batches, sampled in lockstep: entry j is the batch of step ``steps[j]`` (the
    `train_prompts` and sampling stream of ``configs[j]``'s seed) drawn from ``weights[j]``
    with ``specs[j]``'s group size. A member with staleness draws the batch of a later step
    than the current one. The configs differ at most in their seeds."""
    config = configs[0]
    rollouts = decode(
        forward,
        weights,
        tokenizer,
        [
            train_prompts(task, cfg, step, s.group_size)
            for cfg, step, s in zip(configs, steps, specs, strict=True)
        ],
        [s.group_size for s in specs],
        task.max_new_tokens,
        [stream_key(cfg.seed, step, "sample") for cfg, step in zip(configs, steps, strict=True)],
        config.temperature,
        max_length,
        device,
        config.temper_logprobs,
    )
    return [MemberBatch(r, task_rewards(task, r), r.sample_logp) for r in rollouts]


def demonstration_batch(
    tokenizer: TextTokenizer, task: Task, config: TrainConfig, step: int, device: torch.device
) -> MemberBatch:
    """``batch_size`` gold demonstrations of step ``step`` (reward 1 each)."""
    demos = task.demonstrations("train", config.batch_size, step_seed(config.seed, step, 2))
    prompts, completions = [p for p, _ in demos], [c for _, c in demos]
    rollout = encode_pairs(tokenizer, prompts, completions, device=device)
    ones = torch.ones(len(demos), device=device)
    return MemberBatch(rollout, ones, torch.zeros_like(rollout.sample_logp))


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


def sample_offline_pairs(policy: Policy, task: Task, config: TrainConfig) -> OfflinePairs:
    """``config.offline_pairs`` prompts, two reference samples each, labelled by the task."""
    prompts = task.prompts("train", config.offline_pairs, step_seed(config.seed, -1, 4))
    key = stream_key(config.seed, "offline pairs")
    rollout = sample(policy, prompts, 2, task.max_new_tokens, key=key, reference=True)
    return label_pairs(task, rollout, config.seed)


def offline_pair_batch(
    tokenizer: TextTokenizer,
    pairs: OfflinePairs,
    ref_sums: tuple[Tensor, Tensor],
    config: TrainConfig,
    step: int,
    device: torch.device,
) -> MemberBatch:
    """Step ``step``'s n = ``min(max(1, batch_size // 2), len(pairs))`` pairs (a seeded draw
    without replacement): rows [2n], the n chosen completions, then the n rejected ones.
    ``ref_sums``: the reference's log-prob sums of every pair's chosen and rejected completion."""
    n = min(max(1, config.batch_size // 2), len(pairs))
    generator = torch.Generator().manual_seed(step_seed(config.seed, step, 3))
    index = torch.randperm(len(pairs), generator=generator)[:n]
    rows = index.tolist()
    prompts = [pairs.prompts[i] for i in rows]
    texts = [pairs.chosen[i] for i in rows] + [pairs.rejected[i] for i in rows]
    rollout = encode_pairs(tokenizer, prompts + prompts, texts, device=device)
    order = torch.arange(2 * n, device=device)
    return MemberBatch(
        rollout,
        torch.zeros(2 * n, device=device),
        torch.zeros_like(rollout.sample_logp),
        pairs=(order[:n], order[n:]),
        ref_pair_sums=(ref_sums[0][index].to(device), ref_sums[1][index].to(device)),
    )


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
    device = rewards.device
    return (
        torch.tensor(chosen, dtype=torch.long, device=device),
        torch.tensor(rejected, dtype=torch.long, device=device),
    )


@torch.no_grad()
def reference_logps(
    forward: Forward,
    rollouts: Sequence[Rollout],
    references: Sequence[Weights | None],
    pad_id: int,
    temperature: float = 1.0,
) -> list[Tensor]:
    """Each rollout's log-probs [B_j, T_j] under its reference ``references[j]`` (None: the
    forward's own frozen reference; else the reference's tensors as one member's weights),
    softmax(logits / ``temperature``). Rollouts with the same reference are scored in one pass
    over their distinct rows."""
    groups: dict[int, list[int]] = {}
    for j, reference in enumerate(references):
        groups.setdefault(id(reference), []).append(j)
    logps: list[Tensor] = [torch.empty(0)] * len(rollouts)
    for members in groups.values():
        rows = rows_of([rollouts[j] for j in members], pad_id)
        distinct, index = rows.distinct()
        reference = references[members[0]]
        weights = None if reference is None else [reference]
        logp = forward.score(distinct, weights, temperature=temperature).logp[0][index]
        for k, j in enumerate(members):
            b, t = rollouts[j].completion_mask.shape
            logps[j] = logp[k, :b, :t]
    return logps


@torch.no_grad()
def reference_pair_sums(
    forward: Forward,
    tokenizer: TextTokenizer,
    pairs: OfflinePairs,
    temperature: float,
    device: torch.device,
    reference: Weights | None = None,
) -> tuple[Tensor, Tensor]:
    """The reference's log-prob sums [N] of every offline pair's chosen and rejected
    completion (softmax(logits / ``temperature``)), scored in chunks of 256 pairs;
    ``reference`` as in `reference_logps`."""
    weights = None if reference is None else [reference]
    sums = []
    for texts in (pairs.chosen, pairs.rejected):
        parts = []
        for start in range(0, len(texts), 256):
            chunk = slice(start, start + 256)
            rollout = encode_pairs(tokenizer, pairs.prompts[chunk], texts[chunk], device=device)
            rows = rows_of([rollout], tokenizer.pad_id)
            out = forward.score(rows, weights, temperature=temperature)
            parts.append(sequence_sums(out.logp[0], rollout.completion_mask)[0])
        sums.append(torch.cat(parts))
    return sums[0], sums[1]


def sequence_sums(logp: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sequence sums of token log-probs and token counts, both [B] float32."""
    m = mask.to(logp.dtype)
    return (logp * m).sum(-1), m.sum(-1)


def pair_batch(
    logp: Tensor,
    mask: Tensor,
    pairs: tuple[Tensor, Tensor],
    ref_logp: Tensor | None = None,
    ref_sums: tuple[Tensor, Tensor] | None = None,
) -> PreferenceBatch:
    """The `PreferenceBatch` of rows ``pairs`` (chosen, rejected) of per-token log-probs and
    mask [B, T]; the reference from its per-token log-probs ``ref_logp`` [B, T] or, for
    offline pairs, its sums ``ref_sums`` [n] (one of the two)."""
    seq, length = sequence_sums(logp, mask)
    chosen, rejected = pairs
    if ref_sums is None:
        assert ref_logp is not None
        ref_seq = sequence_sums(ref_logp, mask)[0].detach()
        ref_sums = (ref_seq[chosen], ref_seq[rejected])
    return PreferenceBatch(
        chosen_logp=seq[chosen],
        rejected_logp=seq[rejected],
        ref_chosen_logp=ref_sums[0],
        ref_rejected_logp=ref_sums[1],
        chosen_len=length[chosen],
        rejected_len=length[rejected],
    )
