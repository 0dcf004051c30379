"""Registry of tasks by name: `register_task`, `get_task`, `task_names`, `describe_tasks`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from grape_evo.tasks.base import Task

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
