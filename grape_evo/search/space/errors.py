"""The search-space error and how values are written in its messages."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["SpaceError", "format_point", "format_value"]


class SpaceError(ValueError):
    """A user-facing error in a search space; the message starts with the file and the key."""


def format_value(value: Any) -> str:
    """A value as it would be written in YAML flow style (``null``, ``true``, ``0.0001``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format(value, ".6g")
    return str(value)


def format_point(values: Mapping[str, Any]) -> str:
    """A point (axis path -> value) in YAML flow style: ``{kl.coef: 0.01, group_size: 4}``."""
    return "{" + ", ".join(f"{k}: {format_value(v)}" for k, v in values.items()) + "}"
