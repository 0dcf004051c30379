"""Shared fixtures for training tests: a session warm-start cache and tiny budgets."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from cli_helpers import CliRun, cli_text
from typer.testing import CliRunner

from grape_evo.cli import app
from grape_evo.training import TrainConfig

# Tiny models: one intra-op thread is fastest, and with two threads per process a loaded
# machine (or pytest -n 2) slows these tests down by an order of magnitude.
torch.set_num_threads(1)


def tiny_config(**changes: Any) -> TrainConfig:
    """A budget small enough for a whole run to take well under a second on CPU."""
    base: dict[str, Any] = {
        "steps": 2,
        "warm_start_steps": 5,
        "batch_size": 8,
        "eval_prompts": 8,
        "eval_every": 1,
        "offline_pairs": 16,
        "device": "cpu",
    }
    base.update(changes)
    return TrainConfig(**base)


def read_jsonl_strict(path: Path) -> list[dict[str, Any]]:
    """Every line of a JSON-lines file, failing the test on any line that does not parse."""
    text = path.read_text()
    assert text == "" or text.endswith("\n"), "metrics.jsonl ends with a torn line"
    records = []
    for i, line in enumerate(text.splitlines()):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:  # pragma: no cover - the failure message
            raise AssertionError(f"metrics.jsonl line {i + 1} is not JSON: {line!r}") from err
    return records


@pytest.fixture(scope="session")
def tiny() -> Any:
    """``tiny(**changes)``: a tiny TrainConfig (see :func:`tiny_config`)."""
    return tiny_config


@pytest.fixture
def runner(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """A CliRunner whose runs use the session's warm-start cache."""
    monkeypatch.setenv("GRAPE_CACHE", str(cache_dir))
    return CliRunner()


@pytest.fixture
def grape(runner: CliRunner) -> Callable[..., CliRun]:
    """``grape(*args)``: run the ``grape`` command in-process (session warm-start cache)."""

    def run(*args: str) -> CliRun:
        result = runner.invoke(app, list(args))
        return CliRun(result.exit_code, cli_text(result))

    return run


@pytest.fixture(scope="session")
def read_jsonl() -> Any:
    """``read_jsonl(path)``: strict JSON-lines reader (see :func:`read_jsonl_strict`)."""
    return read_jsonl_strict


@pytest.fixture(scope="session")
def warm_policy(cache_dir: Path) -> Any:
    """``warm_policy(task, value_head=False, **config)``: a policy from the cached warm start."""
    from grape_evo.policy import PolicyConfig
    from grape_evo.training import warm_start_policy

    def make(task: Any, value_head: bool = False, **changes: Any) -> Any:
        policy, _ = warm_start_policy(
            task,
            PolicyConfig(value_head=value_head),
            tiny_config(**changes),
            torch.device("cpu"),
            cache_dir,
        )
        return policy

    return make


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One warm-start cache for the whole session (warm starts are shared between tests)."""
    return tmp_path_factory.mktemp("grape-cache")
