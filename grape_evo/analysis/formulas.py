"""A discovered objective's formulas, read for a report: each as trained, simplified, and set
against the nearest published form of its kind.

The nearest published form is the one with the smallest probe distance
(:func:`~grape_evo.objective.expression.probe.distance`: the functions compared on the kind's
probe batches, not the texts). The difference is ``simplify(f - f_published)`` when the two are
different functions (or the difference as written, when that is shorter), ``0`` when the
probes cannot tell them apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sympy as sp

from grape_evo.objective.expression import parse, size, to_sympy
from grape_evo.objective.expression.probe import distance, same_function
from grape_evo.objective.expression.published import PUBLISHED
from grape_evo.objective.expression.screen import formulas
from grape_evo.objective.spec import ObjectiveSpec

__all__ = ["FormulaReading", "formula_table", "read_formulas"]

SIMPLIFY_NODES = 48
"""Above this many nodes a formula is shown expanded instead of through ``sympy.simplify``
(whose time grows fast with size)."""


@dataclass(frozen=True)
class FormulaReading:
    """One formula of an objective. ``field`` is its spec path (``surrogate.expr``), ``text``
    the formula that trained, ``simplified`` and ``latex`` its sympy forms, ``nearest`` the
    name of the closest published form, ``nearest_text`` that form, ``distance`` the probe
    distance to it (0: the same function) and ``difference`` ``f - f_published`` simplified."""

    field: str
    kind: str
    text: str
    simplified: str
    latex: str
    nearest: str
    nearest_text: str
    distance: float
    difference: str


def _simplified(kind: str, text: str) -> sp.Expr:
    tree = parse(text, kind)
    expr = to_sympy(tree, kind)
    if size(tree) > SIMPLIFY_NODES:
        return sp.expand(expr)
    try:
        return sp.simplify(expr)
    except Exception:  # sympy cannot simplify some piecewise forms: show them as written
        return expr


def read_formulas(spec: ObjectiveSpec) -> list[FormulaReading]:
    """The readings of every formula ``spec`` trains with (empty without formulas)."""
    out = []
    for field, (kind, text) in formulas(spec).items():
        nearest, nearest_text, gap = min(
            ((name, form, distance(kind, text, form)) for name, form in PUBLISHED[kind].items()),
            key=lambda item: item[2],
        )
        simplified = _simplified(kind, text)
        if same_function(kind, text, nearest_text):
            difference = "0"
        else:
            diff = simplified - _simplified(kind, nearest_text)
            difference = str(diff if size(parse(text, kind)) > SIMPLIFY_NODES else _shortest(diff))
        out.append(
            FormulaReading(
                field,
                kind,
                text,
                str(simplified),
                sp.latex(simplified),
                nearest,
                nearest_text,
                gap,
                difference,
            )
        )
    return out


def formula_table(readings: Sequence[FormulaReading]) -> list[str]:
    """Markdown lines of a table of ``readings``: each formula as trained, simplified, and
    against the nearest published form (no lines without readings)."""
    if not readings:
        return []
    lines = [
        "| formula | as trained | simplified | nearest published | difference |",
        "|---|---|---|---|---|",
    ]
    for f in readings:
        near = f"{f.nearest} (`{f.nearest_text}`, probe distance {f.distance:.3g})"
        cells = [f.field, f"`{f.text}`", f"`{f.simplified}`", near, f"`{f.difference}`"]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return [*lines, ""]


def _shortest(expr: sp.Expr) -> sp.Expr:
    """``expr`` or its simplification, whichever has fewer operations."""
    try:
        simpler = sp.simplify(expr)
    except Exception:  # sympy cannot simplify some piecewise forms
        return expr
    return simpler if sp.count_ops(simpler) < sp.count_ops(expr) else expr
