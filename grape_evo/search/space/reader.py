"""Typed reading of a search-space document's fields, with errors that point at the key.

Every check raises :class:`~grape_evo.search.space.errors.SpaceError` with the message
``<source>: <key>: <reason>``, the source being the file path or ``<string>``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from grape_evo.search.space.errors import SpaceError
from grape_evo.search.space.values import is_number

__all__ = ["LIMITS", "Reader", "type_name"]

LIMITS: dict[str, int] = {
    "budget.steps": 10**6,
    "budget.seeds": 1000,
    "budget.eval_every": 10**6,
    "budget.batch_size": 2**16,
    "budget.warm_start_steps": 10**6,
    "budget.eval_prompts": 10**6,
    "budget.reeval_seeds": 1000,
    "budget.top_k": 1000,
    "search.trials": 10**6,
    "search.population_size": 10**5,
}
"""Upper bounds of a space's sizes, by key: a typo such as ``steps: 1e12`` must be an error at
load time, not a campaign that trains for a year."""


def type_name(value: Any) -> str:
    """How a value's type is named in errors (``a string``, ``a mapping``, ``null``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


class Reader:
    """Reads the fields of one document; errors start with its ``source``."""

    def __init__(self, source: str) -> None:
        self.source = source

    def folder(self) -> Path:
        """Where relative paths in the document point from: the folder of the source file, or
        the working directory for a document that is not a file."""
        source = Path(self.source)
        return source.parent if source.is_file() else Path.cwd()

    def error(self, key: str, message: str) -> SpaceError:
        return SpaceError(f"{self.source}: {key}: {message}")

    def mapping(self, key: str, value: Any) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.error(key, f"must be a mapping, got {type_name(value)} ({value!r})")
        for k in value:
            if not isinstance(k, str):
                raise self.error(key, f"keys must be strings, got {k!r}")
        return value

    def keys(self, key: str, value: Mapping[str, Any], valid: Sequence[str]) -> None:
        unknown = [k for k in value if k not in valid]
        if unknown:
            raise self.error(key, f"unknown key(s) {unknown}; valid keys: {list(valid)}")

    def string(self, key: str, value: Any) -> str:
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, got {type_name(value)} ({value!r})")
        return value

    def boolean(self, key: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {type_name(value)} ({value!r})")
        return value

    def number(self, key: str, value: Any) -> float | int:
        if not is_number(value):
            hint = ""
            if isinstance(value, str):
                with contextlib.suppress(ValueError):
                    float(value)
                    hint = " (quoted? write the number without quotes)"
            raise self.error(key, f"must be a number, got {type_name(value)} ({value!r}){hint}")
        if not math.isfinite(value):
            raise self.error(key, f"must be a finite number, got {value!r}")
        return value

    def integer(
        self, key: str, value: Any, minimum: int | None = None, limit_key: str | None = None
    ) -> int:
        """An integer >= ``minimum`` and <= ``LIMITS[limit_key or key]`` (when that has a
        limit; ``limit_key`` names the limit of a field that also appears under other keys)."""
        if not is_number(value) or not isinstance(value, int):
            raise self.error(key, f"must be an integer, got {type_name(value)} ({value!r})")
        if minimum is not None and value < minimum:
            raise self.error(key, f"must be an integer >= {minimum}, got {value!r}")
        limit = LIMITS.get(limit_key or key)
        if limit is not None and value > limit:
            raise self.error(key, f"{value} is above the limit of {limit}")
        return value

    def listing(self, key: str, value: Any) -> list[Any]:
        if not isinstance(value, list | tuple):
            raise self.error(key, f"must be a list, got {type_name(value)} ({value!r})")
        return list(value)
