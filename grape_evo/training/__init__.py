"""Training: the SFT warm start (cached reference), the engine that trains M >= 1 members in
lockstep (a single run is M = 1), and typed run records."""

from grape_evo.training.config import TrainConfig
from grape_evo.training.engine import Engine, Member
from grape_evo.training.records import (
    EvalReport,
    RunStatus,
    RunSummary,
    StepRecord,
    read_metrics,
)
from grape_evo.training.run import StepHook, train, train_members
from grape_evo.training.warm_start import cache_root, warm_start_policy

__all__ = [
    "Engine",
    "EvalReport",
    "Member",
    "RunStatus",
    "RunSummary",
    "StepHook",
    "StepRecord",
    "TrainConfig",
    "cache_root",
    "read_metrics",
    "train",
    "train_members",
    "warm_start_policy",
]
