"""Preference task: topics, hidden score features and Bradley-Terry draws."""

from __future__ import annotations

import math
import random
import re

import pytest

from grape_evo.tasks import PreferenceTask, get_task

# Weights: length 1.0, topic 1.0, exclaim 0.5, no_repeat 0.5, vowels 1.0 -> total 4.0.
CASES = [
    # completion on "topic:bak=", length, topic, exclaim, no_repeat, vowels
    # "bakabak!": len 8; 7/8 chars in {b,a,k}; ends "!"; vowels 3/8 -> 1 - 0.025/0.4
    ("bakabak!", 1.0, 7 / 8, 1, 1, 1 - 0.025 / 0.4),
    ("", 0.0, 0.0, 0, 0, 0.0),
    # "hello": len 5 -> 1 - 3/8; no topic letters; "ll" is only a double; vowels 2/5 = 0.4
    ("hello", 1 - 3 / 8, 0.0, 0, 1, 1.0),
    # "aaaa": len 4 -> 0.5; all topic letters; triple repeat; vowels 1.0 -> clipped to 0
    ("aaaa", 0.5, 1.0, 0, 0, 0.0),
    # "bak!": len 4 -> 0.5; 3/4 topic; "!"; vowels 1/4 -> 1 - 0.15/0.4
    ("bak!", 0.5, 3 / 4, 1, 1, 1 - 0.15 / 0.4),
    # 16 chars -> length 0; 15/16 topic letters; 7 vowels of 16 -> 1 - (7/16 - 0.4)/0.4
    ("bakabakabakabak!", 0.0, 15 / 16, 1, 1, 1 - (7 / 16 - 0.4) / 0.4),
]


def hidden(length: float, topic: float, exclaim: float, no_repeat: float, vowels: float) -> float:
    return (length + topic + 0.5 * exclaim + 0.5 * no_repeat + vowels) / 4.0


@pytest.mark.parametrize(("completion", "length", "topic", "exclaim", "no_repeat", "vowels"), CASES)
def test_hidden_score_by_hand(
    completion: str, length: float, topic: float, exclaim: int, no_repeat: int, vowels: float
) -> None:
    task = PreferenceTask()
    want = hidden(length, topic, exclaim, no_repeat, vowels)
    assert task.hidden_score("topic:bak=", completion) == pytest.approx(want)
    assert task.reward(["topic:bak="], [completion]) == [pytest.approx(want)]
    parts = task.breakdown(["topic:bak="], [completion])
    assert parts["length"] == [pytest.approx(length)]
    assert parts["topic"] == [pytest.approx(topic)]
    assert parts["exclaim"] == [exclaim]
    assert parts["no_repeat"] == [no_repeat]
    assert parts["vowels"] == [pytest.approx(vowels)]
    assert task.is_correct("topic:bak=", completion) == (want >= 0.8)


def test_headline_values() -> None:
    task = PreferenceTask()
    scores = task.reward(["topic:bak="] * 3, ["bakabak!", "bak!", "hello"])
    assert scores == pytest.approx([3.8125 / 4, 2.875 / 4, 2.125 / 4])


def test_topics_generated_and_golds_score_high() -> None:
    task = PreferenceTask()
    assert task.max_new_tokens == 12
    assert task.bt_scale == 10.0
    assert len(task.topics) == 200 == len(set(task.topics))
    assert task.topics == PreferenceTask().topics
    assert task.topics != PreferenceTask(topic_seed=1).topics
    for topic in task.topics:
        assert re.fullmatch(r"[bcdfghjklmnpqrstvwxz][aeiou][bcdfghjklmnpqrstvwxz]", topic)
        prompt = f"topic:{topic}="
        gold = task.gold(prompt)
        assert len(gold) == 8 and gold.endswith("!")
        assert task.hidden_score(prompt, gold) >= 0.9
        assert task.is_correct(prompt, gold)
    assert task.gold("topic:bak=") == "bakabak!"


def test_topics_split_between_train_and_eval() -> None:
    task = PreferenceTask()
    train = {p for p in task.prompts("train", 2000, 0)}
    evals = {p for p in task.prompts("eval", 2000, 0)}
    assert not train & evals
    # With 2000 draws each split covers all of its topics, and together they cover the list.
    assert {p[6:-1] for p in train | evals} == set(task.topics)
    assert 60 <= len(evals) <= 140


def test_bt_win_rate_exact_formula() -> None:
    task = get_task("preference")
    ra, rb = 3.8125 / 4, 2.125 / 4  # "bakabak!" vs "hello"
    p = 1 / (1 + math.exp(-10 * (ra - rb)))
    assert task.preference_probability("topic:bak=", "bakabak!", "hello") == pytest.approx(p)
    rng = random.Random(0)
    rate = sum(task.preference("topic:bak=", "bakabak!", "hello", rng) for _ in range(2000)) / 2000
    assert abs(rate - p) < 0.03


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="n_topics"):
        PreferenceTask(n_topics=0)
    with pytest.raises(ValueError, match="preference prompt"):
        PreferenceTask().gold("topic:BAK=")
