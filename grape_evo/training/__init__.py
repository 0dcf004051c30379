"""Training: the SFT warm start (cached reference), the trainer loop, run outputs and the
population mode (several objectives trained in lockstep)."""

from grape_evo.training.config import TrainConfig
from grape_evo.training.population import PopulationTrainer, PopulationUnsupported
from grape_evo.training.run import train, train_population
from grape_evo.training.run_log import read_metrics
from grape_evo.training.trainer import Diverged, EvalReport, Trainer
from grape_evo.training.warm_start import cache_root, warm_start_policy

__all__ = [
    "Diverged",
    "EvalReport",
    "PopulationTrainer",
    "PopulationUnsupported",
    "TrainConfig",
    "Trainer",
    "cache_root",
    "read_metrics",
    "train",
    "train_population",
    "warm_start_policy",
]
