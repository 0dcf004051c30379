"""Sequence transduction over digit strings: reversal and sorting.

Prompt format: ``f"{op}:{s}="`` where ``s`` is ``length`` digits drawn uniformly with
replacement and ``op`` is ``rev`` or ``sort``:

* ``reverse``: ``"rev:4913="`` -> ``"3194"``;
* ``sort``: ``"sort:4913="`` -> ``"1349"`` (ascending). Prompts with the same multiset of
  digits (same answer) share a split.

Rubric (weighted mean, weights in brackets), on the completion with trailing whitespace stripped:

* ``exact`` (1.0): the completion equals the answer;
* ``position`` (1.0): positions (from the left) holding the right character, divided by
  ``max(len(answer), len(completion))``;
* ``multiset`` (0.5): size of the multiset intersection of the completion's and the answer's
  characters, divided by ``max(len(answer), len(completion))``.

Accuracy is ``exact``.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from typing import Any, ClassVar

from grape_evo.tasks.base import Criterion, Rubric, Task
from grape_evo.tasks.registry import register_task

DIGITS = "0123456789"
_PROMPT = re.compile(r"^(rev|sort):(\d+)=$")


def _parse(prompt: str) -> tuple[str, str]:
    m = _PROMPT.match(prompt)
    if m is None:
        raise ValueError(
            f"not a sequence prompt (expected 'rev:DIGITS=' or 'sort:DIGITS='): {prompt!r}"
        )
    return m.group(1), m.group(2)


def sequence_answer(prompt: str) -> str:
    """The reversed (``rev:``) or sorted (``sort:``) digit string of the prompt."""
    op, s = _parse(prompt)
    return s[::-1] if op == "rev" else "".join(sorted(s))


def exact_score(prompt: str, completion: str) -> float:
    """1.0 when the completion equals the answer."""
    return float(completion == sequence_answer(prompt))


def position_score(prompt: str, completion: str) -> float:
    """Left-aligned positions that match, over ``max(len(answer), len(completion))``."""
    answer = sequence_answer(prompt)
    denom = max(len(answer), len(completion))
    if denom == 0:
        return 1.0
    return sum(1 for a, c in zip(answer, completion, strict=False) if a == c) / denom


def multiset_score(prompt: str, completion: str) -> float:
    """Multiset overlap of characters, over ``max(len(answer), len(completion))``."""
    answer = sequence_answer(prompt)
    denom = max(len(answer), len(completion))
    if denom == 0:
        return 1.0
    return sum((Counter(answer) & Counter(completion)).values()) / denom


SEQUENCE_RUBRIC = Rubric(
    (
        Criterion("exact", 1.0, exact_score),
        Criterion("position", 1.0, position_score),
        Criterion("multiset", 0.5, multiset_score),
    )
)


class SequenceTask(Task):
    """Shared implementation of ``reverse`` and ``sort`` (subclasses set ``op`` and ``name``)."""

    op: ClassVar[str]
    completion_alphabet = DIGITS

    def __init__(self, length: int = 4) -> None:
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"{self.name}: length must be an integer >= 1, got {length!r}")
        self.length = length
        self.max_new_tokens = length + 2
        self.rubric = SEQUENCE_RUBRIC

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "length": self.length}

    def sample_prompt(self, rng: random.Random) -> str:
        return f"{self.op}:{''.join(rng.choice(DIGITS) for _ in range(self.length))}="

    def gold(self, prompt: str) -> str:
        op, _ = _parse(prompt)
        if op != self.op:
            raise ValueError(f"{self.name}: expected a '{self.op}:' prompt, got {prompt!r}")
        return sequence_answer(prompt)


@register_task("reverse")
class ReverseTask(SequenceTask):
    """Reverse a digit string: ``"rev:4913="`` -> ``"3194"``."""

    op = "rev"
    name = "reverse"
    alphabet = DIGITS + "rev:="


@register_task("sort")
class SortTask(SequenceTask):
    """Sort a digit string ascending: ``"sort:4913="`` -> ``"1349"``."""

    op = "sort"
    name = "sort"
    alphabet = DIGITS + "sort:="

    def split_key(self, prompt: str) -> str:
        return sequence_answer(prompt)
