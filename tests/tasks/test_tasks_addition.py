"""Addition task: prompt space, splits and hand-computed rubric values."""

from __future__ import annotations

import re

import pytest

from grape_evo.tasks import AdditionTask, get_task

# Weights: exact 1.0, digits 1.0, format 0.5 -> total 2.5.
CASES = [
    # completion, exact, digits, format
    ("82", 1, 1.0, 1),
    ("83", 0, 1 / 2, 1),  # tens digit right
    ("28", 0, 0.0, 1),
    ("", 0, 0.0, 0),
    ("8x", 0, 1 / 2, 0),  # 'x' sits in the units position: wrong; '8' right
    ("082", 0, 2 / 3, 1),  # both digits right, one extra position
    ("2", 0, 1 / 2, 1),  # right-aligned, '2' is the units digit: 1 of max(2, 1) positions
    (" 82", 0, 2 / 3, 0),  # leading space counts as a character
    ("82  \n", 1, 1.0, 1),  # trailing whitespace stripped
    ("８２", 0, 0.0, 0),  # full-width digits are not ASCII digits
]


def expected(exact: float, digits: float, fmt: float) -> float:
    return (1.0 * exact + 1.0 * digits + 0.5 * fmt) / 2.5


@pytest.mark.parametrize(("completion", "exact", "digits", "fmt"), CASES)
def test_rubric_values_by_hand(completion: str, exact: int, digits: float, fmt: int) -> None:
    task = AdditionTask()
    (r,) = task.reward(["37+45="], [completion])
    assert r == pytest.approx(expected(exact, digits, fmt))
    parts = task.breakdown(["37+45="], [completion])
    assert parts["exact"] == [exact]
    assert parts["digits"] == [pytest.approx(digits)]
    assert parts["format"] == [fmt]
    assert task.is_correct("37+45=", completion) == bool(exact)


def test_headline_values() -> None:
    task = AdditionTask()
    assert task.reward(["37+45="] * 4, ["82", "83", "", "8x"]) == pytest.approx(
        [1.0, 0.4, 0.0, 0.2]
    )


def test_carry_and_length_mismatch() -> None:
    task = AdditionTask()
    # 99+99 = 198: "98" gets the two low digits, misses the hundreds: digits 2/3.
    (r,) = task.reward(["99+99="], ["98"])
    assert r == pytest.approx((0 + 2 / 3 + 0.5) / 2.5)
    assert task.gold("99+99=") == "198"
    assert task.gold("0+0=") == "0"
    (r,) = task.reward(["0+0="], ["00"])  # 1 right of max(1, 2) positions
    assert r == pytest.approx((0 + 1 / 2 + 0.5) / 2.5)


def test_prompt_format_and_operand_range() -> None:
    for digits in (1, 2, 3):
        task = get_task("addition", digits=digits)
        assert task.max_new_tokens == digits + 2
        seen_a: set[int] = set()
        for prompt in task.prompts("train", 1000, 0) + task.prompts("eval", 1000, 0):
            m = re.fullmatch(r"(0|[1-9]\d*)\+(0|[1-9]\d*)=", prompt)
            assert m, prompt
            a, b = int(m.group(1)), int(m.group(2))
            assert 0 <= a < 10**digits and 0 <= b < 10**digits
            assert task.gold(prompt) == str(a + b)
            seen_a.add(a)
        if digits == 1:
            assert seen_a == set(range(10))
        else:
            assert max(seen_a) >= 10 ** (digits - 1)  # full-width operands occur


def test_commuted_problems_share_a_split() -> None:
    task = AdditionTask()
    for prompt in task.prompts("eval", 500, 3):
        a, b = prompt[:-1].split("+")
        assert task.split_of(f"{b}+{a}=") == "eval"


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="digits"):
        AdditionTask(digits=0)
    with pytest.raises(ValueError, match="addition prompt"):
        AdditionTask().gold("37-45=")
