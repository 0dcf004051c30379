"""Writing small task files (data, reward, YAML) for the task-file tests."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import yaml

EXACT_REWARD = """
def score(prompts, completions, target, **kwargs):
    return [1.0 if c == t else 0.0 for c, t in zip(completions, target)]
"""
"""1.0 when the completion equals the row's ``target`` column, else 0.0."""


def rows(n: int = 20) -> list[dict[str, Any]]:
    """``n`` rows ``{"q": "q{i}=", "a": "a{i}", "target": "a{i}"}``."""
    return [{"q": f"q{i}=", "a": f"a{i}", "target": f"a{i}"} for i in range(n)]


def write_rows(path: Path, data: list[dict[str, Any]]) -> Path:
    """Write ``data`` as JSON lines (``.jsonl``) or with a header row (``.csv``)."""
    if path.suffix == ".csv":
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(data[0]))
            writer.writeheader()
            writer.writerows(data)
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in data))
    return path


def write_task(
    folder: Path,
    table: list[dict[str, Any]] | None = None,
    *,
    reward_source: str = EXACT_REWARD,
    data_name: str = "rows.jsonl",
    **settings: Any,
) -> Path:
    """Write ``table`` (default `rows`), ``reward.py`` and ``task.yaml`` in ``folder``; settings
    default to ``name: t, data, prompt: q, answer: a, reward: reward.py:score,
    max_new_tokens: 8, split: {eval_fraction: 0.25, seed: 0}``; a setting given as None is
    left out. Returns the task file's path."""
    folder.mkdir(parents=True, exist_ok=True)
    write_rows(folder / data_name, rows() if table is None else table)
    (folder / "reward.py").write_text(reward_source)
    config: dict[str, Any] = {
        "name": "t",
        "data": data_name,
        "prompt": "q",
        "answer": "a",
        "reward": "reward.py:score",
        "max_new_tokens": 8,
        "split": {"eval_fraction": 0.25, "seed": 0},
    }
    config.update(settings)
    config = {k: v for k, v in config.items() if v is not None}
    path = folder / "task.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
