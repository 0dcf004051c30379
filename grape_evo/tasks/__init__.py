"""Tasks: self-generated data, train/eval splits, rubric rewards, demonstrations, preferences.

Registered tasks: ``addition``, ``reverse``, ``sort``, ``preference``. Build one with
``get_task(name, **kwargs)``; a task from your own data and reward is a YAML task file, loaded
with ``load_task_file(path)``. ``build_task(ref)`` accepts either (or a task's ``config()``).
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
from grape_evo.tasks.data_rows import TaskFileError
from grape_evo.tasks.data_task import DataTask, RowPrompt, load_task_file
from grape_evo.tasks.preference import PreferenceTask
from grape_evo.tasks.registry import (
    TASKS,
    build_task,
    get_task,
    is_task_file_ref,
    register_task,
    task_names,
)
from grape_evo.tasks.sequence import ReverseTask, SequenceTask, SortTask

__all__ = [
    "SPLITS",
    "TASKS",
    "AdditionTask",
    "Criterion",
    "DataTask",
    "EvalResult",
    "PreferencePair",
    "PreferenceTask",
    "ReverseTask",
    "RowPrompt",
    "Rubric",
    "SequenceTask",
    "SortTask",
    "Task",
    "TaskFileError",
    "build_task",
    "get_task",
    "is_task_file_ref",
    "load_task_file",
    "register_task",
    "sigmoid",
    "task_names",
]
