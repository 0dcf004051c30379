"""What every exporter shares: training settings, the result of a mapping, and a collector.

A mapping is *exact* when the target's trainer takes the same gradient step as grape on the
same batch: same advantages, same per-token loss (surrogate, KL estimator and placement,
entropy), same normaliser, same number of updates per batch. Where the target computes a loss
whose *value* differs but whose gradient is the same in every update (a REINFORCE surrogate
against TRL's clipped ratio with one update per batch, where the ratio is exactly 1), the note
says so. Anything else is ``custom`` (a trainer subclass computes grape's loss) or
``unsupported`` (the target's training loop cannot run the objective at all).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from grape_evo.objective.registry import ObjectiveError
from grape_evo.objective.spec import ObjectiveSpec

EXACT, CUSTOM, UNSUPPORTED = "exact", "custom", "unsupported"
TARGETS = ("trl", "verl")
# Regime fields of DESIGN.md section 7 and the value at which they change nothing.
NEUTRAL_REGIME = {"minibatches": 1, "staleness": 0}


@dataclass(frozen=True)
class ExportSettings:
    """Training settings written into the exported config; ``None`` keeps the target's default.

    ``batch_size`` counts sampled completions per rollout batch (as grape's TrainConfig; pairs
    are ``batch_size // 2`` for preference data, demonstrations ``batch_size`` for SFT);
    ``group_size`` replaces the objective's; ``max_new_tokens`` is the generation budget.
    """

    lr: float | None = None
    batch_size: int | None = None
    group_size: int | None = None
    steps: int | None = None
    temperature: float | None = None
    max_new_tokens: int | None = None

    def __post_init__(self) -> None:
        for name in ("batch_size", "group_size", "steps", "max_new_tokens"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"export setting '{name}' must be an integer, got {value!r}")
            if value is not None and value < 1:
                raise ValueError(f"export setting '{name}' must be >= 1, got {value}")
        for name in ("lr", "temperature"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"export setting '{name}' must be a number > 0, got {value!r}")


@dataclass(frozen=True)
class Mapping:
    """One spec mapped onto one target.

    ``trainer``: the target's trainer class (TRL) or algorithm family (verl), ``"custom"`` or
    ``"unsupported"``; ``module``: where a TRL trainer is imported from; ``config``: the exact
    configuration arguments; ``notes``: how each part of the spec maps (exact) or why it does
    not (the reasons, each naming its spec field); ``fields``: the spec fields that do not map.
    """

    target: str
    status: str
    trainer: str
    config: dict[str, Any]
    notes: tuple[str, ...]
    fields: tuple[str, ...] = ()
    module: str = ""


@dataclass
class Fit:
    """Collects the config arguments of one candidate mapping and the reasons it fails."""

    config: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    misses: list[tuple[str, str]] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return not self.misses

    def set(self, note: str, **arguments: Any) -> None:
        """Record config arguments and how they reproduce a part of the spec."""
        self.config.update(arguments)
        self.notes.append(note)

    def miss(self, spec_field: str, reason: str) -> None:
        """Record that ``spec_field`` cannot be expressed, and why."""
        self.misses.append((spec_field, f"{spec_field}: {reason}"))

    @property
    def missed_fields(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f for f, _ in self.misses))

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(r for _, r in self.misses)


def num(value: float) -> float | int:
    """A config number: integers stay integers, floats lose representation noise (1 + 0.28)."""
    if isinstance(value, int):
        return value
    return float(f"{value:.12g}")


def canonical_dict(spec: ObjectiveSpec) -> dict[str, Any]:
    """The canonical spec as a plain dict, every parameter filled in."""
    return spec.canonical().to_dict()


def regime(d: dict[str, Any]) -> tuple[int, int, int]:
    """(epochs, minibatches, staleness) of a spec dict; absent regime fields are neutral."""
    return (
        int(d["epochs"]),
        int(d.get("minibatches", NEUTRAL_REGIME["minibatches"])),
        int(d.get("staleness", NEUTRAL_REGIME["staleness"])),
    )


def with_settings(spec: ObjectiveSpec, settings: ExportSettings) -> ObjectiveSpec:
    """``spec`` with the settings' group size (validated like any spec)."""
    if settings.group_size is None:
        return spec
    return ObjectiveSpec.from_dict({**spec.to_dict(), "group_size": settings.group_size})


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise ObjectiveError(f"unknown export target {target!r}; valid targets: {list(TARGETS)}")
    return target
