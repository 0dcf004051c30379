"""A task of a search space: a registered name plus constructor keyword arguments, or the
absolute path of a task file (`grape_evo.tasks.task_file`)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

from grape_evo.search.space.errors import format_value
from grape_evo.tasks import get_task, is_task_file_ref, load_task_file

if TYPE_CHECKING:
    from grape_evo.tasks import Task

__all__ = ["TaskRef"]

_SLUG_UNSAFE = re.compile(r"[^A-Za-z0-9._]+")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_]+")
_PLAIN_KEY = re.compile(r"[A-Za-z_]+")
_SLUG_READABLE = 64  # characters of the readable part kept in a hashed slug


@dataclass(frozen=True)
class TaskRef:
    """A task by registered name plus constructor keyword arguments (sorted pairs), or by the
    absolute path of a task file (``name``; no arguments)."""

    name: str
    kwargs: tuple[tuple[str, Any], ...] = ()

    @property
    def is_file(self) -> bool:
        return is_task_file_ref(self.name)

    def build(self) -> Task:
        """A fresh task instance (the task file's, or ``get_task(name, **kwargs)``)."""
        if self.is_file:
            return load_task_file(self.name)
        return get_task(self.name, **dict(self.kwargs))

    @property
    def label(self) -> str:
        """``addition`` or ``addition(digits=3)``: unique per distinct task in a space."""
        if not self.kwargs:
            return self.name
        return f"{self.name}(" + ", ".join(f"{k}={v!r}" for k, v in self.kwargs) + ")"

    @property
    def slug(self) -> str:
        """A folder name for this task, made of ``[A-Za-z0-9._-]`` only.

        ``addition``, or ``addition-digits3`` (``-<key><value>`` per argument) when the name is
        letters, digits and ``_``, every key letters and ``_`` and every value an integer >= 0:
        such a slug reads back unambiguously. Otherwise the readable part (other characters
        replaced by ``_``, at most 64 of them) is followed by ``.`` and 8 hex digits of the
        SHA-256 of :attr:`label`, e.g. ``addition-modefast.<hash>``: only these slugs hold a
        ``.``, so two distinct tasks never share a slug short of a hash collision. A task file's
        readable part is its file name without the suffix (``my_task.<hash>``).
        """
        name = PurePath(self.name).stem if self.is_file else self.name
        parts = [name] + [f"{k}{format_value(v)}" for k, v in self.kwargs]
        readable = "-".join(_SLUG_UNSAFE.sub("_", part) for part in parts)
        plain = (
            _PLAIN_NAME.fullmatch(self.name) is not None
            and all(
                _PLAIN_KEY.fullmatch(k)
                and isinstance(v, int)
                and not isinstance(v, bool)
                and v >= 0
                for k, v in self.kwargs
            )
            and len(readable) <= _SLUG_READABLE
        )
        if plain:
            return readable
        digest = hashlib.sha256(self.label.encode()).hexdigest()[:8]
        return f"{readable[:_SLUG_READABLE]}.{digest}"

    def to_dict(self) -> str | dict[str, Any]:
        return self.name if not self.kwargs else {"name": self.name, **dict(self.kwargs)}
