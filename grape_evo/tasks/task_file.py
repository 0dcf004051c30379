"""Task files: the YAML settings of a task built from a data file and a reward function.

A task file is a mapping with these keys (paths are relative to the task file's folder)::

    name: my_task               # required: letters, digits, '_', '.', '-'
    data: rows.jsonl            # required: a .jsonl or .csv file, or a datasets.save_to_disk dir
    prompt: question            # required: the field holding each row's prompt
    answer: solution            # optional: the field holding the gold completion (SFT warm start)
    reward: reward.py:score     # required: "file.py:function" or "package.module:function"
    max_new_tokens: 32          # required: completion budget in tokens, >= 1
    chat_template: false        # optional (default false): wrap prompts in the chat template
    correct_threshold: 1.0      # optional (default 1.0): a completion is correct when reward >= it
    split: {eval_fraction: 0.1, seed: 0}   # optional (this default), or the name of a field
                                           # whose value is "train" or "eval" in every row

:func:`read_task_file` validates the keys and their types (not the data or the reward: see
`data_rows` and `reward_fn`) and raises :class:`TaskFileError` with one line naming the file,
the key and the reason.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from grape_evo.tasks.data_rows import TaskFileError

REQUIRED_KEYS: tuple[str, ...] = ("name", "data", "prompt", "reward", "max_new_tokens")
OPTIONAL_KEYS: tuple[str, ...] = ("answer", "chat_template", "correct_threshold", "split")
SPLIT_KEYS: tuple[str, ...] = ("eval_fraction", "seed")
DEFAULT_EVAL_FRACTION = 0.1
DEFAULT_CORRECT_THRESHOLD = 1.0
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class SplitSettings:
    """How rows are split: by ``field`` (its value, ``"train"`` or ``"eval"``) when set, else
    ``eval_fraction`` of the rows go to ``eval``, chosen by ``seed`` and the rows' content."""

    eval_fraction: float = DEFAULT_EVAL_FRACTION
    seed: int = 0
    field: str | None = None


@dataclass(frozen=True)
class TaskFileSettings:
    """The validated settings of one task file.

    ``path`` and ``data`` are absolute; ``label`` is the task file's path as given (it starts
    every error message).
    """

    path: Path
    label: str
    name: str
    data: Path
    prompt: str
    answer: str | None
    reward: str
    max_new_tokens: int
    chat_template: bool
    correct_threshold: float
    split: SplitSettings
    written: dict[str, Any]
    """Every setting with defaults filled in, paths as written in the file (hashed by the
    task's fingerprint, so moving the folder keeps it)."""


def _fail(label: str, key: str, reason: str) -> TaskFileError:
    return TaskFileError(f"{label}: {key}: {reason}")


def _text(label: str, raw: dict[str, Any], key: str) -> str:
    value = raw[key]
    if not isinstance(value, str) or not value.strip():
        raise _fail(label, key, f"must be a non-empty string, got {value!r}")
    return value


def _split(label: str, value: Any) -> SplitSettings:
    if isinstance(value, str) and value.strip():
        return SplitSettings(field=value)
    if not isinstance(value, dict):
        reason = f"must be a mapping {{eval_fraction, seed}} or a field name, got {value!r}"
        raise _fail(label, "split", reason)
    unknown = sorted(set(value) - set(SPLIT_KEYS), key=str)
    if unknown:
        raise _fail(
            label, "split", f"unknown key {unknown[0]!r}; valid keys: {', '.join(SPLIT_KEYS)}"
        )
    fraction = value.get("eval_fraction", DEFAULT_EVAL_FRACTION)
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, int | float)
        or not 0.0 < fraction < 1.0
    ):
        raise _fail(label, "split.eval_fraction", f"must be a number in (0, 1), got {fraction!r}")
    seed = value.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise _fail(label, "split.seed", f"must be an integer, got {seed!r}")
    return SplitSettings(eval_fraction=float(fraction), seed=seed)


def _parse_yaml(path: Path, label: str) -> dict[str, Any]:
    if not path.is_file():
        raise TaskFileError(f"{label}: no such task file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise TaskFileError(f"{label}: not UTF-8 text ({exc.reason})") from exc
    except OSError as exc:
        raise TaskFileError(f"{label}: cannot read the task file: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise TaskFileError(f"{label}: invalid YAML{where}: {problem}") from exc
    if not isinstance(raw, dict):
        got = "an empty file" if raw is None else type(raw).__name__
        raise TaskFileError(f"{label}: expected a mapping of settings, got {got}")
    return raw


def read_task_file(path: str | Path) -> TaskFileSettings:
    """Parse and validate the task file at ``path`` (see the module docstring)."""
    label = str(path)
    file = Path(path).expanduser().resolve()
    raw = _parse_yaml(file, label)
    valid = REQUIRED_KEYS + OPTIONAL_KEYS
    unknown = [k for k in raw if k not in valid]
    if unknown:
        raise TaskFileError(
            f"{label}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(valid))}"
        )
    for key in REQUIRED_KEYS:
        if key not in raw:
            raise TaskFileError(f"{label}: missing required key {key!r}")
    name = _text(label, raw, "name")
    if not _NAME.fullmatch(name):
        raise _fail(label, "name", f"must be letters, digits, '_', '.' or '-', got {name!r}")
    data = _text(label, raw, "data")
    prompt = _text(label, raw, "prompt")
    reward = _text(label, raw, "reward")
    answer = _text(label, raw, "answer") if raw.get("answer") is not None else None
    budget = raw["max_new_tokens"]
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise _fail(label, "max_new_tokens", f"must be an integer >= 1, got {budget!r}")
    chat = raw.get("chat_template", False)
    if not isinstance(chat, bool):
        raise _fail(label, "chat_template", f"must be true or false, got {chat!r}")
    threshold = raw.get("correct_threshold", DEFAULT_CORRECT_THRESHOLD)
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, int | float)
        or not math.isfinite(threshold)
    ):
        raise _fail(label, "correct_threshold", f"must be a finite number, got {threshold!r}")
    split = _split(label, raw.get("split", {}))
    written = {
        "name": name,
        "data": data,
        "prompt": prompt,
        "answer": answer,
        "reward": reward,
        "max_new_tokens": budget,
        "chat_template": chat,
        "correct_threshold": float(threshold),
        "split": split.field
        if split.field is not None
        else {"eval_fraction": split.eval_fraction, "seed": split.seed},
    }
    return TaskFileSettings(
        path=file,
        label=label,
        name=name,
        data=(file.parent / Path(data).expanduser()).resolve(),
        prompt=prompt,
        answer=answer,
        reward=reward,
        max_new_tokens=budget,
        chat_template=chat,
        correct_threshold=float(threshold),
        split=split,
        written=written,
    )
