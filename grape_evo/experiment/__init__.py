"""Experiments: resumable grids of training runs, their tables and figures (experiments/)."""

from grape_evo.experiment.grid import Compute, RunPlan, RunResult, execute
from grape_evo.experiment.tables import cell_table, finals_frame, paired_effects

__all__ = [
    "Compute",
    "RunPlan",
    "RunResult",
    "cell_table",
    "execute",
    "finals_frame",
    "paired_effects",
]
