"""Registry of tasks by name (``register_task``, ``get_task``, ``task_names``,
``describe_tasks``) and the one entry point for any task reference, ``build_task``: a registered
name, a ``config()`` mapping, or a task file's path."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from grape_evo.tasks.base import Task
from grape_evo.tasks.data_task import load_task_file

TASK_FILE_SUFFIXES: tuple[str, ...] = (".yaml", ".yml")

TaskFactory = Callable[..., Task]
F = TypeVar("F", bound=TaskFactory)

TASKS: dict[str, TaskFactory] = {}
"""Registered task factories (classes or functions returning a Task), by name."""


def register_task(name: str) -> Callable[[F], F]:
    """Decorator registering a Task class (or factory) under ``name``; names must be unique."""

    def decorator(factory: F) -> F:
        if name in TASKS and TASKS[name] is not factory:
            raise ValueError(f"task '{name}' is already registered")
        TASKS[name] = factory
        return factory

    return decorator


def task_names() -> list[str]:
    """Sorted names of the registered tasks."""
    return sorted(TASKS)


def get_task(name: str, **kwargs: Any) -> Task:
    """Build the task registered as ``name`` with constructor ``kwargs``."""
    if name not in TASKS:
        raise ValueError(f"unknown task '{name}'; valid tasks: {task_names()}")
    return TASKS[name](**kwargs)


@dataclass(frozen=True)
class TaskInfo:
    """One line of the task listing (``grape tasks``), read from a task built with defaults."""

    name: str
    reward_kind: str
    answer_tokens: tuple[int, int]
    max_new_tokens: int
    warm_start_steps: int
    summary: str


def describe_tasks() -> list[TaskInfo]:
    """Every registered task, by name, with its default constructor arguments."""
    infos = []
    for name in task_names():
        task = get_task(name)
        infos.append(
            TaskInfo(
                name=name,
                reward_kind=task.reward_kind,
                answer_tokens=task.answer_tokens,
                max_new_tokens=task.max_new_tokens,
                warm_start_steps=task.warm_start_steps,
                summary=task.summary,
            )
        )
    return infos


def is_task_file_ref(ref: str | os.PathLike[str]) -> bool:
    """Whether ``ref`` names a task file (a path ending in ``.yaml`` or ``.yml``), not a
    registered task."""
    return os.fspath(ref).lower().endswith(TASK_FILE_SUFFIXES)


def build_task(ref: str | os.PathLike[str] | Mapping[str, Any]) -> Task:
    """The task ``ref`` names: a registered name (``"addition"``), a path to a task file
    (``"tasks/my_task.yaml"``), or a mapping: ``{"name": NAME, **kwargs}`` for a registered
    task, or a task file's ``config()`` ``{"file": PATH, "name"?, "fingerprint"?}`` (the file
    must still have that name and fingerprint). So ``build_task(task.config())`` rebuilds any
    task, in any process."""
    if isinstance(ref, Mapping):
        params = dict(ref)
        if "file" in params:
            file = params.pop("file")
            name = params.pop("name", None)
            task = load_task_file(file, params.pop("fingerprint", None))
            if params:
                raise ValueError(f"task file {file}: unexpected settings {sorted(params)}")
            if name is not None and name != task.name:
                raise ValueError(f"task file {file}: names task {task.name!r}, not {name!r}")
            return task
        if "name" not in params:
            raise ValueError(
                f"a task mapping needs 'name' (a registered task) or 'file' (a task file), "
                f"got keys {sorted(params)}"
            )
        return get_task(params.pop("name"), **params)
    if isinstance(ref, str | os.PathLike):
        if is_task_file_ref(ref):
            return load_task_file(ref)
        return get_task(os.fspath(ref))
    raise TypeError(f"a task reference is a name, a path or a mapping, got {type(ref).__name__}")
