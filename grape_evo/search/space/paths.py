"""The searchable paths of an objective, read from the component registries.

An axis path is a dotted path into :class:`~grape_evo.objective.ObjectiveSpec` (or
``optim.lr``, the learning rate): ``data``, ``group_size``, ``epochs``, ``minibatches``,
``staleness``, ``entropy_coef``,
``advantage.<name|param>``, ``surrogate.<name|param>``, ``aggregation.<name|param>``,
``kl.<estimator|placement|coef>``, ``preference.<name|pairing|param>``. A ``<param>`` is a
parameter of some registered component of that kind, so registering a component adds its
parameters to the space.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from grape_evo.objective import REGISTRIES
from grape_evo.objective.registry import Registry
from grape_evo.objective.spec import DATA_MODES, KL_PLACEMENTS, PAIRINGS

__all__ = ["COMPONENT_KINDS", "Field", "axis_paths", "field_of"]

COMPONENT_KINDS = ("advantage", "surrogate", "aggregation", "preference")
"""The spec fields that hold a registered component (``<kind>.name`` and its parameters)."""


@dataclass(frozen=True)
class Field:
    """What an axis path points at: its value type and, for names, the valid values."""

    kind: Literal["str", "bool", "int", "float"]
    names: tuple[Any, ...] | None = None  # valid values of a string field (None = any string)
    what: str = "value"  # how an unknown name is described in errors


def _param_field(registry: Registry, param: str) -> Field | None:
    for component in registry:
        if param in component.params:
            p = component.params[param]
            if p.kind is bool:
                return Field("bool")
            if p.kind is str:
                return Field("str", p.choices, f"value of {registry.kind} parameter '{param}'")
            return Field("int" if p.kind is int else "float")
    return None


def field_of(path: str) -> Field | None:
    """The field an axis path names, or None if the path is not an axis path."""
    simple = {
        "data": Field("str", DATA_MODES, "data mode"),
        "group_size": Field("int"),
        "epochs": Field("int"),
        "minibatches": Field("int"),
        "staleness": Field("int"),
        "entropy_coef": Field("float"),
        "optim.lr": Field("float"),
        "kl.estimator": Field("str", tuple(REGISTRIES["kl"].names()), "kl estimator"),
        "kl.placement": Field("str", KL_PLACEMENTS, "kl placement"),
        "kl.coef": Field("float"),
        "preference.pairing": Field("str", PAIRINGS, "pairing"),
    }
    if path in simple:
        return simple[path]
    kind, _, rest = path.partition(".")
    if kind not in COMPONENT_KINDS or not rest or "." in rest:
        return None
    registry = REGISTRIES[kind]
    if rest == "name":
        names: tuple[Any, ...] = tuple(registry.names())
        if kind == "preference":
            names = (None, *names)
        return Field("str", names, f"{registry.kind} name")
    return _param_field(registry, rest)


def axis_paths() -> list[str]:
    """Every valid axis path (component parameters read from the registries)."""
    paths = ["data", "group_size", "epochs", "minibatches", "staleness", "entropy_coef", "optim.lr"]
    for kind in ("advantage", "surrogate", "aggregation"):
        paths += [f"{kind}.name"] + [
            f"{kind}.{p}" for p in sorted(REGISTRIES[kind].all_param_names())
        ]
    paths += ["kl.estimator", "kl.placement", "kl.coef", "preference.name", "preference.pairing"]
    paths += [f"preference.{p}" for p in sorted(REGISTRIES["preference"].all_param_names())]
    return paths
