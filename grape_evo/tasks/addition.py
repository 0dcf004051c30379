"""Multi-digit addition: ``"37+45="`` -> ``"82"``.

Prompt format: ``f"{a}+{b}="`` with ``a, b`` uniform in ``[0, 10**digits)``, written in decimal
without leading zeros; the gold completion is ``str(a + b)`` (at most ``digits + 1`` characters).
``37+45=`` and ``45+37=`` share a split (the split key is the unordered pair of operands).

Rubric (weighted mean, weights in brackets), on the completion with trailing whitespace stripped:

* ``exact`` (1.0): the completion equals the sum exactly;
* ``digits`` (1.0): completion and answer aligned from the right, the number of positions
  holding the correct digit divided by ``max(len(answer), len(completion))``; any character
  (digit or not) occupies a position, so extra, missing and non-digit characters cost credit;
* ``format`` (0.5): the completion is non-empty and only ASCII digits.

Accuracy is ``exact``.
"""

from __future__ import annotations

import random
import re
from typing import Any

from grape_evo.tasks.base import Criterion, Rubric, Task, check_int
from grape_evo.tasks.registry import register_task

DIGITS = "0123456789"
_PROMPT = re.compile(r"^(\d+)\+(\d+)=$")


def _operands(prompt: str) -> tuple[int, int]:
    m = _PROMPT.match(prompt)
    if m is None:
        raise ValueError(f"not an addition prompt (expected 'A+B='): {prompt!r}")
    return int(m.group(1)), int(m.group(2))


def addition_answer(prompt: str) -> str:
    """The decimal sum for an ``"A+B="`` prompt."""
    a, b = _operands(prompt)
    return str(a + b)


def exact_score(prompt: str, completion: str) -> float:
    """1.0 when the completion is exactly the sum, else 0.0."""
    return float(completion == addition_answer(prompt))


def right_aligned_digit_score(answer: str, completion: str) -> float:
    """Correct digits, aligned from the right, over ``max(len(answer), len(completion))``."""
    denom = max(len(answer), len(completion))
    if denom == 0:
        return 1.0
    hits = sum(
        1
        for i in range(1, min(len(answer), len(completion)) + 1)
        if completion[-i] == answer[-i] and completion[-i] in DIGITS
    )
    return hits / denom


def digits_score(prompt: str, completion: str) -> float:
    """Partial credit for the digits in the right places (see module docstring)."""
    return right_aligned_digit_score(addition_answer(prompt), completion)


def is_digit_string(text: str) -> bool:
    """Non-empty and only ASCII digits (``str.isdigit`` also accepts e.g. superscripts)."""
    return bool(text) and all(ch in DIGITS for ch in text)


def format_score(prompt: str, completion: str) -> float:
    """1.0 when the completion is non-empty and only ASCII digits."""
    return float(is_digit_string(completion))


ADDITION_RUBRIC = Rubric(
    (
        Criterion("exact", 1.0, exact_score),
        Criterion("digits", 1.0, digits_score),
        Criterion("format", 0.5, format_score),
    )
)


@register_task("addition")
class AdditionTask(Task):
    """Add two ``digits``-digit numbers (see the module docstring for format and rubric)."""

    alphabet = DIGITS + "+="
    completion_alphabet = DIGITS
    reward_kind = "rubric: exact + digits + format (dense)"
    summary = "add two numbers: '37+45=' -> '82'"

    def __init__(self, digits: int = 2) -> None:
        self.digits = check_int("addition", "digits", digits)
        self.name = "addition"
        self.max_new_tokens = digits + 2
        self.answer_tokens = (1, digits + 1)
        self.rubric = ADDITION_RUBRIC

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "digits": self.digits}

    def sample_prompt(self, rng: random.Random) -> str:
        hi = 10**self.digits
        return f"{rng.randrange(hi)}+{rng.randrange(hi)}="

    def split_key(self, prompt: str) -> str:
        a, b = sorted(_operands(prompt))
        return f"{a}+{b}"

    def gold(self, prompt: str) -> str:
        return addition_answer(prompt)
