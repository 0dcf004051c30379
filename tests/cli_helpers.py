"""Running the ``grape`` command in tests: its output, and a tiny training budget."""

from __future__ import annotations

import contextlib
from typing import Any, NamedTuple

TINY_TRAIN = ("--warm-start-steps", "5", "--batch-size", "8", "--device", "cpu")
"""`grape train` options for a run of a few seconds (with ``--steps 2``)."""


class CliRun(NamedTuple):
    """A `grape` command's exit code and its stdout + stderr."""

    exit_code: int
    text: str


def cli_text(result: Any) -> str:
    """stdout and, where the runner keeps it apart, stderr of a CliRunner result."""
    text = result.output
    with contextlib.suppress(ValueError, AttributeError):
        text += result.stderr
    return text
