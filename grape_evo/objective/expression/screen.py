"""Stage one of evaluating a formula candidate: the cheap checks of every formula it trains with.

A spec trains with the formulas of its active expression components: with a preference loss,
only ``preference.expr`` (an ``expression`` preference); without one, ``advantage.expr`` (an
``expression`` advantage) and ``surrogate.expr`` (a ``drift`` surrogate). :func:`screen` runs
:func:`~grape_evo.objective.expression.probe.cheap_checks` on each (milliseconds, no model) and
records LPO's drift conditions of a drift; a campaign fails a candidate with problems before
it trains.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from grape_evo.objective.expression.probe import DriftConditions, cheap_checks, drift_conditions
from grape_evo.objective.spec import ObjectiveSpec

__all__ = ["Screening", "formulas", "screen"]


@dataclass(frozen=True)
class Screening:
    """The cheap checks of a spec's formulas: ``problems`` (each ``<field>: <reason>``; empty
    when it passed) and ``drift_conditions`` (None without a drift surrogate)."""

    problems: tuple[str, ...] = ()
    drift_conditions: DriftConditions | None = None

    @property
    def passed(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        conditions = self.drift_conditions
        return {
            "problems": list(self.problems),
            "drift_conditions": None if conditions is None else asdict(conditions),
        }


def formulas(spec: ObjectiveSpec) -> dict[str, tuple[str, str]]:
    """The formulas ``spec`` trains with: field path -> (expression kind, text)."""
    out: dict[str, tuple[str, str]] = {}
    if spec.preference is not None:
        if spec.preference.name == "expression":
            out["preference.expr"] = ("preference", str(spec.preference.loss.get("expr")))
        return out
    if spec.advantage.name == "expression":
        out["advantage.expr"] = ("advantage", str(spec.advantage.get("expr")))
    if spec.surrogate.name == "drift":
        out["surrogate.expr"] = ("drift", str(spec.surrogate.get("expr")))
    return out


def screen(spec: ObjectiveSpec) -> Screening:
    """The cheap checks of every formula ``spec`` trains with (an empty Screening without
    formulas)."""
    problems: list[str] = []
    conditions = None
    for path, (kind, text) in formulas(spec).items():
        problems += [f"{path}: {p}" for p in cheap_checks(kind, text)]
        if kind == "drift":
            conditions = drift_conditions(text)
    return Screening(tuple(problems), conditions)
