"""long_addition and multiplication: prompt space, splits and 0/1 rewards worked out by hand."""

from __future__ import annotations

import re
import time

import pytest

from grape_evo.tasks import LongAdditionTask, MultiplicationTask, get_task

# 58231 + 90412 = 148643;  374 * 56 = 374 * 50 + 374 * 6 = 18700 + 2244 = 20944 (3x2 digits).
ADDITION_CASES = [
    ("148643", 1.0),
    ("148643 \n", 1.0),  # trailing whitespace stripped
    ("148642", 0.0),  # one digit off: no partial credit
    ("48643", 0.0),  # carry dropped
    ("0148643", 0.0),  # leading zero
    (" 148643", 0.0),  # leading whitespace counts
    ("148,643", 0.0),
    ("148643148643", 0.0),
    ("", 0.0),
    ("１４８６４３", 0.0),  # full-width digits
]
MULTIPLICATION_CASES = [
    ("20944", 1.0),
    ("20944\n", 1.0),
    ("20945", 0.0),
    ("2094", 0.0),
    ("374*56", 0.0),
    ("=20944", 0.0),
    ("", 0.0),
]


@pytest.mark.parametrize(("completion", "reward"), ADDITION_CASES)
def test_long_addition_reward_by_hand(completion: str, reward: float) -> None:
    task = LongAdditionTask()
    assert task.gold("58231+90412=") == "148643"
    assert task.reward(["58231+90412="], [completion]) == [reward]
    assert task.is_correct("58231+90412=", completion) == (reward == 1.0)


@pytest.mark.parametrize(("completion", "reward"), MULTIPLICATION_CASES)
def test_multiplication_reward_by_hand(completion: str, reward: float) -> None:
    task = MultiplicationTask(max_digits=3)
    assert task.gold("374*56=") == "20944"
    assert task.gold("56*374=") == "20944"
    assert task.reward(["374*56="], [completion]) == [reward]
    assert task.is_correct("374*56=", completion) == (reward == 1.0)


def test_hostile_completions_are_cheap_and_zero() -> None:
    task = LongAdditionTask()
    start = time.perf_counter()
    rewards = task.reward(["58231+90412="] * 3, ["9" * 1_000_000, "1" * 5000 + "+", "\x00" * 100])
    assert rewards == [0.0, 0.0, 0.0]
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize(
    ("kwargs", "left", "right"),
    [
        ({}, (5, 5), (5, 5)),
        ({"max_digits": 8}, (5, 8), (5, 8)),
        ({"min_digits": 3, "max_digits": 3}, (3, 3), (3, 3)),
    ],
)
def test_long_addition_prompt_format(kwargs: dict, left: tuple, right: tuple) -> None:
    task = get_task("long_addition", **kwargs)
    seen = set()
    for prompt in task.prompts("train", 1000, 0):
        m = re.fullmatch(r"([1-9]\d*)\+([1-9]\d*)=", prompt)
        assert m, prompt
        a, b = m.groups()
        assert left[0] <= len(a) <= left[1] and right[0] <= len(b) <= right[1]
        assert task.gold(prompt) == str(int(a) + int(b))
        seen.add(len(a))
    assert seen == set(range(left[0], left[1] + 1))  # every operand length occurs


@pytest.mark.parametrize(("max_digits", "left_lengths"), [(2, {2}), (3, {2, 3})])
def test_multiplication_prompt_format(max_digits: int, left_lengths: set[int]) -> None:
    task = MultiplicationTask(max_digits=max_digits)
    lengths = set()
    for prompt in task.prompts("eval", 1000, 0):
        m = re.fullmatch(r"([1-9]\d*)\*([1-9]\d*)=", prompt)
        assert m, prompt
        a, b = m.groups()
        assert len(b) == 2
        lengths.add(len(a))
        assert task.gold(prompt) == str(int(a) * int(b))
    assert lengths == left_lengths  # max_digits=3: both 2x2 and 3x2 problems


def test_budgets_by_hand() -> None:
    # 5-digit sums: 10000 + 10000 = 20000 (5 digits) to 99999 * 2 = 199998 (6 digits).
    assert LongAdditionTask().answer_tokens == (5, 6)
    assert LongAdditionTask().max_new_tokens == 8
    # 5..8-digit sums: 20000 (5 digits) to 99999999 * 2 (9 digits).
    assert LongAdditionTask(max_digits=8).answer_tokens == (5, 9)
    assert LongAdditionTask(max_digits=8).max_new_tokens == 11
    # 2x2 products: 10 * 10 = 100 (3 digits) to 99 * 99 = 9801 (4 digits).
    assert MultiplicationTask().answer_tokens == (3, 4)
    assert MultiplicationTask().max_new_tokens == 6
    # 2x2 to 3x2: up to 999 * 99 = 98901 (5 digits).
    assert MultiplicationTask(max_digits=3).answer_tokens == (3, 5)


def test_commuted_problems_share_a_split() -> None:
    for name, op in (("long_addition", "+"), ("multiplication", "*")):
        task = get_task(name)
        for prompt in task.prompts("train", 300, 1):
            a, b = prompt[:-1].split(op)
            assert task.split_of(f"{b}{op}{a}=") == "train"


def test_config_round_trip_and_bad_arguments() -> None:
    task = get_task("multiplication", min_digits=3, max_digits=4, right_digits=3)
    assert task.config() == {
        "name": "multiplication",
        "min_digits": 3,
        "max_digits": 4,
        "right_digits": 3,
    }
    assert get_task(**task.config()).prompts("train", 5, 0) == task.prompts("train", 5, 0)
    assert LongAdditionTask().config() == {
        "name": "long_addition",
        "min_digits": 5,
        "max_digits": 5,
    }
    with pytest.raises(
        ValueError, match=re.escape("long_addition: max_digits (4) must be >= min_digits (5)")
    ):
        LongAdditionTask(min_digits=5, max_digits=4)
    with pytest.raises(ValueError, match="multiplication: right_digits must be an integer >= 1"):
        MultiplicationTask(right_digits=0)
    with pytest.raises(ValueError, match="min_digits"):
        LongAdditionTask(min_digits=True)
    with pytest.raises(ValueError, match="expected an 'A\\*B=' prompt"):
        MultiplicationTask().gold("12+34=")
    with pytest.raises(ValueError, match="not an arithmetic prompt"):
        LongAdditionTask().gold("12-34=")
