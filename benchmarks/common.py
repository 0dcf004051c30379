"""What every benchmark script shares: the machine description and the JSON output."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from grape_evo.search.space import SearchSpace


def cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo (Linux), else None."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine(device: torch.device) -> dict[str, Any]:
    """Processor, cores, torch threads, GPU name and versions, for the result JSON."""
    return {
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not on every platform
        return None


def emit(result: dict[str, Any], out: Path | None) -> None:
    """Print the result as JSON and, with ``out``, write it there too."""
    text = json.dumps(result, indent=2)
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


def with_policy(space: SearchSpace, preset: str | None) -> SearchSpace:
    """``space`` with its policy's preset replaced by ``preset`` (unchanged for None)."""
    if preset is None:
        return space
    return replace(space, policy=replace(space.policy, preset=preset))
