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


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every complete record of a metrics file (a torn last line is ignored)."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records
