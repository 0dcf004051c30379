"""Points <-> objectives: a point of a space as an ObjectiveSpec plus training overrides.

A *point* maps axis paths to values. :func:`to_spec` applies it to the space's base objective
(``optim.lr`` becomes the training override ``lr``); :func:`project` goes the other way, from a
spec to the genes of it that lie in the space; :func:`validate_points` checks that every point
the space can produce is a valid spec.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from grape_evo.objective import ObjectiveError, ObjectiveSpec
from grape_evo.search.space.errors import SpaceError, format_point

if TYPE_CHECKING:
    from grape_evo.search.space.values import SearchSpace

__all__ = ["MAX_VALIDATED_POINTS", "active_values", "build", "project", "to_spec"]

MAX_VALIDATED_POINTS = 2000
"""Above this many points, :func:`validate_points` checks a seeded sample."""


def active_values(space: SearchSpace, params: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``params`` whose axes are active, in declaration order.

    Values of int axes become ``int``, of float axes ``float``. Raises SpaceError for a key
    that is not an axis or a value its axis cannot take (:meth:`Axis.contains`).
    """
    unknown = [k for k in params if k not in space.paths]
    if unknown:
        raise SpaceError(
            f"{space.source}: params: unknown axis path(s) {unknown}; axes: {list(space.paths)}"
        )
    values: dict[str, Any] = {}
    for axis in space.axes:
        if axis.path not in params or not axis.is_active(values):
            continue
        value = params[axis.path]
        if not axis.contains(value):
            if axis.choices is not None:
                where = f"choices {list(axis.choices)}"
            elif axis.kind == "expression":
                where = f"formulas of kind '{axis.expression_kind}'"
            else:
                where = f"[{axis.low}, {axis.high}]" + (
                    "" if axis.step is None else f" step {axis.step}"
                )
            raise SpaceError(
                f"{space.source}: params: {axis.path}: {value!r} is not in the axis's {where}"
            )
        if axis.kind == "int":
            value = int(value)
        elif axis.kind == "float":
            value = float(value)
        values[axis.path] = value
    return values


def to_spec(
    space: SearchSpace, params: Mapping[str, Any], name: str = "candidate"
) -> tuple[ObjectiveSpec, dict[str, Any]]:
    """The objective at ``params`` and the training overrides (``{"lr": ...}``).

    Values of inactive axes are ignored; active axes missing from ``params`` keep the base
    value. Setting ``<kind>.name`` to the base component's name keeps the base component's
    parameters; setting it to another name switches the component, which starts from its
    own registered defaults (the papers' settings: GSPO's 3e-4 clip, SimPO's beta 2.0, not
    the base's PPO clip 0.2 or DPO beta 0.1). Then the axis values under ``<kind>.`` are
    applied; a value for a parameter the new component lacks stays *dormant* (kept by
    ``to_dict``, dropped by ``canonical``). ``preference.name: null`` removes the
    preference loss (and ignores the other ``preference.*`` values).
    """
    values = active_values(space, params)
    try:
        return build(space.base, values, name)
    except ObjectiveError as err:
        raise SpaceError(
            f"{space.source}: the point {format_point(values)} is invalid: {err}"
        ) from None


def build(
    base: ObjectiveSpec, values: Mapping[str, Any], name: str
) -> tuple[ObjectiveSpec, dict[str, Any]]:
    """:func:`to_spec` on already checked ``values``; raises ObjectiveError for an invalid
    spec."""
    d = base.to_dict()
    d["name"] = name
    overrides: dict[str, Any] = {}
    by_prefix: dict[str, dict[str, Any]] = {}
    for path, value in values.items():
        if path == "optim.lr":
            overrides["lr"] = value
        elif "." in path:
            prefix, _, key = path.partition(".")
            by_prefix.setdefault(prefix, {})[key] = value
        else:
            d[path] = value
    for kind in ("advantage", "surrogate", "aggregation"):
        if kind in by_prefix:
            d[kind] = _switch(d[kind], by_prefix[kind])
    if "kl" in by_prefix:
        d["kl"] = {**d["kl"], **by_prefix["kl"]}
    if "preference" in by_prefix:
        d["preference"] = _switch_preference(d["preference"], by_prefix["preference"])
    return ObjectiveSpec.from_dict(d), overrides


def _switch(base: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A component dict: ``base``, or the component ``values['name']`` with its registered
    defaults when that differs from the base's name, then the other ``values`` on top."""
    name = values.get("name", base["name"])
    out = dict(base) if name == base["name"] else {"name": name}
    out.update({k: v for k, v in values.items() if k != "name"})
    return out


def _switch_preference(base: Mapping[str, Any] | None, values: Mapping[str, Any]) -> Any:
    if "name" in values and values["name"] is None:
        return None
    if base is None:
        return dict(values)  # without a name, from_dict reports the missing name
    rest = {k: v for k, v in base.items() if k != "pairing"}
    out = _switch(rest, values)
    out.setdefault("pairing", base.get("pairing", "best_worst"))
    return out


def project(space: SearchSpace, spec: ObjectiveSpec) -> dict[str, Any]:
    """The genes of ``spec`` that lie in the space (used to seed a genome with baselines).

    Walks the axes in declaration order: an axis active under the genes found so far gets the
    spec's value at its path when :meth:`Axis.contains` accepts it. A spec without a
    preference loss sits at ``preference.name: null``; ``optim.lr`` is a training setting,
    not part of a spec, so it is never projected.
    """
    flat = _flatten(spec.to_dict())
    if spec.preference is None:
        flat["preference.name"] = None
    genes: dict[str, Any] = {}
    for axis in space.axes:
        if axis.path in flat and axis.is_active(genes) and axis.contains(flat[axis.path]):
            genes[axis.path] = flat[axis.path]
    return genes


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, path + "."))
        else:
            out[path] = value
    return out


def validate_points(space: SearchSpace) -> None:
    """Check that every point the space can produce is a valid objective.

    Tries every point of :meth:`SearchSpace.iter_points`; when there are more than
    :data:`MAX_VALIDATED_POINTS`, a seeded sample of that many. Raises SpaceError naming the
    offending point.
    """
    points = list(itertools.islice(space.iter_points(), MAX_VALIDATED_POINTS + 1))
    if len(points) > MAX_VALIDATED_POINTS:
        points = space.sample_points(MAX_VALIDATED_POINTS)
    for values in points:
        try:
            build(space.base, values, "candidate")
        except ObjectiveError as err:
            raise SpaceError(
                f"{space.source}: axes: the point {format_point(values)} is invalid: {err}"
            ) from None
