"""TrainConfig: everything about a training run that is not the objective."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from grape_evo.policy.precision import PRECISIONS


@dataclass(frozen=True)
class TrainConfig:
    """Budget and optimisation settings of one run (the objective is a separate spec).

    ``batch_size`` counts sampled completions per step (prompts = batch_size // group_size), so
    objectives with different group sizes see the same number of samples; preference objectives
    use batch_size // 2 pairs and SFT batch_size demonstrations (how often and in how many
    parts a batch is used is the objective's: ``epochs``, ``minibatches``, ``staleness``).
    ``temper_logprobs``: the log-probs of the loss (new, old, reference) are those of the
    sampling distribution, softmax(logits / temperature), as TRL and verl compute them; False
    keeps them at temperature 1. Held-out evaluation scores the task's fixed set of
    ``eval_prompts`` held-out prompts: greedy accuracy, and the expected reward under sampling
    at ``temperature`` from ``eval_samples`` completions per prompt. ``warm_start_steps`` of SFT
    at ``warm_start_lr`` build the reference policy (cached on disk; 0: no SFT, the policy as
    built or loaded is the reference). A run is declared diverged when its loss is not
    finite or its mean per-sequence KL to the reference exceeds ``max_kl_to_ref`` nats.
    ``precision``: ``fp32``, or ``bf16`` mixed precision (bfloat16 autocast around every
    forward of the RL run and its evaluations, float32 weights and optimiser: see
    `grape_evo.policy.precision`); the cached warm start always trains in float32.
    """

    steps: int = 200
    seed: int = 0
    lr: float = 1e-4
    batch_size: int = 64
    temperature: float = 1.0
    temper_logprobs: bool = True
    max_grad_norm: float = 1.0
    eval_every: int = 25
    eval_prompts: int = 1024
    eval_samples: int = 4
    warm_start_steps: int = 600
    warm_start_lr: float = 3e-3
    offline_pairs: int = 1024
    max_kl_to_ref: float = 50.0
    device: str = "cpu"
    precision: str = "fp32"

    def __post_init__(self) -> None:
        positive_ints = ("steps", "batch_size", "eval_every", "eval_prompts", "eval_samples")
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"train.{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.warm_start_steps, int) or self.warm_start_steps < 0:
            raise ValueError(f"train.warm_start_steps must be >= 0, got {self.warm_start_steps!r}")
        for name in ("lr", "warm_start_lr", "temperature", "max_grad_norm", "max_kl_to_ref"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"train.{name} must be a finite number >= 0, got {value!r}")
        if self.temperature == 0:
            raise ValueError("train.temperature must be > 0 (evaluation is greedy already)")
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"train.precision must be one of {list(PRECISIONS)}, got {self.precision!r}"
            )
        if not isinstance(self.temper_logprobs, bool):
            raise ValueError(
                f"train.temper_logprobs must be true or false, got {self.temper_logprobs!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise ValueError(f"train: unknown keys {unknown}; valid keys: {sorted(valid)}")
        return cls(**data)
