"""Rubric, registry and helpers of grape_evo.tasks."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import pytest

from grape_evo.tasks import (
    TASKS,
    AdditionTask,
    Criterion,
    EvalResult,
    Rubric,
    Task,
    TaskInfo,
    describe_tasks,
    get_task,
    register_task,
    sigmoid,
    task_names,
)


def const(value: float):
    return lambda prompt, completion: value


def test_rubric_weighted_mean_by_hand() -> None:
    rubric = Rubric((Criterion("a", 1.0, const(1.0)), Criterion("b", 3.0, const(0.0))))
    assert rubric.score("p", "c") == pytest.approx(0.25)
    rubric = Rubric((Criterion("a", 2.0, const(0.5)), Criterion("b", 0.5, const(1.0))))
    assert rubric.score("p", "c") == pytest.approx((2.0 * 0.5 + 0.5 * 1.0) / 2.5)
    assert rubric.names == ("a", "b")
    assert rubric.total_weight == pytest.approx(2.5)


def test_rubric_clamps_out_of_range_and_nan() -> None:
    rubric = Rubric((Criterion("hi", 1.0, const(2.0)), Criterion("nan", 1.0, const(math.nan))))
    assert rubric.score("p", "c") == pytest.approx(0.5)
    rubric = Rubric((Criterion("neg", 1.0, const(-3.0)),))
    assert rubric.score("p", "c") == 0.0


def test_rubric_breakdown() -> None:
    rubric = Rubric(
        (
            Criterion("len", 1.0, lambda p, c: min(1.0, len(c) / 4)),
            Criterion("same", 1.0, lambda p, c: float(p == c)),
        )
    )
    out = rubric.breakdown(["ab", "x"], ["ab", "xyzw"])
    assert out == {"len": [0.5, 1.0], "same": [1.0, 0.0]}
    with pytest.raises(ValueError, match="must match"):
        rubric.breakdown(["a"], [])


@pytest.mark.parametrize("weight", [0.0, -1.0, math.nan, math.inf])
def test_rubric_rejects_bad_weights(weight: float) -> None:
    with pytest.raises(ValueError, match="weight"):
        Rubric((Criterion("a", weight, const(1.0)),))


def test_rubric_rejects_duplicates_and_empty() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        Rubric((Criterion("a", 1.0, const(1.0)), Criterion("a", 2.0, const(0.0))))
    with pytest.raises(ValueError, match="at least one"):
        Rubric(())


def test_sigmoid_values() -> None:
    assert sigmoid(0.0) == 0.5
    assert sigmoid(2.0) == pytest.approx(1 / (1 + math.exp(-2.0)))
    assert sigmoid(-2.0) == pytest.approx(1 / (1 + math.exp(2.0)))
    assert sigmoid(-1000.0) == 0.0
    assert sigmoid(1000.0) == 1.0


def test_registry_names_and_build() -> None:
    assert {"addition", "reverse", "sort", "preference"} <= set(task_names())
    assert task_names() == sorted(task_names())
    task = get_task("addition", digits=3)
    assert isinstance(task, AdditionTask)
    assert task.digits == 3
    assert task.config() == {"name": "addition", "digits": 3}
    for name in task_names():
        built = get_task(name)
        assert isinstance(built, Task)
        assert built.name == name
        assert get_task(**built.config()).config() == built.config()


def test_registry_unknown_lists_valid_names() -> None:
    with pytest.raises(ValueError) as info:
        get_task("nope")
    msg = str(info.value)
    assert "unknown task 'nope'" in msg
    for name in ("addition", "reverse", "sort", "preference"):
        assert f"'{name}'" in msg


def test_register_task_rejects_duplicates_and_registers_factories() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_task("addition")(lambda: AdditionTask())
    try:
        register_task("addition_1digit")(lambda: AdditionTask(digits=1))
        assert "addition_1digit" in task_names()
        assert get_task("addition_1digit").digits == 1
    finally:
        TASKS.pop("addition_1digit", None)


def test_bad_split_names_valid_splits() -> None:
    task = get_task("addition")
    for call in (
        lambda: task.prompts("test", 3, 0),
        lambda: task.demonstrations("valid", 3, 0),
        lambda: task.preference_pairs("dev", 3, 0),
    ):
        with pytest.raises(ValueError) as info:
            call()
        assert "'train'" in str(info.value) and "'eval'" in str(info.value)


def test_reward_length_mismatch_raises() -> None:
    task = get_task("reverse")
    with pytest.raises(ValueError, match="must match"):
        task.reward(["rev:1234="], ["4321", "1"])


def test_eval_result_fields() -> None:
    res = EvalResult(reward=0.5, accuracy=0.25, n=4)
    assert (res.reward, res.accuracy, res.n) == (0.5, 0.25, 4)


def test_preference_probability_matches_bt() -> None:
    task = get_task("addition")
    # "82" scores 1.0, "83" scores 0.4 on "37+45=" (worked out in test_tasks_addition.py).
    p = task.preference_probability("37+45=", "82", "83")
    assert p == pytest.approx(1 / (1 + math.exp(-10.0 * 0.6)))
    assert task.preference_probability("37+45=", "83", "82") == pytest.approx(1 - p)
    assert task.preference_probability("37+45=", "83", "83") == 0.5
    rng = random.Random(0)
    draws = [task.preference("37+45=", "82", "83", rng) for _ in range(500)]
    assert all(isinstance(d, bool) for d in draws)


class _Echo(Task):
    """A toy task: the answer is the prompt; the training reward pays for length 3 only."""

    name = "echo"
    max_new_tokens = 4
    answer_tokens = (1, 3)
    rubric = Rubric((Criterion("len3", 1.0, lambda p, c: float(len(c) == 3)),))

    def sample_prompt(self, rng: random.Random) -> str:
        return rng.choice(["abc", "de", "fgh"])

    def gold(self, prompt: str) -> str:
        return prompt


class _HiddenEcho(_Echo):
    def gold_reward(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        return [float(self.is_correct(p, c)) for p, c in zip(prompts, completions, strict=True)]


def test_evaluate_reports_gold_reward() -> None:
    # Every completion is "xyz": training reward 1 (length 3), never correct.
    def generate(prompts: list[str]) -> list[str]:
        return ["xyz"] * len(prompts)

    plain, hidden = _Echo(), _HiddenEcho()
    assert plain.gold_reward(["abc", "de"], ["xyz", "de"]) == [1.0, 0.0]  # = reward by default
    assert plain.evaluate(generate, n=8).reward == 1.0
    assert hidden.reward(["abc"], ["xyz"]) == [1.0]
    result = hidden.evaluate(generate, n=8)
    assert (result.reward, result.accuracy) == (0.0, 0.0)


def test_task_metadata_defaults() -> None:
    assert (Task.reward_kind, Task.summary, Task.warm_start_steps) == ("rubric", "", 600)


def test_describe_tasks_lists_every_task_with_its_defaults() -> None:
    infos = describe_tasks()
    assert [i.name for i in infos] == task_names()
    by_name = {i.name: i for i in infos}
    # Worked out in each task's test module: (min, max) gold length and generation budget.
    expected = {
        "addition": ((1, 3), 4),
        "reverse": ((4, 4), 6),
        "preference": ((8, 8), 12),
        "long_addition": ((5, 6), 8),
        "multiplication": ((3, 4), 6),
        "long_reverse": ((8, 12), 14),
        "long_sort": ((8, 16), 18),
        "countdown": ((7, 11), 15),
        "proxy": ((8, 16), 18),
    }
    for name, (answer_tokens, budget) in expected.items():
        assert (by_name[name].answer_tokens, by_name[name].max_new_tokens) == (
            answer_tokens,
            budget,
        )
    assert by_name["long_addition"].reward_kind == "0/1 exact"
    assert "proxy" in by_name["proxy"].reward_kind and "hidden" in by_name["proxy"].reward_kind
    assert "dense" in by_name["addition"].reward_kind
    assert all(isinstance(i, TaskInfo) and i.summary for i in infos)
