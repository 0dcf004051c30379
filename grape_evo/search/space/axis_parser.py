"""The ``axes`` section of a search space: each entry becomes an :class:`Axis`.

Forms of an entry (``<path>: ...``, the path from :mod:`grape_evo.search.space.paths`)::

    surrogate.name: {choices: [ppo_clip, reinforce]}    # categorical
    kl.estimator: [k1, k3]                              # the same, as a bare list
    preference.name: {choices: [null, sigmoid]}         # null: no preference loss
    surrogate.clip_high: {low: 0.1, high: 0.4}          # float range (inclusive)
    kl.coef: {low: 1.0e-4, high: 0.1, log: true}        # log scale
    entropy_coef: {low: 0.0, high: 0.01, step: 0.005}   # on a grid
    group_size: {low: 2, high: 16, step: 2}             # integer field: integer bounds
    epochs: {low: 1, high: 4, int: true}                # int: true may be said explicitly
    surrogate.clip_low: {low: 0.1, high: 0.3, when: {surrogate.name: ppo_clip}}
    advantage.name: {choices: [group_zscore, rloo], when: {preference.name: [null]}}
    advantage.expr: {expression: {seeds: ["R - mean_G"], max_depth: 6}}   # a formula
    surrogate.expr: {expression: {}}                    # seeded with the published forms

An ``expression`` axis searches a formula field (``advantage.expr``, ``surrogate.expr``,
``preference.expr``): ``seeds`` default to the published forms of its kind and must parse and
fit ``max_depth`` (default: the deeper of 8 and the deepest seed).

``when: {path: [values]}`` (or ``{path: value}``) makes an axis conditional: it is active only
when every named axis is active and holds one of the values; ``when`` may only name
categorical axes declared before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from grape_evo.objective.expression import MAX_DEPTH, SEARCH_DEPTH, depth, parse
from grape_evo.objective.expression.published import published_forms
from grape_evo.search.space.errors import format_value
from grape_evo.search.space.expressions import EXPRESSION_KINDS, seed_problem
from grape_evo.search.space.paths import Field, axis_paths, field_of
from grape_evo.search.space.reader import Reader, type_name
from grape_evo.search.space.values import Axis, AxisKind, Condition, value_in

__all__ = ["AXIS_KEYS", "parse_axes"]

AXIS_KEYS = ("choices", "low", "high", "log", "int", "step", "expression", "when")


def parse_axes(reader: Reader, raw: Any) -> tuple[Axis, ...]:
    """The axes of the ``axes`` mapping, in declaration order (none when it is absent)."""
    if raw is None:
        return ()
    raw = reader.mapping("axes", raw)
    axes: list[Axis] = []
    for path, spec in raw.items():
        axes.append(_parse_axis(reader, path, spec, axes, list(raw)))
    return tuple(axes)


def _parse_axis(
    reader: Reader, path: str, raw: Any, earlier: Sequence[Axis], declared: Sequence[str]
) -> Axis:
    key = f"axes.{path}"
    fld = field_of(path)
    if fld is None:
        raise reader.error(key, f"unknown axis path '{path}'; valid paths: {axis_paths()}")
    if isinstance(raw, list | tuple):
        raw = {"choices": list(raw)}
    raw = reader.mapping(key, raw)
    reader.keys(key, raw, AXIS_KEYS)
    when = _parse_when(reader, key, raw.get("when"), earlier, declared)
    if "expression" in raw:
        return _parse_expression(reader, key, path, raw, when)
    if "choices" in raw:
        extra = [k for k in ("low", "high", "log", "int", "step") if k in raw]
        if extra:
            raise reader.error(key, f"'choices' cannot be combined with {extra}")
        choices = _parse_choices(reader, f"{key}.choices", raw["choices"], fld)
        return Axis(path, "categorical", choices=choices, when=when)
    if "low" not in raw or "high" not in raw:
        raise reader.error(key, "needs either 'choices' or both 'low' and 'high'")
    if fld.kind in ("str", "bool"):
        raise reader.error(
            key, f"is a {'name' if fld.kind == 'str' else 'boolean'} field: give 'choices'"
        )
    low = reader.number(f"{key}.low", raw["low"])
    high = reader.number(f"{key}.high", raw["high"])
    log = reader.boolean(f"{key}.log", raw.get("log", False))
    as_int = raw.get("int")
    if as_int is not None:
        as_int = reader.boolean(f"{key}.int", as_int)
    if fld.kind == "int":
        if as_int is False:
            raise reader.error(f"{key}.int", f"'{path}' is an integer field")
        for bound, value in (("low", low), ("high", high)):
            if not isinstance(value, int):
                raise reader.error(
                    f"{key}.{bound}",
                    f"must be an integer ('{path}' is an integer field), got {value!r}",
                )
        kind: AxisKind = "int"
    else:
        if as_int:
            raise reader.error(f"{key}.int", f"'{path}' is a float field; remove 'int: true'")
        kind = "float"
        low, high = float(low), float(high)
    if not low < high:
        raise reader.error(key, f"low ({low}) must be < high ({high})")
    if log and low <= 0:
        raise reader.error(key, f"log: true needs low > 0, got low ({low})")
    if path == "optim.lr" and low <= 0:
        raise reader.error(key, f"the learning rate must be > 0, got low ({low})")
    step = _parse_step(reader, key, raw.get("step"), kind, low, high, log)
    return Axis(path, kind, low=low, high=high, log=log, step=step, when=when)


def _parse_expression(reader: Reader, key: str, path: str, raw: Any, when: Condition) -> Axis:
    extra = [k for k in raw if k not in ("expression", "when")]
    if extra:
        raise reader.error(key, f"'expression' cannot be combined with {extra}")
    if path not in EXPRESSION_KINDS:
        raise reader.error(
            key, f"only formula fields take an expression axis: {list(EXPRESSION_KINDS)}"
        )
    kind = EXPRESSION_KINDS[path]
    key = f"{key}.expression"
    body = reader.mapping(key, {} if raw["expression"] is None else raw["expression"])
    reader.keys(key, body, ("seeds", "max_depth"))
    seeds = tuple(reader.listing(f"{key}.seeds", body.get("seeds", list(published_forms(kind)))))
    if not seeds:
        raise reader.error(f"{key}.seeds", "must not be empty")
    for i, seed in enumerate(seeds):
        problem = seed_problem(kind, seed, MAX_DEPTH)
        if problem is not None:
            raise reader.error(f"{key}.seeds[{i}]", problem)
        if seed in seeds[:i]:
            raise reader.error(f"{key}.seeds[{i}]", f"lists {seed!r} twice")
    deepest = max(depth(parse(seed, kind)) for seed in seeds)
    max_depth = max(SEARCH_DEPTH, deepest)
    if "max_depth" in body:
        max_depth = reader.integer(f"{key}.max_depth", body["max_depth"], 1)
        if max_depth > MAX_DEPTH:
            raise reader.error(f"{key}.max_depth", f"must be <= {MAX_DEPTH}, got {max_depth}")
        for i, seed in enumerate(seeds):
            problem = seed_problem(kind, seed, max_depth)
            if problem is not None:
                raise reader.error(f"{key}.seeds[{i}]", problem)
    return Axis(path, "expression", seeds=seeds, max_depth=max_depth, when=when)


def _parse_step(
    reader: Reader,
    key: str,
    raw: Any,
    kind: AxisKind,
    low: float | int,
    high: float | int,
    log: bool,
) -> float | int | None:
    if raw is None:
        return None
    if kind == "int":
        step: float | int = reader.integer(f"{key}.step", raw, 1)
    else:
        step = float(reader.number(f"{key}.step", raw))
        if step <= 0:
            raise reader.error(f"{key}.step", f"must be > 0, got {step}")
    if log and step != 1:
        raise reader.error(f"{key}.step", "cannot be combined with log: true")
    span = (high - low) / step
    if abs(span - round(span)) > 1e-9 * max(1.0, abs(span)):
        raise reader.error(f"{key}.step", f"step ({step}) must divide high - low ({high - low:g})")
    # An int axis with log and step 1: Optuna wants step 1 there, which is the default.
    return None if log else step


def _parse_choices(reader: Reader, key: str, raw: Any, fld: Field) -> tuple[Any, ...]:
    items = reader.listing(key, raw)
    if not items:
        raise reader.error(key, "must not be empty")
    out: list[Any] = []
    for item in items:
        if item is None and fld.names is not None and None in fld.names:
            value: Any = None
        elif fld.kind == "str":
            if not isinstance(item, str):
                raise reader.error(key, f"must be strings, got {type_name(item)} ({item!r})")
            if fld.names is not None and item not in fld.names:
                valid = [format_value(n) for n in fld.names]
                raise reader.error(key, f"unknown {fld.what} '{item}'; valid names: {valid}")
            value = item
        elif fld.kind == "bool":
            value = reader.boolean(key, item)
        elif fld.kind == "int":
            value = reader.integer(key, item)
        else:
            value = float(reader.number(key, item))
        if value_in(value, out):
            raise reader.error(key, f"lists {format_value(value)} twice")
        out.append(value)
    return tuple(out)


def _parse_when(
    reader: Reader, key: str, raw: Any, earlier: Sequence[Axis], declared: Sequence[str]
) -> Condition:
    if raw is None:
        return ()
    raw = reader.mapping(f"{key}.when", raw)
    if not raw:
        raise reader.error(f"{key}.when", "must name at least one axis")
    by_path = {a.path: a for a in earlier}
    out: list[tuple[str, tuple[Any, ...]]] = []
    this = key.removeprefix("axes.")
    for path, allowed in raw.items():
        wkey = f"{key}.when.{path}"
        if path not in by_path:
            if path == this:
                raise reader.error(wkey, "an axis cannot depend on itself")
            if field_of(path) is None:
                raise reader.error(wkey, f"'{path}' is not an axis path")
            if path in declared:
                raise reader.error(
                    wkey,
                    f"'{path}' is declared after '{this}'; when may only refer to axes declared "
                    f"before it (declared before: {list(by_path)})",
                )
            raise reader.error(
                wkey,
                f"'{path}' is not an axis of this space; when may only refer to axes declared "
                f"before '{this}' (declared before: {list(by_path)})",
            )
        target = by_path[path]
        if target.choices is None:
            raise reader.error(wkey, f"'{path}' is not categorical; when can only test choices")
        if not isinstance(allowed, list | tuple):
            allowed = [allowed]
        if not allowed:
            raise reader.error(wkey, "must list at least one value")
        for value in allowed:
            if not value_in(value, target.choices):
                raise reader.error(
                    wkey,
                    f"{format_value(value)} is not a choice of '{path}'; choices: "
                    f"{[format_value(c) for c in target.choices]}",
                )
        out.append((path, tuple(allowed)))
    return tuple(out)
