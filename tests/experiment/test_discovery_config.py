"""The discovery experiment's config: its targets, and the errors of a bad one."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from grape_evo.experiment.config import ExperimentConfigError

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "experiments" / "discovery" / "run.py"


def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("discovery_run", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def write(tmp_path: Path, **changes: object) -> Path:
    config = yaml.safe_load((SCRIPT.parent / "config.yaml").read_text())
    config["space"] = str(ROOT / "search_spaces" / "discovery.yaml")
    config.update(changes)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_targets_are_the_spaces_tasks_the_held_out_ones_and_the_larger_policy(
    tmp_path: Path,
) -> None:
    _, space, targets = script().read_config(write(tmp_path), quick=False)
    kinds = [(t.kind, t.label, t.policy.preset) for t in targets]
    assert kinds == [
        ("meta-train", "addition_3digit", "tiny"),
        ("meta-train", "countdown_3", "tiny"),
        ("meta-train", "multiplication_3x1", "tiny"),
        ("held-out", "long_sort", "tiny"),
        ("held-out", "proxy", "tiny"),
        ("larger policy", "long_addition_3digit_small", "small"),
    ]
    # each meta-train task keeps the warm start it has in the space
    steps = [t.entry.overrides["warm_start_steps"] for t in targets[:3]]
    assert steps == [ref.warm_start_steps for ref in space.tasks]
    assert dict(targets[1].entry.ref) == {"name": "countdown", "n_numbers": 3}
    small = targets[-1].entry.train({}, Path("c"), seed=2000)
    assert (small.warm_start_steps, small.warm_start_lr, small.seed) == (800, 1e-3, 2000)


def test_a_held_out_task_that_the_search_trains_on_is_an_error(tmp_path: Path) -> None:
    variant = {"name": "long_addition", "min_digits": 3, "max_digits": 3}  # in the space
    path = write(tmp_path, held_out={"sums": {"task": variant, "warm_start_steps": 600}})
    with pytest.raises(ExperimentConfigError, match=r"held_out\.sums is a meta-train task"):
        script().read_config(path, quick=False)


def test_an_unknown_reference_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, references=["grpo", "ppo2"])
    with pytest.raises(ExperimentConfigError, match="references: unknown presets"):
        script().read_config(path, quick=False)


def test_meta_train_tasks_without_a_label_keep_their_folder_name(tmp_path: Path) -> None:
    labels = {
        "addition_3digit": {"task": {"name": "long_addition", "min_digits": 3, "max_digits": 3}}
    }
    _, _, targets = script().read_config(write(tmp_path, meta_train_labels=labels), quick=False)
    assert [t.label for t in targets[:3]] == [
        "addition_3digit",
        "countdown-n_numbers3",
        "multiplication-max_digits3-min_digits3-right_digits1",
    ]


@pytest.mark.parametrize(
    "label",
    [
        {"task": {"name": "long_addition", "min_digits": 4, "max_digits": 4}},  # not searched
        {"task": {"name": "countdown", "n_numbers": 3}, "warm_start_steps": 10},  # the space's
    ],
)
def test_a_meta_train_label_must_name_a_task_of_the_space_and_nothing_else(
    tmp_path: Path, label: dict
) -> None:
    path = write(tmp_path, meta_train_labels={"sums": label})
    with pytest.raises(ExperimentConfigError, match=r"meta_train_labels\.sums must be"):
        script().read_config(path, quick=False)


def test_an_error_in_a_larger_policy_task_names_its_field(tmp_path: Path) -> None:
    larger = {"policy": "small", "seeds": [1], "tasks": {"sums": {"task": {"name": "nope"}}}}
    with pytest.raises(ExperimentConfigError, match=r"larger_policy\.tasks\.sums\.task"):
        script().read_config(write(tmp_path, larger_policy=larger), quick=False)


def test_a_held_out_registered_task_under_its_own_name_that_the_search_trains_on_is_an_error(
    tmp_path: Path,
) -> None:
    # quick's space trains on the registered `addition` (no arguments)
    config = yaml.safe_load((SCRIPT.parent / "config.yaml").read_text())
    config["quick"]["held_out"] = {"addition": {"warm_start_steps": 5}}
    config["space"] = str(ROOT / "search_spaces" / "discovery.yaml")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ExperimentConfigError, match=r"held_out\.addition is a meta-train task"):
        script().read_config(path, quick=True)
