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


def test_registered_reverse_and_sort_keep_their_prompts() -> None:
    # First prompts of the defaults and of length=7, recorded from the code before the long
    # variants were added (commit 480763a): the existing tasks draw exactly as before.
    assert get_task("reverse").prompts("train", 3, 0) == ["rev:5281=", "rev:2441=", "rev:0718="]
    assert get_task("reverse").prompts("eval", 3, 0) == ["rev:1981=", "rev:8359=", "rev:7689="]
    assert get_task("sort").prompts("train", 3, 0) == ["sort:7305=", "sort:7893=", "sort:5536="]
    assert get_task("sort").prompts("eval", 3, 0) == ["sort:0671=", "sort:6981=", "sort:5401="]
    assert get_task("reverse", length=7).prompts("train", 2, 1) == ["rev:0978451=", "rev:2652543="]
    assert get_task("sort", length=7).prompts("train", 2, 1) == ["sort:7416759=", "sort:8410262="]
    assert get_task("sort").config() == {"name": "sort", "length": 4}
    assert get_task("reverse").rubric.names == ("exact", "position", "multiset")


LONG_CASES = [
    # "rev:40913882=" -> "28831904"; "sort:40913882=" -> "01234889"
    ("long_reverse", "rev:40913882=", "28831904", 1.0),
    ("long_reverse", "rev:40913882=", "28831904\n", 1.0),
    ("long_reverse", "rev:40913882=", "28831940", 0.0),  # dense rubric: (0 + 6/8 + 0.5) / 2.5
    ("long_reverse", "rev:40913882=", "40913882", 0.0),  # echo
    ("long_reverse", "rev:40913882=", "2883190", 0.0),
    ("long_sort", "sort:40913882=", "01234889", 1.0),
    ("long_sort", "sort:40913882=", "01234888", 0.0),
    ("long_sort", "sort:40913882=", "012348899", 0.0),
    ("long_sort", "sort:40913882=", "", 0.0),
]


@pytest.mark.parametrize(("name", "prompt", "completion", "reward"), LONG_CASES)
def test_long_variants_reward_is_exact_match(
    name: str, prompt: str, completion: str, reward: float
) -> None:
    task = get_task(name)
    assert task.reward([prompt], [completion]) == [reward]
    assert task.is_correct(prompt, completion) == (reward == 1.0)


def test_long_variants_prompt_lengths() -> None:
    for name, op, longest in (("long_reverse", "rev", 12), ("long_sort", "sort", 16)):
        task = get_task(name)
        assert task.max_new_tokens == longest + 2 and task.answer_tokens == (8, longest)
        lengths = set()
        for prompt in task.prompts("train", 1000, 0):
            m = re.fullmatch(rf"{op}:(\d+)=", prompt)
            assert m, prompt
            lengths.add(len(m.group(1)))
        assert lengths == set(range(8, longest + 1))
        short = get_task(name, min_length=3, max_length=5)
        assert short.config() == {"name": name, "min_length": 3, "max_length": 5}
        assert short.max_new_tokens == 7 and short.answer_tokens == (3, 5)
        assert {len(p) - len(op) - 2 for p in short.prompts("eval", 300, 0)} == {3, 4, 5}


def test_long_sort_split_by_multiset() -> None:
    task = get_task("long_sort")
    for prompt in task.prompts("eval", 300, 0):
        digits = prompt[5:-1]
        assert task.split_of(f"sort:{digits[::-1]}=") == "eval"


def test_long_variants_bad_arguments() -> None:
    with pytest.raises(
        ValueError, match=re.escape("long_sort: max_length (4) must be >= min_length (8)")
    ):
        get_task("long_sort", max_length=4)
    with pytest.raises(ValueError, match="long_reverse: min_length must be an integer >= 1"):
        get_task("long_reverse", min_length=0)
