"""Properties every registered task must have."""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grape_evo.policy.tokenizer import ALPHABET
from grape_evo.tasks import SPLITS, Task, get_task, task_names

SPARSE_TASKS = [
    "long_addition",
    "multiplication",
    "long_reverse",
    "long_sort",
    "countdown",
    "proxy",
]
ALL_TASKS = ["addition", "reverse", "sort", "preference", *SPARSE_TASKS]

# Score of the gold completion, worked out by hand in each task's test module.
GOLD_REWARD = {"addition": 1.0, "reverse": 1.0, "sort": 1.0, "preference": 0.953125}
GOLD_REWARD.update(dict.fromkeys(SPARSE_TASKS, 1.0))
TINY_POSITIONS = 128  # n_positions of the tiny policy preset


@pytest.fixture(params=ALL_TASKS)
def task(request: pytest.FixtureRequest) -> Task:
    return get_task(request.param)


def test_all_tasks_registered() -> None:
    assert set(ALL_TASKS) <= set(task_names())


def test_prompts_deterministic(task: Task) -> None:
    for split in SPLITS:
        a = task.prompts(split, 50, seed=7)
        assert a == task.prompts(split, 50, seed=7)
        assert a == get_task(task.name).prompts(split, 50, seed=7)
        assert a[:20] == task.prompts(split, 20, seed=7)
        assert a != task.prompts(split, 50, seed=8)
        assert len(a) == 50
    assert task.prompts("train", 0, 0) == []


def test_prompts_deterministic_across_processes(task: Task) -> None:
    code = (
        "from grape_evo.tasks import get_task;"
        f"print(get_task({task.name!r}).prompts('eval', 10, 3))"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == repr(task.prompts("eval", 10, 3))


def test_train_eval_disjoint(task: Task) -> None:
    train: set[str] = set()
    evals: set[str] = set()
    for seed in (0, 1):
        train |= set(task.prompts("train", 2000, seed))
        evals |= set(task.prompts("eval", 2000, seed))
    assert not train & evals
    # Equivalent problems (same split key) never straddle the splits either.
    assert not {task.split_key(p) for p in train} & {task.split_key(p) for p in evals}
    assert all(task.split_of(p) == "train" for p in train)
    assert all(task.split_of(p) == "eval" for p in evals)
    # Both splits are substantial.
    assert len(train) >= 50 and len(evals) >= 50


def test_gold_is_correct_and_scores(task: Task) -> None:
    prompts = task.prompts("train", 100, 0) + task.prompts("eval", 100, 0)
    golds = [task.gold(p) for p in prompts]
    assert all(task.is_correct(p, g) for p, g in zip(prompts, golds, strict=True))
    assert task.reward(prompts, golds) == pytest.approx([GOLD_REWARD[task.name]] * len(prompts))
    # Trailing whitespace is ignored, leading whitespace is not.
    assert task.reward(prompts[:5], [g + " \n\t" for g in golds[:5]]) == pytest.approx(
        [GOLD_REWARD[task.name]] * 5
    )
    assert all(task.is_correct(p, g + "\n") for p, g in zip(prompts, golds, strict=True))
    assert max(task.reward(prompts[:5], [" " + g for g in golds[:5]])) < GOLD_REWARD[task.name]


def test_gold_fits_token_budget_and_alphabet(task: Task) -> None:
    for prompt in task.prompts("train", 300, 1):
        gold = task.gold(prompt)
        assert 1 <= len(gold) <= task.max_new_tokens - 1  # room for an end-of-sequence token
        assert set(prompt) <= set(task.alphabet)
        assert set(gold) <= set(task.alphabet)


def test_fits_the_tokenizer_and_the_tiny_policy(task: Task) -> None:
    # Every character a task emits is in the character tokenizer's alphabet (none maps to
    # <unk>), and <bos> + prompt + max_new_tokens fits the tiny policy's 128 positions.
    assert set(task.alphabet) <= set(ALPHABET)
    assert set(task.completion_alphabet) <= set(ALPHABET)
    low, high = task.answer_tokens
    for prompt in task.prompts("train", 500, 3) + task.prompts("eval", 500, 3):
        assert 1 + len(prompt) + task.max_new_tokens <= TINY_POSITIONS
        assert low <= len(task.gold(prompt)) <= high


def test_listing_metadata(task: Task) -> None:
    assert task.reward_kind and task.summary
    assert task.warm_start_steps >= 1
    low, high = task.answer_tokens
    assert 1 <= low <= high <= task.max_new_tokens - 1


@pytest.mark.parametrize("name", SPARSE_TASKS)
def test_sparse_rewards_are_zero_or_one(name: str) -> None:
    # 0/1 rewards, on gold answers and on their random corruptions alike.
    task = get_task(name)
    rng = random.Random(0)
    prompts = task.prompts("train", 200, 0)
    completions = [task.sample_completion(p, rng) for p in prompts]
    rewards = task.reward(prompts, completions)
    assert set(rewards) == {0.0, 1.0}
    assert set(task.gold_reward(prompts, completions)) == {0.0, 1.0}


def test_demonstrations(task: Task) -> None:
    demos = task.demonstrations("train", 20, 5)
    assert [p for p, _ in demos] == task.prompts("train", 20, 5)
    assert all(g == task.gold(p) for p, g in demos)


def test_empty_completion_scores_zero(task: Task) -> None:
    prompts = task.prompts("eval", 20, 0)
    assert task.reward(prompts, [""] * 20) == [0.0] * 20
    assert not any(task.is_correct(p, "") for p in prompts)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(completion=st.text(max_size=40), index=st.integers(0, 9))
def test_reward_never_raises_on_arbitrary_text(completion: str, index: int) -> None:
    for name in ALL_TASKS:
        task = get_task(name)
        prompt = task.prompts("train", 10, 0)[index]
        (r,) = task.reward([prompt], [completion])
        assert 0.0 <= r <= 1.0 and not math.isnan(r)
        (g,) = task.gold_reward([prompt], [completion])
        assert 0.0 <= g <= 1.0 and not math.isnan(g)
        assert isinstance(task.is_correct(prompt, completion), bool)
        assert 0.0 <= task.hidden_score(prompt, completion) <= 1.0
        parts = task.breakdown([prompt], [completion])
        assert all(0.0 <= v[0] <= 1.0 for v in parts.values())


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_reward_in_range_on_task_alphabet(data: st.DataObject) -> None:
    for name in ALL_TASKS:
        task = get_task(name)
        completion = data.draw(st.text(alphabet=task.alphabet + " \n", max_size=16))
        prompt = task.prompts("eval", 1, data.draw(st.integers(0, 1000)))[0]
        (r,) = task.reward([prompt], [completion])
        assert 0.0 <= r <= 1.0


def test_reward_on_huge_and_odd_completions(task: Task) -> None:
    prompt = task.prompts("train", 1, 0)[0]
    gold = task.gold(prompt)
    odd = ["9" * 200_000, gold * 50_000, "\x00" * 1000, "é²³½", "\n\n", "!" * 10_000, gold + "x"]
    rewards = task.reward([prompt] * len(odd), odd)
    assert all(0.0 <= r <= 1.0 for r in rewards)
    # A wall of 9s earns at most format credit (addition: 0.5 / 2.5 = 0.2); repeating the
    # gold answer is always worse than the gold answer.
    assert rewards[0] <= 0.2 + 1e-9
    assert rewards[1] < GOLD_REWARD[task.name] - 0.2


def test_evaluate_gold_and_empty(task: Task) -> None:
    calls: list[list[str]] = []

    def gold_generate(prompts: list[str]) -> list[str]:
        calls.append(list(prompts))
        return [task.gold(p) for p in prompts]

    res = task.evaluate(gold_generate, n=32)
    assert len(calls) == 1
    assert calls[0] == task.eval_set(32)
    assert res.accuracy == 1.0 and res.n == 32
    assert res.reward == pytest.approx(GOLD_REWARD[task.name])

    res = task.evaluate(lambda ps: [""] * len(ps), n=16)
    assert (res.reward, res.accuracy, res.n) == (0.0, 0.0, 16)

    # Half right: accuracy 0.5.
    res = task.evaluate(lambda ps: [task.gold(p) if i % 2 else "" for i, p in enumerate(ps)], n=8)
    assert res.accuracy == 0.5

    with pytest.raises(ValueError, match="generate returned"):
        task.evaluate(lambda ps: ps[:-1], n=4)


def test_eval_set_is_fixed_distinct_and_held_out(task: Task) -> None:
    """Every run of a task scores the same prompts: distinct, all held out, the first n of any
    larger set (the order depends on the task alone)."""
    larger = task.eval_set(64)
    assert len(larger) == len(set(larger)) == 64
    assert all(task.split_of(p) == "eval" for p in larger)
    assert task.eval_set(16) == larger[:16]
    assert get_task(task.name).eval_set(64) == larger  # a fresh instance, another process alike


def test_preference_pairs(task: Task) -> None:
    pairs = task.preference_pairs("train", 300, 2)
    assert pairs == task.preference_pairs("train", 300, 2)
    assert [p.prompt for p in pairs] == task.prompts("train", 300, 2)
    assert all(task.split_of(p.prompt) == "train" for p in pairs)
    distinct = [p for p in pairs if p.chosen.rstrip() != p.rejected.rstrip()]
    assert len(distinct) >= 0.9 * len(pairs)
    # Labels follow the hidden score: the chosen completion is usually the better one.
    better = [
        task.hidden_score(p.prompt, p.chosen) > task.hidden_score(p.prompt, p.rejected)
        for p in distinct
        if task.hidden_score(p.prompt, p.chosen) != task.hidden_score(p.prompt, p.rejected)
    ]
    assert sum(better) / len(better) > 0.7
    prompt, chosen, rejected = pairs[0]  # plain tuples too
    assert (prompt, chosen, rejected) == (pairs[0].prompt, pairs[0].chosen, pairs[0].rejected)


def test_bt_win_rate_matches_sigmoid() -> None:
    # Hand-computed rewards (see the per-task modules):
    # addition "37+45=": "82" -> 1.0, "28" -> 0.2;  reverse "rev:4913=": "3194" -> 1.0,
    # "31" -> 0.3;  preference "topic:bak=": "bakabak!" -> 0.953125, "bak!" -> 0.71875.
    cases = [
        ("addition", "37+45=", "82", "28", 1.0, 0.2),
        ("reverse", "rev:4913=", "3149", "31", 0.4, 0.3),
        ("preference", "topic:bak=", "bakabak!", "bak!", 0.953125, 0.71875),
        ("preference", "topic:bak=", "bak!", "hello", 0.71875, 0.53125),
    ]
    for name, prompt, a, b, ra, rb in cases:
        task = get_task(name)
        expected = 1.0 / (1.0 + math.exp(-10.0 * (ra - rb)))
        rng = random.Random(123)
        wins = sum(task.preference(prompt, a, b, rng) for _ in range(2000))
        assert abs(wins / 2000 - expected) < 0.03, (name, a, b, wins / 2000, expected)
        rng = random.Random(321)
        losses = sum(task.preference(prompt, b, a, rng) for _ in range(2000))
        assert abs(losses / 2000 - (1 - expected)) < 0.03
