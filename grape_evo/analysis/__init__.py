"""Analysis: backend-free tables over campaigns and the figures and report drawn from them.

``frames`` (study / run folders -> pandas), ``figures`` (frames -> matplotlib Figures on Agg),
``pareto``, ``diff`` (nearest-baseline difference), ``stats`` (t-intervals, paired and
Bonferroni-corrected) and ``report`` (``write_report(RUN_DIR)``). Importing this package loads
only ``stats``; the others are imported on first use, so light callers (the campaign) stay
light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from grape_evo.analysis.stats import paired_interval, t_interval

if TYPE_CHECKING:
    from pathlib import Path


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """Write ``RUN_DIR/report/report.md`` (figures, trials.csv); returns the report's path."""
    from grape_evo.analysis.report import write_report as _write

    return _write(run_dir, out)


def __getattr__(name: str) -> Any:
    import importlib

    if name in ("frames", "figures", "pareto", "diff", "report", "stats"):
        return importlib.import_module(f"grape_evo.analysis.{name}")
    raise AttributeError(f"module 'grape_evo.analysis' has no attribute '{name}'")


__all__ = ["paired_interval", "t_interval", "write_report"]
