"""A task of a search space: a registered name plus constructor keyword arguments, or a task
file (its task name, absolute path and content fingerprint)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from grape_evo.search.space.errors import format_value
from grape_evo.tasks import build_task

if TYPE_CHECKING:
    from grape_evo.tasks import Task
    from grape_evo.training import TrainConfig

__all__ = ["TaskRef"]

_SLUG_UNSAFE = re.compile(r"[^A-Za-z0-9._]+")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_]+")
_PLAIN_KEY = re.compile(r"[A-Za-z_]+")
_SLUG_READABLE = 64  # characters of the readable part kept in a hashed slug


@dataclass(frozen=True)
class TaskRef:
    """A task by registered name plus constructor keyword arguments (sorted pairs); a task file
    is the file's task name with the pairs ``file`` (absolute path) and ``fingerprint`` (of
    its data, reward code and settings), so a process that rebuilds it from an edited file
    fails instead of training on other data. ``warm_start_steps`` (None: the budget's) is this
    task's SFT warm-start budget: tasks differ in how many steps leave headroom."""

    name: str
    kwargs: tuple[tuple[str, Any], ...] = ()
    warm_start_steps: int | None = None

    @classmethod
    def of_file(cls, task: Task) -> TaskRef:
        """The reference of a task loaded from a task file (``task.config()``)."""
        config = task.config()
        return cls(
            config["name"], (("file", config["file"]), ("fingerprint", config["fingerprint"]))
        )

    @property
    def is_file(self) -> bool:
        return "file" in dict(self.kwargs)

    def train_config(self, config: TrainConfig) -> TrainConfig:
        """``config`` with this task's warm-start budget, when it has one."""
        if self.warm_start_steps is None:
            return config
        return replace(config, warm_start_steps=self.warm_start_steps)

    def build(self) -> Task:
        """A fresh task instance (``build_task({"name": name, **kwargs})``)."""
        return build_task({"name": self.name, **dict(self.kwargs)})

    @property
    def _identity(self) -> str:
        if not self.kwargs:
            return self.name
        return f"{self.name}(" + ", ".join(f"{k}={v!r}" for k, v in self.kwargs) + ")"

    @property
    def label(self) -> str:
        """``addition``, ``addition(digits=3)``, or a task file's task name: unique per
        distinct task in a space."""
        return self.name if self.is_file else self._identity

    @property
    def slug(self) -> str:
        """A folder name for this task, made of ``[A-Za-z0-9._-]`` only.

        ``addition``, or ``addition-digits3`` (``-<key><value>`` per argument) when the name is
        letters, digits and ``_``, every key letters and ``_`` and every value an integer >= 0:
        such a slug reads back unambiguously. Otherwise the readable part (other characters
        replaced by ``_``, at most 64 of them) is followed by ``.`` and 8 hex digits of the
        SHA-256 of the whole reference, e.g. ``addition-modefast.<hash>``: only these slugs hold
        a ``.``, so two distinct tasks never share a slug short of a hash collision. A task
        file's slug is its task name and the hash (of its path and fingerprint), so edited data
        gets new run folders."""
        kwargs = () if self.is_file else self.kwargs
        parts = [self.name] + [f"{k}{format_value(v)}" for k, v in kwargs]
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
            and not self.is_file
        )
        if plain:
            return readable
        digest = hashlib.sha256(self._identity.encode()).hexdigest()[:8]
        return f"{readable[:_SLUG_READABLE]}.{digest}"

    def to_dict(self) -> str | dict[str, Any]:
        settings = (
            {} if self.warm_start_steps is None else {"warm_start_steps": self.warm_start_steps}
        )
        if not self.kwargs and not settings:
            return self.name
        return {"name": self.name, **dict(self.kwargs), **settings}
