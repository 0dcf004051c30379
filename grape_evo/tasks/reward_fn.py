"""User reward functions of task files: loading them and calling them with TRL's signature.

A task file names its reward as ``"file.py:function"`` (a path relative to the task file) or
``"package.module:function"`` (an importable module). Loading it EXECUTES the user's code, as
TRL does with the reward functions handed to it: only use task files you trust. A file is run
as a fresh module on every load (so edits are picked up); a module is imported once per
process, as Python always does.

The function is called like TRL's ``GRPOTrainer`` calls reward functions, by keyword::

    fn(prompts=[...], completions=[...], **columns) -> list[float]

``prompts`` and ``completions`` are lists of strings of one length; every data column is a list
aligned with them (None where a row lacks the field), passed by its name, except ``prompt``,
``completion`` and ``completion_ids`` (the names TRL reserves), so a reward written for TRL
works unchanged (TRL's ``completion_ids`` and ``trainer_state`` are not passed: end the
signature with ``**kwargs``).

Every failure is a :class:`TaskFileError` naming the task file, the reward and the data rows:
the function raising, returning something other than a list of one number per completion, or
returning a non-finite number.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import numbers
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grape_evo.tasks.data_rows import TaskFileError, first_line

RESERVED_COLUMNS: tuple[str, ...] = ("prompt", "completion", "completion_ids")
"""Data columns never passed to the reward (TRL passes none of them either)."""
ARGUMENTS: tuple[str, ...] = ("prompts", "completions")
"""The reward's own keyword arguments: a data column may not have these names."""
_SPEC = re.compile(r"^(?P<target>.+):(?P<function>[A-Za-z_]\w*)$")
_MAX_RANGES = 6


def describe_rows(rows: Sequence[int]) -> str:
    """``"row 3"``, ``"rows 3-10"`` or ``"rows 1, 4-6, 9"`` (the first few ranges, then ``...``)."""
    ordered = sorted(set(rows))
    if len(ordered) == 1:
        return f"row {ordered[0]}"
    ranges: list[str] = []
    start = prev = ordered[0]
    for row in [*ordered[1:], None]:
        if row is not None and row == prev + 1:
            prev = row
            continue
        ranges.append(str(start) if start == prev else f"{start}-{prev}")
        if row is not None:
            start = prev = row
    shown = ", ".join(ranges[:_MAX_RANGES])
    more = f", ... ({len(ordered)} rows)" if len(ranges) > _MAX_RANGES else ""
    return f"rows {shown}{more}"


def _as_float(value: Any) -> float | None:
    """``value`` as a float when it is a real number (Python, numpy or 0-d tensor), else None."""
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, str | bytes) or not hasattr(type(value), "__float__"):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class RewardFunction:
    """A loaded user reward: ``fn``, its spec ``label`` as written in the task file, the sha256
    ``digest`` of its source file's bytes (of the spec when the module has no file) and the
    task file's label ``where`` (for error messages)."""

    fn: Callable[..., Any]
    label: str
    digest: str
    where: str

    def _error(self, reason: str) -> TaskFileError:
        return TaskFileError(f"{self.where}: reward {self.label} {reason}")

    def __call__(
        self,
        prompts: list[str],
        completions: list[str],
        columns: dict[str, list[Any]],
        rows: list[int],
    ) -> list[float]:
        """The rewards of ``completions`` [n] of the data rows ``rows`` [n] (whose ``prompts``
        and ``columns`` are given), each a finite float."""
        try:
            out = self.fn(prompts=prompts, completions=completions, **columns)
        except Exception as exc:
            raise self._error(
                f"raised {type(exc).__name__}: {first_line(exc)} on {describe_rows(rows)}"
            ) from exc
        n = len(completions)
        if isinstance(out, str | bytes | Mapping) or not hasattr(out, "__len__"):
            raise self._error(f"returned {type(out).__name__}, expected a list of {n} numbers")
        if len(out) != n:
            raise self._error(
                f"returned {len(out)} rewards for {n} completions (on {describe_rows(rows)})"
            )
        values: list[float] = []
        for row, value in zip(rows, out, strict=True):
            number = _as_float(value)
            if number is None:
                raise self._error(
                    f"returned {value!r} ({type(value).__name__}) for row {row}, expected a number"
                )
            if not math.isfinite(number):
                raise self._error(f"returned {number} for row {row}; rewards must be finite")
            values.append(number)
        return values


def _module_from_file(path: Path, label: str, where: str) -> Any:
    if not path.is_file():
        raise TaskFileError(f"{where}: reward: no such file: {path}")
    name = "_grape_reward_" + hashlib.sha256(str(path).encode("utf-8")).hexdigest()[:16]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise TaskFileError(f"{where}: reward: cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise TaskFileError(
            f"{where}: reward: running {label} raised {type(exc).__name__}: {first_line(exc)}"
        ) from exc
    return module


def _import_module(name: str, base: Path, where: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            file = Path(*name.split(".")).with_suffix(".py")
            hint = (
                f"; for the file, write {file.as_posix()}:FUNCTION"
                if (base / file).is_file()
                else ""
            )
            raise TaskFileError(
                f"{where}: reward: no module named {name!r} (it must be importable: "
                f"installed, or on PYTHONPATH){hint}"
            ) from exc
        raise TaskFileError(
            f"{where}: reward: importing {name} raised ModuleNotFoundError: {first_line(exc)}"
        ) from exc
    except Exception as exc:
        raise TaskFileError(
            f"{where}: reward: importing {name} raised {type(exc).__name__}: {first_line(exc)}"
        ) from exc


def load_reward(spec: str, base: Path, where: str) -> RewardFunction:
    """Load the reward ``spec`` (``"file.py:function"`` relative to the folder ``base``, or
    ``"package.module:function"``), running the user's code; ``where`` is the task file's label.
    """
    match = _SPEC.match(spec.strip())
    target = match.group("target") if match else ""
    is_file = target.endswith(".py")
    if match is None or not (is_file or all(p.isidentifier() for p in target.split("."))):
        raise TaskFileError(
            f"{where}: reward: expected 'file.py:function' or 'package.module:function', "
            f"got {spec!r}"
        )
    function = match.group("function")
    if is_file:
        path = (base / Path(target).expanduser()).resolve()
        module = _module_from_file(path, target, where)
        source: Path | None = path
    else:
        module = _import_module(target, base, where)
        origin = getattr(module, "__file__", None)
        source = Path(origin) if origin and Path(origin).is_file() else None
    fn = getattr(module, function, None)
    if fn is None:
        raise TaskFileError(f"{where}: reward: {target} has no function {function!r}")
    if not callable(fn):
        raise TaskFileError(
            f"{where}: reward: {target}:{function} is a {type(fn).__name__}, not a function"
        )
    blob = source.read_bytes() if source is not None else spec.encode("utf-8")
    return RewardFunction(fn, f"{target}:{function}", hashlib.sha256(blob).hexdigest(), where)
