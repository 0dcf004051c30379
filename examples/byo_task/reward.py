"""Reward of the byo_task example, with TRL's reward signature.

``target`` is the data column of that name, one value per completion (every data column is
passed by name; ``**kwargs`` takes the ones this reward ignores, here ``op``).

Score: 1.0 for the exact target; otherwise half the fraction of positions (from the left)
holding the right character, over ``max(len(target), len(completion))``, so in [0, 0.5).
"""

from __future__ import annotations


def score(prompts: list[str], completions: list[str], target: list[str], **kwargs) -> list[float]:
    rewards = []
    for completion, answer in zip(completions, target, strict=True):
        if completion == answer:
            rewards.append(1.0)
            continue
        hits = sum(a == c for a, c in zip(answer, completion, strict=False))
        rewards.append(0.5 * hits / max(len(answer), len(completion)))
    return rewards
