"""Reverse and sort tasks: prompt format and hand-computed rubric values."""

from __future__ import annotations

import re

import pytest

from grape_evo.tasks import ReverseTask, SortTask, get_task


def expected(exact: float, position: float, multiset: float) -> float:
    # Weights: exact 1.0, position 1.0, multiset 0.5 -> total 2.5.
    return (exact + position + 0.5 * multiset) / 2.5


REVERSE_CASES = [
    # "rev:4913=" -> "3194"; completion, exact, position, multiset
    ("3194", 1, 1.0, 1.0),
    ("3149", 0, 2 / 4, 4 / 4),
    ("", 0, 0.0, 0.0),
    ("31", 0, 2 / 4, 2 / 4),
    ("319444", 0, 4 / 6, 4 / 6),  # extra 4s: only one 4 in the answer
    ("4913", 0, 0 / 4, 4 / 4),  # echoing the input
    ("abcd", 0, 0.0, 0.0),
    ("3194\n", 1, 1.0, 1.0),
]


@pytest.mark.parametrize(("completion", "exact", "position", "multiset"), REVERSE_CASES)
def test_reverse_rubric_by_hand(
    completion: str, exact: int, position: float, multiset: float
) -> None:
    task = ReverseTask()
    (r,) = task.reward(["rev:4913="], [completion])
    assert r == pytest.approx(expected(exact, position, multiset))
    parts = task.breakdown(["rev:4913="], [completion])
    assert parts["position"] == [pytest.approx(position)]
    assert parts["multiset"] == [pytest.approx(multiset)]
    assert task.is_correct("rev:4913=", completion) == bool(exact)


def test_sort_rubric_by_hand() -> None:
    task = SortTask()
    assert task.gold("sort:4913=") == "1349"
    assert task.gold("sort:3300=") == "0033"
    rewards = task.reward(["sort:4913="] * 3, ["1349", "9431", "1339"])
    # "9431": no position right, same multiset -> 0.5/2.5. "1339": 3 positions, 3 of 4 shared.
    assert rewards == pytest.approx([1.0, 0.2, expected(0, 3 / 4, 3 / 4)])
    # duplicates in the multiset: answer "0033" vs "0003": positions 0,0,_,3 -> 3/4; shared 0,0,3
    (r,) = task.reward(["sort:3300="], ["0003"])
    assert r == pytest.approx(expected(0, 3 / 4, 3 / 4))


def test_prompt_format_and_length() -> None:
    for length in (1, 4, 7):
        for name, op in (("reverse", "rev"), ("sort", "sort")):
            task = get_task(name, length=length)
            assert task.max_new_tokens == length + 2
            for prompt in task.prompts("train", 200, 0):
                m = re.fullmatch(rf"{op}:(\d{{{length}}})=", prompt)
                assert m, prompt
                s = m.group(1)
                want = s[::-1] if name == "reverse" else "".join(sorted(s))
                assert task.gold(prompt) == want


def test_sort_split_by_multiset() -> None:
    task = SortTask()
    for prompt in task.prompts("train", 300, 0):
        digits = prompt[5:-1]
        assert task.split_of(f"sort:{digits[::-1]}=") == "train"
        assert task.split_of(f"sort:{''.join(sorted(digits))}=") == "train"


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="length"):
        ReverseTask(length=0)
    with pytest.raises(ValueError, match="sequence prompt"):
        ReverseTask().gold("rev:12a=")
    with pytest.raises(ValueError, match="'sort:'"):
        SortTask().gold("rev:1234=")
