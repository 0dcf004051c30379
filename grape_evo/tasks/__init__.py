"""Tasks: self-generated data, train/eval splits, rubric rewards, demonstrations, preferences.

Registered tasks: ``addition``, ``reverse``, ``sort``, ``preference``. Build one with
``get_task(name, **kwargs)``.
"""

from grape_evo.tasks.addition import AdditionTask
from grape_evo.tasks.base import (
    SPLITS,
    Criterion,
    EvalResult,
    PreferencePair,
    Rubric,
    Task,
    sigmoid,
)
from grape_evo.tasks.preference import PreferenceTask
from grape_evo.tasks.registry import TASKS, get_task, register_task, task_names
from grape_evo.tasks.sequence import ReverseTask, SequenceTask, SortTask

__all__ = [
    "SPLITS",
    "TASKS",
    "AdditionTask",
    "Criterion",
    "EvalResult",
    "PreferencePair",
    "PreferenceTask",
    "ReverseTask",
    "Rubric",
    "SequenceTask",
    "SortTask",
    "Task",
    "get_task",
    "register_task",
    "sigmoid",
    "task_names",
]
