"""What a campaign report shows of its trials: the top discovered objectives (from the
fresh-seed re-evaluation, else the search), the baselines as trained, and where each trial's
run folders are."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from grape_evo.objective import ObjectiveSpec, presets

CURVE_BASELINES = ("ppo", "grpo", "dpo")
TOP_N = 3


@dataclass
class Candidate:
    """A top discovered objective (or a baseline) as the report shows it."""

    label: str
    trial: int | None
    spec: ObjectiveSpec | None
    reward: float
    ci: tuple[float, float] | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    formula: str | None = None


def baseline_specs(study) -> dict[str, ObjectiveSpec]:
    """The campaign's baselines (as trained), then PPO / GRPO / DPO presets if missing."""
    specs: dict[str, ObjectiveSpec] = {}
    for t in study.get_trials(deepcopy=False):
        name = t.user_attrs.get("baseline")
        if not name or name in specs:
            continue
        try:
            specs[name] = ObjectiveSpec.from_dict(t.user_attrs["objective"])
        except Exception:
            try:
                specs[name] = presets.get(name)
            except Exception:
                continue
    for name in CURVE_BASELINES:
        if name not in specs:
            specs[name] = presets.get(name)
    return specs


def spec_of(attrs: dict[str, Any] | None) -> ObjectiveSpec | None:
    try:
        return ObjectiveSpec.from_dict(attrs) if attrs else None
    except Exception:
        return None


def top_candidates(study, trials: pd.DataFrame, disc: pd.DataFrame | None) -> list[Candidate]:
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    out: list[Candidate] = []
    if disc is not None and not disc.empty:
        for _, row in disc[~disc["baseline"]].head(TOP_N).iterrows():
            t = by_number.get(row["trial"])
            ua = t.user_attrs if t is not None else {}
            out.append(
                Candidate(
                    str(row["label"]),
                    None if t is None else t.number,
                    spec_of(row["objective"] or ua.get("objective")),
                    float(row["reward"]),
                    (float(row["ci_low"]), float(row["ci_high"])),
                    ua.get("overrides") or {},
                    ua.get("formula"),
                )
            )
        return out
    done = trials[(trials["state"] == "COMPLETE") & (trials["baseline"] == "")]
    done = done.sort_values(["reward", "number"], ascending=[False, True])
    for _, row in done.drop_duplicates("key").head(TOP_N).iterrows():
        ua = by_number[int(row["number"])].user_attrs
        out.append(
            Candidate(
                str(row["label"]),
                int(row["number"]),
                spec_of(ua.get("objective")),
                float(row["reward"]),
                None,
                ua.get("overrides") or {},
                ua.get("formula"),
            )
        )
    return out


def curve_baselines(study) -> list[tuple[str, int]]:
    """(label, trial) of the PPO / GRPO / DPO baselines the campaign has (else its first 3)."""
    found: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        name = t.user_attrs.get("baseline")
        if name and name not in found and t.state.name == "COMPLETE":
            found[name] = t.number
    chosen = [n for n in CURVE_BASELINES if n in found] or list(found)[:3]
    return [(n, found[n]) for n in chosen]


def source_trial(study, number: int) -> int:
    """The trial whose run folders hold ``number``'s runs (a reused result points elsewhere)."""
    trial = study.trials[number] if number < len(study.trials) else None
    if trial is None:
        return number
    reused = trial.user_attrs.get("reused_from")
    return int(reused) if reused is not None else number
