"""Experiment configs: the tasks field, with registered tasks and labelled task variants."""

from __future__ import annotations

from pathlib import Path

import pytest

from grape_evo.experiment.config import ExperimentConfigError, TaskEntry, tasks_field

PATH = Path("config.yaml")


def test_registered_tasks_and_variants_with_their_train_overrides() -> None:
    config = {
        "tasks": {
            "long_sort": {"warm_start_steps": 300},
            "addition3": {
                "task": {"name": "long_addition", "min_digits": 3, "max_digits": 3},
                "warm_start_steps": 600,
            },
        }
    }
    entries = tasks_field(config, PATH)
    assert entries["long_sort"] == TaskEntry("long_sort", (), {"warm_start_steps": 300})
    variant = entries["addition3"]
    assert variant.ref == (("max_digits", 3), ("min_digits", 3), ("name", "long_addition"))
    train = variant.train({"steps": 7, "warm_start_steps": 10}, PATH, seed=4)
    assert (train.steps, train.warm_start_steps, train.seed) == (7, 600, 4)


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        ({"addition3": {"warm_start_steps": 600}}, "tasks.addition3: unknown task"),
        ({"a3": {"task": "long_addition"}}, "tasks.a3.task must be a mapping with a registered"),
        ({"a3": {"task": {"min_digits": 3}}}, "tasks.a3.task must be a mapping with a registered"),
        ({"a3": {"task": {"name": "nope"}}}, "tasks.a3.task: unknown task 'nope'"),
        ({"a3": {"task": {"name": "long_addition", "digits": 3}}}, "tasks.a3.task: "),
        ({"long_sort": [300]}, "tasks.long_sort must be a mapping of train settings"),
    ],
)
def test_bad_tasks_name_the_field(tasks: dict, message: str) -> None:
    with pytest.raises(ExperimentConfigError, match="config.yaml: " + message.replace(".", r"\.")):
        tasks_field({"tasks": tasks}, PATH)


def test_a_bad_train_override_names_the_task() -> None:
    entry = tasks_field({"tasks": {"long_sort": {"warm_start_steps": -1}}}, PATH)["long_sort"]
    with pytest.raises(ExperimentConfigError, match=r"tasks\.long_sort: .*warm_start_steps"):
        entry.train({}, PATH)
