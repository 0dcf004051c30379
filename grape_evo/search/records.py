"""The records the search layer keeps (**contract**): a candidate's runs and a trial's attributes.

The campaign writes a trial's attributes only through `record`; analysis and the CLI read them
only through `TrialRecord.of`. Both sides therefore agree on one schema, defined here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol

from grape_evo.training import RunSummary


@dataclass(frozen=True)
class RunResult:
    """One (task, seed) run of a candidate: where and how it ended, its held-out evaluations
    (``{reward, accuracy, kl_to_ref}``) and its curve of (step, held-out reward)."""

    task: str
    seed: int
    status: str
    reason: str
    initial_eval: dict[str, float] | None
    final_eval: dict[str, float] | None
    curve: list[tuple[int, float]]
    wall_seconds: float
    out_dir: str
    trained_with: int = 1

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def of(
        cls, summary: RunSummary, task: str, curve: list[tuple[int, float]], out_dir: str
    ) -> RunResult:
        data = summary.to_dict()
        return cls(
            task=task,
            seed=summary.seed,
            status=data["status"],
            reason=summary.reason,
            initial_eval=data["initial_eval"],
            final_eval=data["final_eval"],
            curve=[(int(s), float(v)) for s, v in curve],
            wall_seconds=summary.wall_seconds,
            out_dir=out_dir,
            trained_with=summary.trained_with,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResult:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["curve"] = [(int(s), float(v)) for s, v in values.get("curve") or []]
        values.setdefault("trained_with", 1)
        return cls(**values)


class _HasAttrs(Protocol):
    number: int

    @property
    def user_attrs(self) -> dict[str, Any]: ...


@dataclass
class TrialRecord:
    """A campaign trial's user attributes.

    ``objective`` (spec dict), ``key`` (canonical key + training overrides), ``overrides``
    (e.g. ``{"lr": ...}``), ``formula`` (LaTeX), ``baseline`` (preset name of an enqueued
    baseline), ``genome_complete`` (the baseline is a point of the genome), ``worker``
    (host:pid), ``runs``, ``reward``, ``accuracy``, ``kl_to_ref`` (means over the runs),
    ``artifacts`` (sha256 of every run file), ``failure``, ``reused_from`` (the trial whose
    result it copied), ``surplus`` (failed unstarted: the budget was claimed elsewhere),
    ``rejected`` (failed untrained: its formulas failed their cheap checks; free toward the
    budget, see `grape_evo.search.campaign.ledger.count_budget`),
    ``trained_with`` (members of the lockstep batch it was trained in; 1 when alone),
    ``behaviour`` (`grape_evo.objective.behaviour.behaviour`: objectives that train alike are
    evaluated once), ``genes`` (axis path -> value: the point of the space, formulas of
    expression axes included, which the trial's Optuna params hold only as draws),
    ``checks`` (the cheap checks of its formulas: problems, and LPO's drift conditions),
    ``fitness`` (`grape_evo.search.fitness.Fitness.to_dict`: the paired improvement over the
    reference and its per-task parts), ``rungs`` (seeds -> fitness after each rung of
    successive halving it reached).
    """

    objective: dict[str, Any] | None = None
    key: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    formula: str | None = None
    baseline: str | None = None
    genome_complete: bool = False
    worker: str | None = None
    runs: list[RunResult] = field(default_factory=list)
    reward: float | None = None
    accuracy: float | None = None
    kl_to_ref: float | None = None
    artifacts: dict[str, str] | None = None
    failure: str | None = None
    reused_from: int | None = None
    surplus: bool = False
    rejected: bool = False
    trained_with: int | None = None
    behaviour: dict[str, Any] | None = None
    genes: dict[str, Any] | None = None
    checks: dict[str, Any] | None = None
    fitness: dict[str, Any] | None = None
    rungs: dict[str, float | None] | None = None

    @classmethod
    def of(cls, trial: _HasAttrs) -> TrialRecord:
        """The record of an Optuna trial (frozen or live); absent attributes take defaults."""
        attrs = trial.user_attrs
        values = {f.name: attrs[f.name] for f in fields(cls) if attrs.get(f.name) is not None}
        values["runs"] = [RunResult.from_dict(r) for r in values.get("runs", [])]
        return cls(**values)

    @property
    def score(self) -> float | None:
        """What ranks the trial: its fitness when it has one, else its mean reward."""
        if self.fitness is not None:
            value = self.fitness.get("value")
            return value if isinstance(value, int | float) and math.isfinite(value) else None
        return self.reward

    def label(self, number: int) -> str:
        """The name reports use: the baseline's preset name, else ``trial-N``."""
        return self.baseline or f"trial-{number}"


_FIELDS = {f.name for f in fields(TrialRecord)}


def record(trial: Any, **values: Any) -> None:
    """Set trial attributes by `TrialRecord` field name (runs as dicts, JSON-ready)."""
    for name, value in values.items():
        if name not in _FIELDS:
            raise KeyError(f"'{name}' is not a TrialRecord field")
        if name == "runs":
            value = [run.to_dict() for run in value]
        trial.set_user_attr(name, value)
