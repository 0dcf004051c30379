"""Registry of tasks by name: ``register_task``, ``get_task``, ``task_names``."""

from __future__ import annotations

from collections.abc import Callable
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
