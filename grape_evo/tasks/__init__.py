"""Tasks: self-generated data, train/eval splits, rubric rewards, demonstrations, preferences.

Registered tasks: ``addition``, ``reverse``, ``sort``, ``preference`` (dense rubric rewards) and
``long_addition``, ``multiplication``, ``long_reverse``, ``long_sort``, ``countdown``, ``proxy``
(0/1 rewards, longer answers). Build one with ``get_task(name, **kwargs)``; ``describe_tasks()``
lists them with their reward type and answer length. A task from your own data and reward is a
YAML task file, loaded with ``load_task_file(path)``; ``build_task(ref)`` accepts either (or a
task's ``config()``).
"""

from grape_evo.tasks.addition import AdditionTask
from grape_evo.tasks.arithmetic import ArithmeticTask, LongAdditionTask, MultiplicationTask
from grape_evo.tasks.base import (
    SPLITS,
    Criterion,
    EvalResult,
    PreferencePair,
    Rubric,
    Task,
    exact_rubric,
    sigmoid,
)
from grape_evo.tasks.countdown import CountdownTask, ExpressionError, parse_expression
from grape_evo.tasks.data_rows import TaskFileError
from grape_evo.tasks.data_task import DataTask, RowPrompt, load_task_file
from grape_evo.tasks.preference import PreferenceTask
from grape_evo.tasks.proxy import ProxyTask
from grape_evo.tasks.registry import (
    TASKS,
    TaskInfo,
    build_task,
    describe_tasks,
    get_task,
    is_task_file_ref,
    register_task,
    task_names,
)
from grape_evo.tasks.sequence import (
    LongReverseTask,
    LongSortTask,
    ReverseTask,
    SequenceTask,
    SortTask,
)

__all__ = [
    "SPLITS",
    "TASKS",
    "AdditionTask",
    "ArithmeticTask",
    "CountdownTask",
    "Criterion",
    "DataTask",
    "EvalResult",
    "ExpressionError",
    "LongAdditionTask",
    "LongReverseTask",
    "LongSortTask",
    "MultiplicationTask",
    "PreferencePair",
    "PreferenceTask",
    "ProxyTask",
    "ReverseTask",
    "RowPrompt",
    "Rubric",
    "SequenceTask",
    "SortTask",
    "Task",
    "TaskFileError",
    "TaskInfo",
    "build_task",
    "describe_tasks",
    "exact_rubric",
    "get_task",
    "is_task_file_ref",
    "load_task_file",
    "parse_expression",
    "register_task",
    "sigmoid",
    "task_names",
]
