"""Experiment configs: a YAML file with a ``quick:`` section of overrides for smoke runs.

Errors name the file, the field and the reason (``ExperimentConfigError``), never a bare
traceback.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any

import yaml

from grape_evo.objective import presets
from grape_evo.tasks import build_task, task_names
from grape_evo.training import TrainConfig


class ExperimentConfigError(ValueError):
    """A bad experiment config: the message names the file and the field."""


def load_config(path: Path, quick: bool = False) -> dict[str, Any]:
    """The YAML mapping at ``path``; with ``quick``, its ``quick:`` mapping merged on top.

    The merge is per top-level key (a key in ``quick`` replaces the whole value). The result
    has no ``quick`` key.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ExperimentConfigError(f"{path}: cannot read: {err.strerror}") from err
    except yaml.YAMLError as err:
        raise ExperimentConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ExperimentConfigError(f"{path}: expected a mapping at the top level")
    overrides = data.pop("quick", None) or {}
    if not isinstance(overrides, dict):
        raise ExperimentConfigError(f"{path}: field 'quick' must be a mapping")
    if quick:
        data.update(overrides)
    return data


def field(config: Mapping[str, Any], name: str, kind: type, path: Path) -> Any:
    """``config[name]``, checked to be a ``kind``."""
    if name not in config:
        raise ExperimentConfigError(f"{path}: missing field '{name}'")
    value = config[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ExperimentConfigError(
            f"{path}: field '{name}' must be a {kind.__name__}, got {value!r}"
        )
    return value


@dataclass(frozen=True)
class TaskEntry:
    """One task of an experiment: its label in tables and folders, what it builds, and its
    train overrides.

    ``ref`` is ``()`` for a registered task under its own name, else the sorted items of a
    ``task: {name: REGISTERED, **arguments}`` mapping: a variant such as 3-digit
    ``long_addition`` under a label of its own.
    """

    label: str
    ref: tuple[tuple[str, Any], ...] = ()
    overrides: Mapping[str, Any] = dataclass_field(default_factory=dict)

    @property
    def identity(self) -> tuple[tuple[str, Any], ...]:
        """What this entry builds, as the sorted items of ``{name: ..., **arguments}`` (a
        registered task under its own name: ``(("name", label),)``)."""
        return self.ref or (("name", self.label),)

    def train(self, base: Mapping[str, Any], path: Path, **settings: Any) -> TrainConfig:
        """The TrainConfig of ``base`` with this task's overrides, then ``settings`` (which
        win over both)."""
        return train_config(base, path, f"tasks.{self.label}", **{**self.overrides, **settings})


def tasks_field(
    config: Mapping[str, Any], path: Path, key: str = "tasks", where: str = ""
) -> dict[str, TaskEntry]:
    """``<key>: {label: {train overrides}}``: a label is a registered task name, or any name
    whose mapping has ``task: {name: REGISTERED, **arguments}`` (a task variant). Errors name
    ``<where><key>.<label>`` (``where``: the enclosing mapping's path, e.g.
    ``"larger_policy."``)."""
    tasks = field(config, key, dict, path)
    key = where + key
    entries = {}
    for label, raw in tasks.items():
        if not isinstance(raw or {}, dict):
            raise ExperimentConfigError(
                f"{path}: {key}.{label} must be a mapping of train settings"
            )
        overrides = dict(raw or {})
        variant = overrides.pop("task", None)
        if variant is None:
            if label not in task_names():
                raise ExperimentConfigError(
                    f"{path}: {key}.{label}: unknown task; valid tasks: {task_names()} (or give "
                    f"'task: {{name: REGISTERED, ...arguments}}' for a variant)"
                )
            entries[label] = TaskEntry(label, (), overrides)
            continue
        if not isinstance(variant, dict) or "name" not in variant:
            raise ExperimentConfigError(
                f"{path}: {key}.{label}.task must be a mapping with a registered 'name' and the "
                f"task's arguments, got {variant!r}"
            )
        try:
            build_task(variant)
        except (TypeError, ValueError) as err:
            raise ExperimentConfigError(f"{path}: {key}.{label}.task: {err}") from None
        entries[label] = TaskEntry(label, tuple(sorted(variant.items())), overrides)
    return entries


def preset_list(value: Any, where: str, path: Path) -> list[str]:
    """A list of preset names (``all`` = every preset), each checked."""
    names = presets.names() if value == "all" else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ExperimentConfigError(f"{path}: {where} must be 'all' or a list of preset names")
    unknown = [n for n in names if n not in presets.names()]
    if unknown:
        raise ExperimentConfigError(
            f"{path}: {where}: unknown presets {unknown}; valid: {presets.names()}"
        )
    return names


def seeds_field(config: Mapping[str, Any], name: str, path: Path) -> list[int]:
    seeds = field(config, name, list, path)
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ExperimentConfigError(f"{path}: {name} must be a non-empty list of integers")
    return seeds


def train_config(base: Mapping[str, Any], path: Path, where: str, **overrides: Any) -> TrainConfig:
    """A TrainConfig from ``base`` updated with ``overrides``; errors name ``where``."""
    try:
        return TrainConfig.from_dict({**base, **overrides})
    except (TypeError, ValueError) as err:
        raise ExperimentConfigError(f"{path}: {where}: {err}") from err


def parse_args(description: str, default_out: str) -> argparse.Namespace:
    """The command line every experiment script shares."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a smoke run with a tiny budget")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"run folders (default {default_out}, or {default_out}-quick with --quick)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="where the README tables and figures go (default: the experiment folder; "
        "with --quick: OUT/results)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (processes)")
    parser.add_argument(
        "--population",
        type=int,
        default=8,
        help="runs of the same task, seed and budget trained together in one lockstep batch",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args()
    if args.out is None:
        args.out = Path(default_out + ("-quick" if args.quick else ""))
    if args.jobs < 1 or args.population < 1:
        parser.error("--jobs and --population must be >= 1")
    return args
