"""Held-out evaluation of M members on the task's fixed evaluation set.

Every run of a task is scored on the same prompts, `Task.eval_set` (``eval_prompts`` distinct
held-out prompts in an order fixed by the task alone, or the whole held-out split), so runs with
different seeds, objectives or members differ only in what they generate:

* ``reward``: the expected gold reward under sampling at the training temperature, the mean over
  ``eval_samples`` completions per prompt drawn with the stream ``(seed, "eval")`` of the
  member's seed (the same random numbers for every member with that seed);
* ``accuracy`` and ``greedy_reward``: the accuracy criterion and the gold reward of greedy
  completions;
* ``kl_to_ref``: the per-sequence KL(pi || pi_ref), k3 summed over the tokens of
  temperature-1 samples, mean over sequences;
* ``samples``: the first sampled completion of each of the first `LOGGED_SAMPLES` prompts,
  with its gold reward (for trackers).

``gold_reward`` is the task's held-out score: its training reward, except for tasks whose
training reward is a gameable proxy of a hidden gold one.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import torch

from grape_evo.policy import Forward, Rollout, Weights, decode, rows_of, stream_key
from grape_evo.policy.tokenizer import TextTokenizer
from grape_evo.tasks import Task
from grape_evo.training.batches import reference_logps
from grape_evo.training.config import TrainConfig
from grape_evo.training.losses import sequence_k3
from grape_evo.training.records import EvalReport, Sample

LOGGED_SAMPLES = 4
"""Sampled completions an evaluation keeps for trackers (one per prompt)."""


@torch.no_grad()
def evaluate(
    forward: Forward,
    weights: Sequence[Weights],
    tokenizer: TextTokenizer,
    task: Task,
    prompts: list[str],
    config: TrainConfig,
    max_length: int | None,
    device: torch.device,
    seeds: Sequence[int] | None = None,
    references: Sequence[Weights | None] | None = None,
) -> list[EvalReport]:
    """One `EvalReport` per member of ``weights`` on the evaluation set ``prompts``; member m
    samples with the stream of ``seeds[m]`` and measures its KL to ``references[m]`` (as in
    `reference_logps`; default: ``config.seed`` and the forward's own reference for all)."""
    members = len(weights)
    seeds = list(seeds or [config.seed] * members)
    references = list(references or [None] * members)

    def run(group: int, sampled: bool, temperature: float) -> list[Rollout]:
        keys = [stream_key(seed, "eval") for seed in seeds] if sampled else None
        return decode(
            forward,
            weights,
            tokenizer,
            [prompts] * members,
            [group] * members,
            task.max_new_tokens,
            keys,
            temperature,
            max_length,
            device,
        )

    greedy = run(1, False, 1.0)
    sampled = run(config.eval_samples, True, config.temperature)
    at_one = sampled if config.temperature == 1.0 else run(1, True, 1.0)
    kls = _sequence_kl(forward, weights, references, at_one, tokenizer.pad_id)
    reports = []
    for member in range(members):
        greedy_rewards = task.gold_reward(prompts, greedy[member].texts)
        correct = task.correct_flags(prompts, greedy[member].texts, greedy_rewards)
        rollout = sampled[member]
        rewards = task.gold_reward(rollout.prompts, rollout.texts)
        firsts = range(0, len(rewards), config.eval_samples)[:LOGGED_SAMPLES]
        reports.append(
            EvalReport(
                reward=statistics.fmean(rewards),
                accuracy=statistics.fmean(float(c) for c in correct),
                kl_to_ref=kls[member],
                greedy_reward=statistics.fmean(greedy_rewards),
                samples=tuple(
                    Sample(rollout.prompts[i], rollout.texts[i], rewards[i]) for i in firsts
                ),
            )
        )
    return reports


def _sequence_kl(
    forward: Forward,
    weights: Sequence[Weights],
    references: Sequence[Weights | None],
    rollouts: list[Rollout],
    pad_id: int,
) -> list[float]:
    """Mean per-sequence k3 KL(pi || pi_ref) of each member on its own samples."""
    own = forward.score(rows_of(rollouts, pad_id), weights).logp
    refs = reference_logps(forward, rollouts, references, pad_id)
    kls = []
    for m, (rollout, ref) in enumerate(zip(rollouts, refs, strict=True)):
        b, t = ref.shape
        kls.append(sequence_k3(own[m, :b, :t], ref, rollout.completion_mask).mean().item())
    return kls
