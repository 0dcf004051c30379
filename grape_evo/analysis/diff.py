"""How an objective differs from the nearest baseline, in one line.

Both specs are compared in canonical form (dormant parameters dropped, a zero KL reset, ...),
flattened to leaves (``surrogate.clip_high``, ``kl.coef``, ``preference.beta``); the distance
is the number of leaves that differ or exist on one side only. The text names the baseline and
each change compactly: ``grpo + clip_high 0.28 + token_mean aggregation + KL off``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from grape_evo.objective.spec import ObjectiveSpec

_COMPONENTS = ("advantage", "surrogate", "aggregation", "preference")


def flatten_spec(spec: ObjectiveSpec) -> dict[str, Any]:
    """Leaves of the canonical spec (name left out): ``{'surrogate.clip_high': 0.28, ...}``."""
    d = spec.canonical().to_dict()
    d.pop("name", None)
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, Mapping):
            for sub, v in value.items():
                out[f"{key}.{sub}"] = v
        else:
            out[key] = value
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def differing_leaves(spec: ObjectiveSpec, base: ObjectiveSpec) -> list[str]:
    """Leaf paths that differ between the canonical forms (or exist on one side only)."""
    a, b = flatten_spec(spec), flatten_spec(base)
    keys = list(a) + [k for k in b if k not in a]
    return [k for k in keys if k not in a or k not in b or not _same(a[k], b[k])]


def fmt_value(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _kl_text(kl: Mapping[str, Any]) -> str:
    where = " in reward" if kl["placement"] == "reward" else ""
    return f"{kl['estimator']} KL {fmt_value(kl['coef'])}{where}"


def describe_diff(spec: ObjectiveSpec, base: ObjectiveSpec) -> list[str]:
    """The changes that turn ``base`` into ``spec``, one short phrase each."""
    a = spec.canonical().to_dict()
    b = base.canonical().to_dict()
    parts: list[str] = []
    if a["data"] != b["data"]:
        parts.append(f"data {a['data']}")
    for field in ("group_size", "epochs"):
        if not _same(a[field], b[field]):
            parts.append(f"{field} {fmt_value(a[field])}")
    for field in _COMPONENTS:
        parts.extend(_component_diff(field, a[field], b[field]))
    kl_a, kl_b = a["kl"], b["kl"]
    if kl_a != kl_b:
        if kl_a["coef"] == 0.0:
            parts.append("KL off")
        else:
            parts.append(_kl_text(kl_a))
    if not _same(a["entropy_coef"], b["entropy_coef"]):
        parts.append(f"entropy {fmt_value(a['entropy_coef'])}")
    return parts


def _component_diff(field: str, new: Mapping | None, old: Mapping | None) -> list[str]:
    if new == old:
        return []
    if new is None:
        return [f"no {field}"]
    params = {k: v for k, v in new.items() if k != "name"}
    if old is None or new["name"] != old["name"]:
        old_params = {} if old is None else {k: v for k, v in old.items() if k != "name"}
        changed = [
            f"{k} {fmt_value(v)}"
            for k, v in params.items()
            if k not in old_params or not _same(v, old_params[k])
        ]
        label = f"{new['name']} {field}" if field == "aggregation" else f"{field} {new['name']}"
        return [label + (f" ({', '.join(changed)})" if changed else "")]
    out = []
    for k, v in params.items():
        if k not in old or not _same(v, old[k]):
            out.append(f"{k} {fmt_value(v)}")
    out.extend(f"no {k}" for k in old if k != "name" and k not in new)
    return out


def nearest_baseline_diff(
    spec: ObjectiveSpec, baselines: Mapping[str, ObjectiveSpec]
) -> tuple[str, str]:
    """The baseline with the fewest differing leaves and a one-line description of the change.

    Ties go to the first baseline in ``baselines``' order. An identical objective reads
    ``"= grpo"``.
    """
    if not baselines:
        raise ValueError("no baselines to compare with")
    best_name, best_count = "", math.inf
    for name, base in baselines.items():
        count = len(differing_leaves(spec, base))
        if count < best_count:
            best_name, best_count = name, count
    parts = describe_diff(spec, baselines[best_name])
    if not parts:
        return best_name, f"= {best_name}"
    return best_name, " + ".join([best_name, *parts])
