"""Countdown: the expression parser, the solver and the 0/1 reward, worked out by hand."""

from __future__ import annotations

import re
import time

import pytest

from grape_evo.tasks import CountdownTask, ExpressionError, get_task, parse_expression
from grape_evo.tasks.countdown import MAX_EXPRESSION_CHARS, reachable, solve

PARSED = [
    ("3*7+4-2", 23, (3, 7, 4, 2)),
    ("2+3*4", 14, (2, 3, 4)),  # * binds tighter
    ("(2+3)*4", 20, (2, 3, 4)),
    ("10-3-2", 5, (10, 3, 2)),  # left-associative
    ("10-(3-2)", 9, (10, 3, 2)),
    ("2*3*4", 24, (2, 3, 4)),
    ("((7))", 7, (7,)),
    ("3-7", -4, (3, 7)),
    ("0", 0, (0,)),
    ("((((((((1))))))))", 1, (1,)),  # 8 levels: the deepest accepted
]

REFUSED = [
    "",
    "3 +4",  # spaces
    "-3+4",  # unary minus
    "3+-4",
    "3+",
    "+3",
    "(3+4",  # unbalanced
    "3+4)",
    ")3+4(",
    "()",
    "3**4",
    "3/4",  # no division
    "3(4)",  # no implicit product
    "07+1",  # leading zero
    "12345+1",  # a literal of 5 digits
    "1e3",
    "3+4\n",  # the parser itself takes no whitespace
    "３+4",  # full-width digit
    "__import__('os')",
    "(" * 9 + "1" + ")" * 9,  # 9 levels
    "(" * 10_000,
    "1+" * 32 + "1",  # 65 characters
]


@pytest.mark.parametrize(("text", "value", "literals"), PARSED)
def test_parser_values_by_hand(text: str, value: int, literals: tuple[int, ...]) -> None:
    assert parse_expression(text) == (value, literals)


@pytest.mark.parametrize("text", REFUSED)
def test_parser_refuses_everything_else(text: str) -> None:
    with pytest.raises(ExpressionError):
        parse_expression(text)


def test_parser_length_limit_is_checked_before_parsing() -> None:
    assert MAX_EXPRESSION_CHARS == 64
    assert parse_expression("1+" * 31 + "1") == (32, (1,) * 32)  # 63 characters
    start = time.perf_counter()
    for text in ("9" * 10**6, "(" * 10**6, "1+" * 10**6):
        with pytest.raises(ExpressionError, match="longer than 64"):
            parse_expression(text)
    assert time.perf_counter() - start < 0.5


# "3,7,2,4:23=": use 3, 7, 2 and 4 once each to make 23.
REWARDS = [
    ("3*7+4-2", 1.0),  # 21 + 4 - 2
    ("7*3-2+4", 1.0),  # another solution, in another order
    ("(3*7)+4-2", 1.0),  # redundant parentheses are fine
    ("3*7+(4-2)", 1.0),
    ("4*7-3-2", 1.0),  # 28 - 5
    ("3*7+4-2  \n", 1.0),  # trailing whitespace stripped
    ("3*7+2", 0.0),  # 23, but 4 unused: every number exactly once
    ("3*7+4-2+0", 0.0),  # a literal that is not given
    ("3*7+4-2-2+2", 0.0),  # 2 used three times
    ("23", 0.0),
    ("3*(7+4)-2", 0.0),  # 31
    ("3*7+4-2=23", 0.0),
    (" 3*7+4-2", 0.0),  # leading whitespace counts
    ("3*7+4-2)", 0.0),
    ("(3*7+4-2", 0.0),
    ("", 0.0),
    ("9" * 100_000, 0.0),
]


@pytest.mark.parametrize(("completion", "reward"), REWARDS)
def test_reward_by_hand(completion: str, reward: float) -> None:
    task = CountdownTask()
    assert task.reward(["3,7,2,4:23="], [completion]) == [reward]
    assert task.is_correct("3,7,2,4:23=", completion) == (reward == 1.0)


def test_repeated_numbers_must_each_be_used() -> None:
    task = CountdownTask()
    # "3,3,5,1:16=": (3+5)*(3-1) = 8*2 = 16 uses both 3s; 3*5+1 = 16 leaves one 3 unused.
    assert task.reward(["3,3,5,1:16="] * 3, ["(3+5)*(3-1)", "(3+5)*2", "3*5+1"]) == [1.0, 0, 0]


def test_reachable_by_hand() -> None:
    # 1+2 = 3, 1-2 = -1, 2-1 = 1, 1*2 = 2.
    assert reachable((1, 2)) == frozenset({3, -1, 1, 2})
    # (1, 1) -> 2, 0, 1, each then with 5: 7, 3, 10 / 5 / 6, 4 (positive values only);
    # (1, 5) -> 6, -4, 4, 5, each then with 1: 7, 5 / 5 / 5, 3 / 6, 4.
    assert {v for v in reachable((1, 1, 5)) if v > 0} == {3, 4, 5, 6, 7, 10}


def test_solver_by_hand() -> None:
    assert solve((2, 3), 6) == "2*3"
    assert solve((1, 1, 5), 8) is None
    # Depth-first: 2+3 = 5 first, then 4 with 5: 4+5, 4-5, 5-4, 4*5 = 20 -> "4*(2+3)".
    assert solve((2, 3, 4), 20) == "4*(2+3)"
    # Fewest parentheses: 4 - (2+3) needs them (second result of 4 with 2+3); 4 + (2+3) does not.
    assert solve((2, 3, 4), -1) == "4-(2+3)"
    assert solve((2, 3, 4), 9) == "4+2+3"
    # 7+5 = 12 cannot reach 3 with 1; 7-5 = 2 can, first as 1 + (7-5).
    assert solve((7, 5, 1), 3) == "1+7-5"
    task = CountdownTask()
    assert task.gold("2,3,4:20=") == "4*(2+3)"
    assert task.reward(["2,3,4:20="], ["4*(2+3)"]) == [1.0]


def test_prompts_are_solvable_and_in_range() -> None:
    task = CountdownTask()
    for prompt in task.prompts("train", 500, 0) + task.prompts("eval", 500, 0):
        m = re.fullmatch(r"(\d+),(\d+),(\d+),(\d+):(\d+)=", prompt)
        assert m, prompt
        numbers, target = [int(x) for x in m.groups()[:4]], int(m.group(5))
        assert all(1 <= n <= 9 for n in numbers) and 10 <= target <= 99
        gold = task.gold(prompt)
        value, literals = parse_expression(gold)
        assert value == target and sorted(literals) == sorted(numbers)


def test_permuted_numbers_share_a_split() -> None:
    task = CountdownTask()
    for prompt in task.prompts("eval", 300, 2):
        numbers, target = prompt[:-1].split(":")
        reordered = ",".join(reversed(numbers.split(",")))
        assert task.split_of(f"{reordered}:{target}=") == "eval"


def test_parameters_and_budgets() -> None:
    task = get_task("countdown", n_numbers=3, max_number=20, min_target=1, max_target=50)
    assert task.config() == {
        "name": "countdown",
        "n_numbers": 3,
        "max_number": 20,
        "min_target": 1,
        "max_target": 50,
    }
    # 3 numbers of up to 2 digits, 2 operators, at most 1 pair of parentheses: 6 + 2 + 2.
    assert task.answer_tokens == (5, 10)
    assert task.max_new_tokens == 14
    for prompt in task.prompts("train", 200, 0):
        numbers, target = prompt[:-1].split(":")
        assert len(numbers.split(",")) == 3 and 1 <= int(target) <= 50
    # Defaults: 4 one-digit numbers, 3 operators, at most 2 pairs: 7 to 11 characters.
    assert CountdownTask().answer_tokens == (7, 11)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="n_numbers must be an integer >= 2"):
        CountdownTask(n_numbers=1)
    with pytest.raises(ValueError, match="n_numbers must be <= 5"):
        CountdownTask(n_numbers=6)
    with pytest.raises(ValueError, match=re.escape("max_target (5) must be >= min_target (10)")):
        CountdownTask(max_target=5)
    with pytest.raises(ValueError, match="max_number must be < 10000"):
        CountdownTask(max_number=10_000)
    with pytest.raises(ValueError, match="no reachable target"):
        CountdownTask(n_numbers=2, max_number=2, min_target=50, max_target=60).prompts(
            "train", 1, 0
        )
    with pytest.raises(ValueError, match="not a countdown prompt"):
        CountdownTask().gold("3,7:")
