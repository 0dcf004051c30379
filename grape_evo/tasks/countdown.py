"""Countdown: reach a target by combining every given number once with ``+``, ``-`` and ``*``.

Prompt format: ``f"{n1},{n2},...,{nk}:{target}="`` (``"3,7,2,4:23="``): ``n_numbers`` numbers,
each uniform in ``[1, max_number]`` (repeats allowed), then the target. The completion is an
arithmetic expression: ``"3*7+4-2"``, ``"4*7-3-2"`` and ``"(7-2)*4+3"`` all solve that prompt
(many expressions solve most prompts), so a policy has to explore. ``"3,7,2,4:23="`` and
``"7,3,4,2:23="`` share a split (the split key is the sorted numbers and the target).

Expression grammar (a completion outside it scores 0; it is parsed by a small recursive-descent
parser, never evaluated by Python)::

    expr   := term (("+" | "-") term)*        left-associative
    term   := factor ("*" factor)*
    factor := NUMBER | "(" expr ")"
    NUMBER := "0" | [1-9][0-9]*              no leading zeros, at most 4 digits

Only the characters ``0-9 + - * ( )`` are accepted: no spaces, no unary minus, no division.
Expressions longer than :data:`MAX_EXPRESSION_CHARS` characters or nested deeper than
:data:`MAX_DEPTH` parentheses are refused before any arithmetic.

Reward (0/1, ``solves``): 1.0 when the completion (trailing whitespace stripped) parses, its
literals are exactly the prompt's numbers as a multiset (each used exactly once: a solution
must use them all, which makes answers longer and the search harder than "at most once"), and
its value equals the target; else 0.0. Accuracy is ``solves``.

Instances: the target is drawn uniformly from the values in ``[min_target, max_target]``
that some expression over the numbers reaches (intermediate values may be negative), so
every prompt is solvable; numbers with no such value are redrawn. ``gold(prompt)`` is the first
solution of a deterministic depth-first solver, written with the fewest parentheses.

Warm start (measured on the ``tiny`` policy: SFT at lr 3e-3, batch 64, seed 0; greedy accuracy
on 128 held-out prompts): 0.016 / 0.055 / 0.039 / 0.086 after 400 / 600 / 1000 / 1200 steps.
``warm_start_steps`` suggests 1000: sampling 8 completions at temperature 1, a fifth of the
prompts then get both right and wrong answers.
"""

from __future__ import annotations

import functools
import random
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any, NamedTuple

from grape_evo.tasks.base import Criterion, Rubric, Task, check_int, check_range
from grape_evo.tasks.registry import register_task

EXPRESSION_CHARS = frozenset("0123456789+-*()")
MAX_EXPRESSION_CHARS = 64
"""Longest completion the parser reads; longer ones score 0 unread."""
MAX_DEPTH = 8
"""Deepest parenthesis nesting the parser accepts."""
MAX_LITERAL_DIGITS = 4
MAX_REDRAWS = 1000
MAX_NUMBERS = 5
"""Most numbers per prompt (the solver's search grows factorially with it)."""
_PROMPT = re.compile(r"^([1-9]\d*(?:,[1-9]\d*)*):(\d+)=$")


class ExpressionError(ValueError):
    """A completion outside the Countdown expression grammar."""


class _Parser:
    """Recursive descent over the grammar in the module docstring; collects the literals."""

    def __init__(self, text: str) -> None:
        self.text, self.pos, self.depth = text, 0, 0
        self.literals: list[int] = []

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expr(self) -> int:
        value = self.term()
        while self.peek() in ("+", "-"):
            op = self.peek()
            self.pos += 1
            rhs = self.term()
            value = value + rhs if op == "+" else value - rhs
        return value

    def term(self) -> int:
        value = self.factor()
        while self.peek() == "*":
            self.pos += 1
            value *= self.factor()
        return value

    def factor(self) -> int:
        ch = self.peek()
        if ch == "(":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise ExpressionError(f"parentheses nested deeper than {MAX_DEPTH}")
            self.pos += 1
            value = self.expr()
            if self.peek() != ")":
                raise ExpressionError(f"expected ')' at position {self.pos}")
            self.pos += 1
            self.depth -= 1
            return value
        start = self.pos
        while self.peek().isdigit():
            self.pos += 1
        literal = self.text[start : self.pos]
        if not literal:
            raise ExpressionError(f"expected a number or '(' at position {start}")
        if len(literal) > MAX_LITERAL_DIGITS or (len(literal) > 1 and literal[0] == "0"):
            raise ExpressionError(f"invalid number {literal[:8]!r}")
        self.literals.append(int(literal))
        return self.literals[-1]


def parse_expression(text: str) -> tuple[int, tuple[int, ...]]:
    """``(value, literals)`` of a Countdown expression; ExpressionError outside the grammar."""
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(f"longer than {MAX_EXPRESSION_CHARS} characters")
    if not text or not set(text) <= EXPRESSION_CHARS:
        raise ExpressionError("empty, or a character other than 0-9 + - * ( )")
    parser = _Parser(text)
    value = parser.expr()
    if parser.pos != len(text):
        raise ExpressionError(f"unexpected {text[parser.pos]!r} at position {parser.pos}")
    return value, tuple(parser.literals)


def parse_countdown_prompt(prompt: str) -> tuple[tuple[int, ...], int]:
    """``(numbers, target)`` of a ``"N1,N2,...:TARGET="`` prompt."""
    m = _PROMPT.match(prompt)
    if m is None:
        raise ValueError(f"not a countdown prompt (expected 'N1,N2,...:TARGET='): {prompt!r}")
    return tuple(int(x) for x in m.group(1).split(",")), int(m.group(2))


def solves_score(prompt: str, completion: str) -> float:
    """1.0 when the completion uses each number exactly once and equals the target."""
    numbers, target = parse_countdown_prompt(prompt)
    try:
        value, literals = parse_expression(completion)
    except ExpressionError:
        return 0.0
    return float(value == target and Counter(literals) == Counter(numbers))


COUNTDOWN_RUBRIC = Rubric((Criterion("solves", 1.0, solves_score),))


@functools.lru_cache(maxsize=65536)
def countdown_answer(prompt: str) -> str:
    """The solver's expression for a prompt (see :func:`solve`)."""
    numbers, target = parse_countdown_prompt(prompt)
    found = solve(numbers, target)
    if found is None:
        raise ValueError(f"countdown: no solution for {prompt!r}")
    return found


class _Term(NamedTuple):
    """A partial solution: its value, its text and its precedence (0: + or -, 1: *, 2: atom)."""

    value: int
    text: str
    prec: int


def _wrap(term: _Term, prec: int) -> str:
    return f"({term.text})" if term.prec < prec else term.text


def _combine(a: _Term, b: _Term) -> Iterator[_Term]:
    """``a+b``, ``a-b``, ``b-a`` and ``a*b``, each with the fewest parentheses."""
    yield _Term(a.value + b.value, f"{a.text}+{b.text}", 0)
    yield _Term(a.value - b.value, f"{a.text}-{_wrap(b, 1)}", 0)
    yield _Term(b.value - a.value, f"{b.text}-{_wrap(a, 1)}", 0)
    yield _Term(a.value * b.value, f"{_wrap(a, 1)}*{_wrap(b, 1)}", 1)


def _merges(items: tuple[_Term, ...]) -> Iterator[tuple[_Term, ...]]:
    """Every way to replace two items by one combination of them, in a fixed order."""
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            rest = items[:i] + items[i + 1 : j] + items[j + 1 :]
            for merged in _combine(items[i], items[j]):
                yield (*rest, merged)


@functools.lru_cache(maxsize=65536)
def reachable(numbers: tuple[int, ...]) -> frozenset[int]:
    """Every value of an expression using each of ``numbers`` exactly once (pass them sorted:
    the cache is keyed by the tuple)."""
    if len(numbers) == 1:
        return frozenset(numbers)
    terms = tuple(_Term(n, "", 2) for n in numbers)
    out: set[int] = set()
    for merged in _merges(terms):
        out |= reachable(tuple(sorted(t.value for t in merged)))
    return frozenset(out)


def solve(numbers: tuple[int, ...], target: int) -> str | None:
    """The first expression (depth-first, in the order of ``numbers``) using each number once
    and equal to ``target``; None when there is none. Branches that cannot reach the target
    (by :func:`reachable`) are skipped."""

    def search(items: tuple[_Term, ...]) -> str | None:
        if len(items) == 1:
            return items[0].text if items[0].value == target else None
        if target not in reachable(tuple(sorted(t.value for t in items))):
            return None
        for merged in _merges(items):
            found = search(merged)
            if found is not None:
                return found
        return None

    return search(tuple(_Term(n, str(n), 2) for n in numbers))


@register_task("countdown")
class CountdownTask(Task):
    """Reach the target with every number once and + - *: ``"3,7,2,4:23="`` -> ``"3*7+4-2"``."""

    name = "countdown"
    alphabet = "0123456789,:=+-*()"
    completion_alphabet = "0123456789+-*()"
    reward_kind = "0/1 verified (many answers)"
    summary = "hit the target using every number once with + - *: '3,7,2,4:23=' -> '3*7+4-2'"
    warm_start_steps = 1000

    def __init__(
        self, n_numbers: int = 4, max_number: int = 9, min_target: int = 10, max_target: int = 99
    ) -> None:
        if check_int(self.name, "n_numbers", n_numbers, 2) > MAX_NUMBERS:
            raise ValueError(f"countdown: n_numbers must be <= {MAX_NUMBERS}, got {n_numbers}")
        if check_int(self.name, "max_number", max_number) >= 10**MAX_LITERAL_DIGITS:
            raise ValueError(f"countdown: max_number must be < {10**MAX_LITERAL_DIGITS}")
        check_range(self.name, "min_target", min_target, "max_target", max_target)
        self.n_numbers, self.max_number = n_numbers, max_number
        self.min_target, self.max_target = min_target, max_target
        width = len(str(max_number))
        # Each number once, n - 1 operators, and at most n - 2 parenthesised sub-expressions.
        longest = n_numbers * width + (n_numbers - 1) + 2 * (n_numbers - 2)
        self.answer_tokens = (2 * n_numbers - 1, longest)
        self.max_new_tokens = longest + 4  # the end-of-sequence token and redundant parentheses
        self.rubric = COUNTDOWN_RUBRIC

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "n_numbers": self.n_numbers,
            "max_number": self.max_number,
            "min_target": self.min_target,
            "max_target": self.max_target,
        }

    def sample_prompt(self, rng: random.Random) -> str:
        for _ in range(MAX_REDRAWS):
            numbers = [rng.randint(1, self.max_number) for _ in range(self.n_numbers)]
            values = reachable(tuple(sorted(numbers)))
            targets = sorted(v for v in values if self.min_target <= v <= self.max_target)
            if targets:
                return f"{','.join(map(str, numbers))}:{rng.choice(targets)}="
        raise ValueError(f"{self!r}: no reachable target in [min_target, max_target]")

    def split_key(self, prompt: str) -> str:
        numbers, target = parse_countdown_prompt(prompt)
        return f"{sorted(numbers)}:{target}"

    def gold(self, prompt: str) -> str:
        return countdown_answer(prompt)

    def is_correct(self, prompt: str, completion: str) -> bool:
        return solves_score(prompt, self.normalize(completion)) == 1.0
