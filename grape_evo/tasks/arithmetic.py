"""Multi-digit arithmetic with a 0/1 reward: ``long_addition`` and ``multiplication``.

Prompt format: ``f"{a}{op}{b}="`` with ``op`` ``+`` or ``*``, operands in decimal without leading
zeros; the gold completion is the exact result, answer only (``"58231+90412="`` ->
``"148643"``, ``"74*56="`` -> ``"4144"``). An operand of ``d`` digits is uniform in
``[10**(d-1), 10**d)``, with ``d`` uniform in the task's range for that operand:

* ``long_addition(min_digits=5, max_digits=5)``: both operands have ``min_digits..max_digits``
  digits; 5-digit sums have 5 or 6 digits (``max_digits=8``: 5 to 9).
* ``multiplication(min_digits=2, max_digits=2, right_digits=2)``: the left operand has
  ``min_digits..max_digits`` digits, the right one ``right_digits``; 2x2 products have 3 or 4
  digits (``max_digits=3`` mixes in 3x2 products, up to 5 digits).

Both operations commute, so ``a op b=`` and ``b op a=`` share a split (the split key is the
unordered pair of operands).

The reward is 0/1: ``exact`` (1.0 when the completion, trailing whitespace stripped, is the
answer), with no format or per-digit term. A format term would pay for what the SFT warm start
already teaches (a digit string) and per-digit credit is the dense partial credit that
saturated in the committed experiments; the whole signal is whether the answer is right.
Completions are compared as strings and never converted to numbers, so a hostile completion
(a million digits) costs one string comparison. Accuracy is ``exact``.

Warm start (measured on the ``tiny`` policy: SFT at lr 3e-3, batch 64, seed 0; greedy accuracy
on 128 held-out prompts after 400 / 800 / 1200 steps). Operands of mixed lengths are much
harder for it than fixed lengths (it seems to find digits by absolute position), hence the
fixed-length defaults:

* ``long_addition`` 5 digits: 0.023 / 0.031 / 0.055 (4 digits: 0.023 / 0.070 / 0.109;
  3 to 5 digits: 0.000 at all three; 5 to 8 digits: 0.000 through 600 steps);
* ``multiplication`` 2x2: 0.008 / 0.008 / 0.039 (3x2: 0.000 / 0.008 / 0.016).

``warm_start_steps`` suggests 1000 and 1200 steps: a start near 0.05 where, sampling 8
completions at temperature 1, a third (addition) and a fifth (multiplication) of the prompts
get both right and wrong answers, which is what group-relative objectives learn from.
"""

from __future__ import annotations

import operator
import random
import re
from collections.abc import Callable
from typing import Any, ClassVar

from grape_evo.tasks.base import Task, check_int, check_range, exact_rubric
from grape_evo.tasks.registry import register_task

DIGITS = "0123456789"
_PROMPT = re.compile(r"^([1-9]\d*)([+*])([1-9]\d*)=$")
_OPERATIONS: dict[str, Callable[[int, int], int]] = {"+": operator.add, "*": operator.mul}


def parse_arithmetic(prompt: str) -> tuple[int, str, int]:
    """``(a, op, b)`` of an ``"A+B="`` or ``"A*B="`` prompt."""
    m = _PROMPT.match(prompt)
    if m is None:
        raise ValueError(f"not an arithmetic prompt (expected 'A+B=' or 'A*B='): {prompt!r}")
    return int(m.group(1)), m.group(2), int(m.group(3))


def arithmetic_answer(prompt: str) -> str:
    """The exact result of an ``"A+B="`` or ``"A*B="`` prompt, in decimal."""
    a, op, b = parse_arithmetic(prompt)
    return str(_OPERATIONS[op](a, b))


ARITHMETIC_RUBRIC = exact_rubric(arithmetic_answer)


def draw_operand(rng: random.Random, low: int, high: int) -> int:
    """A number of ``d`` digits, ``d`` uniform in ``[low, high]``, uniform among those."""
    d = rng.randint(low, high)
    return rng.randrange(10 ** (d - 1), 10**d)


class ArithmeticTask(Task):
    """Shared implementation: ``a op b=`` with operands of ``left`` and ``right`` digit ranges."""

    op: ClassVar[str]
    completion_alphabet = DIGITS
    reward_kind = "0/1 exact"

    def _setup(
        self, left: tuple[int, int], right: tuple[int, int], answer_digits: tuple[int, int]
    ) -> None:
        """Digit ranges ``(low, high)`` of the operands and of the result."""
        self.left, self.right = left, right
        self.answer_tokens = answer_digits
        self.max_new_tokens = answer_digits[1] + 2
        self.rubric = ARITHMETIC_RUBRIC

    def sample_prompt(self, rng: random.Random) -> str:
        a = draw_operand(rng, *self.left)
        b = draw_operand(rng, *self.right)
        return f"{a}{self.op}{b}="

    def split_key(self, prompt: str) -> str:
        a, op, b = parse_arithmetic(prompt)
        return f"{min(a, b)}{op}{max(a, b)}"

    def gold(self, prompt: str) -> str:
        if parse_arithmetic(prompt)[1] != self.op:
            raise ValueError(f"{self.name}: expected an 'A{self.op}B=' prompt, got {prompt!r}")
        return arithmetic_answer(prompt)


@register_task("long_addition")
class LongAdditionTask(ArithmeticTask):
    """Add two 5-digit numbers, 0/1 exact: ``"58231+90412="`` -> ``"148643"``."""

    op = "+"
    name = "long_addition"
    alphabet = DIGITS + "+="
    summary = "add two 5-digit numbers: '58231+90412=' -> '148643'"
    warm_start_steps = 1000

    def __init__(self, min_digits: int = 5, max_digits: int = 5) -> None:
        check_range(self.name, "min_digits", min_digits, "max_digits", max_digits)
        self.min_digits, self.max_digits = min_digits, max_digits
        digits = (min_digits, max_digits)
        self._setup(digits, digits, (min_digits, max_digits + 1))

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "min_digits": self.min_digits, "max_digits": self.max_digits}


@register_task("multiplication")
class MultiplicationTask(ArithmeticTask):
    """Multiply two 2-digit numbers, answer only, 0/1 exact: ``"74*56="`` -> ``"4144"``."""

    op = "*"
    name = "multiplication"
    alphabet = DIGITS + "*="
    summary = "multiply two 2-digit numbers, answer only: '74*56=' -> '4144'"
    warm_start_steps = 1200

    def __init__(self, min_digits: int = 2, max_digits: int = 2, right_digits: int = 2) -> None:
        check_range(self.name, "min_digits", min_digits, "max_digits", max_digits)
        check_int(self.name, "right_digits", right_digits)
        self.min_digits, self.max_digits, self.right_digits = min_digits, max_digits, right_digits
        self._setup(
            (min_digits, max_digits),
            (right_digits, right_digits),
            (min_digits + right_digits - 1, max_digits + right_digits),
        )

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "min_digits": self.min_digits,
            "max_digits": self.max_digits,
            "right_digits": self.right_digits,
        }
