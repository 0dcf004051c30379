"""Experiment configs: a YAML file with a ``quick:`` section of overrides for smoke runs.

Errors name the file, the field and the reason (``ExperimentConfigError``), never a bare
traceback.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from grape_evo.objective import presets
from grape_evo.tasks import task_names
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


def tasks_field(config: Mapping[str, Any], path: Path) -> dict[str, dict[str, Any]]:
    """``tasks: {name: {train overrides}}``, with known task names and train keys."""
    tasks = field(config, "tasks", dict, path)
    for name, overrides in tasks.items():
        if name not in task_names():
            raise ExperimentConfigError(
                f"{path}: tasks.{name}: unknown task; valid tasks: {task_names()}"
            )
        if not isinstance(overrides or {}, dict):
            raise ExperimentConfigError(f"{path}: tasks.{name} must be a mapping of train settings")
        tasks[name] = dict(overrides or {})
    return tasks


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
