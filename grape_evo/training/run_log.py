"""Run outputs (**contract**): ``OUT/metrics.jsonl`` (one record per step) and ``OUT/summary.json``.

Each metrics line is written and flushed as soon as the step ends, so a run killed midway
leaves a valid file up to its last step. The summary is written atomically (temp file, rename).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, TextIO


def _clean(value: Any) -> Any:
    """JSON-safe: non-finite floats become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


class MetricsLog:
    """Append-only JSON-lines writer; one call to :meth:`write` per training step."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO = path.open("w")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(_clean(record)) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_clean(data), indent=2) + "\n")
    os.replace(tmp, path)


def parse_metrics(text: str) -> tuple[list[dict[str, Any]], int]:
    """The records of a metrics file's text, and how many lines are corrupt.

    A torn last line (a run killed while writing it) is dropped without being counted; any
    other line that is not a JSON object is skipped and counted.
    """
    lines = text.splitlines()
    records: list[dict[str, Any]] = []
    corrupt = 0
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            corrupt += i < len(lines) - 1
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            corrupt += 1
    return records, corrupt


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every readable record of a metrics file (see :func:`parse_metrics`)."""
    return parse_metrics(Path(path).read_text())[0]
