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

``long_reverse`` and ``long_sort`` are the same problems on ``min_length..max_length`` digits
(the length uniform per prompt; defaults 8 to 12 and 8 to 16) with the 0/1 reward ``exact``
alone, so a policy earns nothing for an almost-right answer.

Warm start (measured on the ``tiny`` policy: SFT at lr 3e-3, batch 64, seed 0; greedy accuracy
on 128 held-out prompts):

* ``long_sort`` (8 to 16): 0.023 / 0.133 / 0.344 / 0.586 / 0.828 after 200 / 300 / 400 / 500 /
  600 steps; ``warm_start_steps`` suggests 300 (sampling 8 completions at temperature 1, 31% of
  the prompts then get both right and wrong answers).
* ``long_reverse`` (8 to 12): 0.000 / 0.258 / 0.398 / 0.461 after 400 / 600 / 1000 / 1200
  steps; ``warm_start_steps`` suggests 600. The spread of lengths sets the difficulty (the
  model seems to find digits by absolute position): a fixed length of 8 is solved (1.000)
  after 200 steps, 8 to 10 jumps from 0.117 to 0.844 between 400 and 600 steps, and 8 to 16
  stays at 0.000 through 1200 steps.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from typing import Any, ClassVar

from grape_evo.tasks.base import Criterion, Rubric, Task, check_int, check_range, exact_rubric
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


EXACT_RUBRIC = exact_rubric(sequence_answer)


class SequenceTask(Task):
    """Shared implementation of ``reverse`` and ``sort`` (subclasses set ``op`` and ``name``)."""

    op: ClassVar[str]
    completion_alphabet = DIGITS
    reward_kind = "rubric: exact + position + multiset (dense)"

    def __init__(self, length: int = 4) -> None:
        self.length = check_int(self.name, "length", length)
        self._set_lengths(length, length)
        self.rubric = SEQUENCE_RUBRIC

    def _set_lengths(self, low: int, high: int) -> None:
        """Prompts hold ``low..high`` digits; sets ``max_new_tokens`` and ``answer_tokens``."""
        self.lengths = (low, high)
        self.max_new_tokens = high + 2
        self.answer_tokens = (low, high)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "length": self.length}

    def sample_prompt(self, rng: random.Random) -> str:
        low, high = self.lengths
        n = low if low == high else rng.randint(low, high)
        return f"{self.op}:{''.join(rng.choice(DIGITS) for _ in range(n))}="

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
    summary = "reverse a digit string: 'rev:4913=' -> '3194'"


@register_task("sort")
class SortTask(SequenceTask):
    """Sort a digit string ascending: ``"sort:4913="`` -> ``"1349"``."""

    op = "sort"
    name = "sort"
    alphabet = DIGITS + "sort:="
    summary = "sort a digit string: 'sort:4913=' -> '1349'"

    def split_key(self, prompt: str) -> str:
        return sequence_answer(prompt)


class LongSequenceMixin(SequenceTask):
    """Long variants: ``min_length..max_length`` digits per prompt and the 0/1 ``exact`` reward.

    Placed before ``ReverseTask`` or ``SortTask`` in a subclass's bases, which supply ``op``,
    the alphabet and the split key.
    """

    reward_kind = "0/1 exact"

    def __init__(self, min_length: int = 8, max_length: int = 16) -> None:
        check_range(self.name, "min_length", min_length, "max_length", max_length)
        self._set_lengths(min_length, max_length)
        self.min_length, self.max_length = min_length, max_length
        self.rubric = EXACT_RUBRIC

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "min_length": self.min_length, "max_length": self.max_length}


@register_task("long_reverse")
class LongReverseTask(LongSequenceMixin, ReverseTask):
    """Reverse 8 to 12 digits, 0/1 exact reward: ``"rev:40913882="`` -> ``"28831904"``."""

    name = "long_reverse"
    summary = "reverse 8-12 digits: 'rev:40913882=' -> '28831904'"
    warm_start_steps = 600

    def __init__(self, min_length: int = 8, max_length: int = 12) -> None:
        super().__init__(min_length, max_length)


@register_task("long_sort")
class LongSortTask(LongSequenceMixin, SortTask):
    """Sort 8 to 16 digits ascending, 0/1 exact reward: ``"sort:40913882="`` -> ``"01234889"``."""

    name = "long_sort"
    summary = "sort 8-16 digits: 'sort:40913882=' -> '01234889'"
    warm_start_steps = 300
