"""Campaign data as pandas DataFrames (no plotting here).

* :func:`trials_frame` - one row per trial: axes, values, per-(task, seed) finals, state, key.
* :func:`runs_frame` - one row per run folder (trial and re-evaluation runs) with the state
  of its ``summary.json`` / ``metrics.jsonl`` (the "Data problems" of a report).
* :func:`artifact_problems` - run files whose sha256 differs from the one stored with the trial.
* :func:`steps_frame` - one row per step per run (the ``metrics.jsonl`` records, plus a step-0
  row from ``initial_eval``).
* :func:`discoveries_frame` - the fresh-seed re-evaluation (``discoveries.json``).

Summaries of these frames (curves with intervals, the best so far, axis importances) are in
:mod:`grape_evo.analysis.summaries`.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial

from grape_evo.analysis.stats import t_interval
from grape_evo.search.evaluator import verify_artifacts
from grape_evo.training.records import parse_metrics

DISCOVERIES_FILE = "discoveries.json"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"
PARAM_PREFIX = "params."
_SEED_DIR = re.compile(r"^seed(-?\d+)$")


# ---- loading ------------------------------------------------------------------------------
def study_axes(study: optuna.Study) -> list[str]:
    """Axis paths in the space's order (from the stored space), else as trials name them."""
    text = study.user_attrs.get("space")
    axes: list[str] = []
    if text:
        try:
            space = json.loads(text) if isinstance(text, str) else text
            raw = space.get("axes", [])
            if isinstance(raw, dict):
                axes = list(raw)
            else:
                axes = [a["path"] if isinstance(a, dict) else str(a) for a in raw]
        except (ValueError, AttributeError, KeyError, TypeError):
            axes = []
    for t in study.get_trials(deepcopy=False):
        axes.extend(p for p in t.user_attrs.get("genes") or t.params if p not in axes)
    return axes


def trial_label(trial: FrozenTrial) -> str:
    return trial.user_attrs.get("baseline") or f"trial-{trial.number}"


# ---- trials -------------------------------------------------------------------------------
def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial.

    Columns: ``number``, ``label``, ``state`` (COMPLETE / PRUNED / FAIL / ...), ``baseline``
    (preset name or ""), ``key``, ``reused_from``, ``failure``, ``value_0`` (and ``value_1``
    for a (reward, KL) study), ``reward``, ``accuracy``, ``kl_to_ref`` (means over runs),
    ``params.<axis>`` for every axis (the trial's genes, a formula axis's text included;
    NaN where inactive), ``reward.<task>.seed<k>`` and
    ``kl_to_ref.<task>.seed<k>`` per run, ``n_runs``, ``last_step`` (last reported
    intermediate step), ``last_value`` (its value), ``objective_name``, ``overrides``
    (JSON), ``formula``, ``duration_s``.
    """
    axes = study_axes(study)
    n_values = len(study.directions)
    rows = []
    for t in study.get_trials(deepcopy=False):
        ua = t.user_attrs
        row: dict[str, Any] = {
            "number": t.number,
            "label": trial_label(t),
            "state": t.state.name,
            "baseline": ua.get("baseline") or "",
            "key": ua.get("key"),
            "reused_from": ua.get("reused_from"),
            "failure": ua.get("failure") or "",
        }
        values = t.values or []
        for i in range(n_values):
            row[f"value_{i}"] = values[i] if i < len(values) else math.nan
        for name in ("reward", "accuracy", "kl_to_ref"):
            row[name] = _num(ua.get(name))
        genes = ua.get("genes") or t.params
        for axis in axes:
            row[PARAM_PREFIX + axis] = genes.get(axis, math.nan)
        runs = ua.get("runs") or []
        for run in runs:
            final = run.get("final_eval") or {}
            tag = f"{run.get('task')}.seed{run.get('seed')}"
            row[f"reward.{tag}"] = _num(final.get("reward"))
            row[f"kl_to_ref.{tag}"] = _num(final.get("kl_to_ref"))
        row["n_runs"] = len(runs)
        row["last_step"] = max(t.intermediate_values, default=math.nan)
        last = t.intermediate_values.get(row["last_step"]) if t.intermediate_values else None
        row["last_value"] = _num(last)
        row["objective_name"] = (ua.get("objective") or {}).get("name")
        row["overrides"] = json.dumps(ua.get("overrides") or {}, sort_keys=True)
        row["formula"] = ua.get("formula")
        row["duration_s"] = t.duration.total_seconds() if t.duration is not None else math.nan
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        cols = ["number", "label", "state", "baseline", "key", "reward", "kl_to_ref"]
        frame = pd.DataFrame(columns=cols + [PARAM_PREFIX + a for a in axes])
    frame.attrs["axes"] = axes
    frame.attrs["directions"] = [d.name.lower() for d in study.directions]
    return frame


def seed_columns(trials: pd.DataFrame, metric: str = "reward") -> list[str]:
    """The per-(task, seed) columns of ``metric`` in a trials frame."""
    prefix = metric + "."
    return [c for c in trials.columns if c.startswith(prefix) and ".seed" in c]


def _num(value: Any) -> float:
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


# ---- run folders --------------------------------------------------------------------------
@dataclass(frozen=True)
class RunRef:
    """One run folder: ``RUN/trials/NNNNN/<task>/seed<k>`` or ``RUN/reeval/<label>/...``."""

    source: str  # "trial" | "reeval"
    label: str
    trial: int | None
    task: str
    seed: int
    path: Path


def find_run_folders(run_dir: Path, study: optuna.Study | None = None) -> list[RunRef]:
    """Every run folder on disk, plus those the study's trials name that are missing."""
    run_dir = Path(run_dir)
    labels: dict[int, str] = {}
    if study is not None:
        labels = {t.number: trial_label(t) for t in study.get_trials(deepcopy=False)}
    found: dict[Path, RunRef] = {}
    for seed_dir in sorted((run_dir / "trials").glob("*/*/seed*")):
        match = _SEED_DIR.match(seed_dir.name)
        if not match or not seed_dir.is_dir() or not seed_dir.parent.parent.name.isdigit():
            continue
        number = int(seed_dir.parent.parent.name)
        found[seed_dir] = RunRef(
            "trial",
            labels.get(number, f"trial-{number}"),
            number,
            seed_dir.parent.name,
            int(match.group(1)),
            seed_dir,
        )
    reeval_trials: dict[str, int] = {}
    disc = run_dir / DISCOVERIES_FILE
    if disc.is_file():
        # A damaged discoveries file is reported elsewhere; here it only loses the labels.
        with contextlib.suppress(ValueError, AttributeError, KeyError, TypeError):
            for c in json.loads(disc.read_text()).get("candidates", []):
                reeval_trials[c["label"]] = c.get("trial")
    for seed_dir in sorted((run_dir / "reeval").glob("*/*/seed*")):
        match = _SEED_DIR.match(seed_dir.name)
        if not match or not seed_dir.is_dir():
            continue
        label = seed_dir.parent.parent.name
        found[seed_dir] = RunRef(
            "reeval",
            label,
            reeval_trials.get(label),
            seed_dir.parent.name,
            int(match.group(1)),
            seed_dir,
        )
    if study is not None:  # runs a trial recorded whose folder is gone
        for t in study.get_trials(deepcopy=False):
            if t.user_attrs.get("reused_from") is not None:
                continue  # its runs are the other trial's folders
            for run in t.user_attrs.get("runs") or []:
                path = run_dir / "trials" / f"{t.number:05d}" / str(run["task"])
                path = path / f"seed{run['seed']}"
                if path not in found:
                    found[path] = RunRef(
                        "trial", trial_label(t), t.number, str(run["task"]), int(run["seed"]), path
                    )
    return sorted(found.values(), key=lambda r: (r.source != "trial", str(r.path)))


def read_summary(path: Path) -> tuple[dict[str, Any] | None, str]:
    """(summary, problem) for a run folder: problem is "" when summary.json exists and parses."""
    file = Path(path) / SUMMARY_FILE
    if not Path(path).is_dir():
        return None, "run folder missing"
    if not file.is_file():
        return None, "summary.json missing"
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return None, f"summary.json corrupt ({type(err).__name__}: {err})"
    if not isinstance(data, dict):
        return None, f"summary.json corrupt (a {type(data).__name__}, not an object)"
    return data, ""


def read_metrics_file(path: Path) -> tuple[list[dict[str, Any]], str]:
    """(records, problem) of ``metrics.jsonl``; a torn last line is dropped silently."""
    file = Path(path) / METRICS_FILE
    if not file.is_file():
        return [], "metrics.jsonl missing"
    try:
        text = file.read_text()
    except (OSError, UnicodeDecodeError) as err:
        return [], f"metrics.jsonl unreadable ({err})"
    records, bad = parse_metrics(text)
    return records, (f"metrics.jsonl has {bad} corrupt line(s)" if bad else "")


def runs_frame(run_dir: Path, study: optuna.Study | None = None) -> pd.DataFrame:
    """One row per run folder: ``source``, ``label``, ``trial``, ``task``, ``seed``, ``path``,
    ``status`` (the summary's), ``final_reward``, ``kl_to_ref``, ``problem`` ("" when
    summary.json exists and parses; metrics.jsonl problems are appended)."""
    rows = []
    for ref in find_run_folders(run_dir, study):
        summary, problem = read_summary(ref.path)
        if ref.path.is_dir():
            _, metrics_problem = read_metrics_file(ref.path)
            problem = "; ".join(p for p in (problem, metrics_problem) if p)
        final = (summary or {}).get("final_eval") or {}
        rows.append(
            {
                "source": ref.source,
                "label": ref.label,
                "trial": ref.trial,
                "task": ref.task,
                "seed": ref.seed,
                "path": str(ref.path),
                "status": (summary or {}).get("status"),
                "final_reward": _num(final.get("reward")),
                "kl_to_ref": _num((summary or {}).get("kl_to_ref")),
                "problem": problem,
            }
        )
    columns = ["source", "label", "trial", "task", "seed", "path", "status"]
    return pd.DataFrame(rows, columns=[*columns, "final_reward", "kl_to_ref", "problem"])


def artifact_problems(run_dir: Path, study: optuna.Study) -> list[str]:
    """One line per problem with a trial's checksummed files (``artifacts`` of the trial vs
    the files in ``RUN/trials/NNNNN`` and its ``artifacts.json``); empty when all match."""
    problems = []
    for t in study.get_trials(deepcopy=False):
        sums = t.user_attrs.get("artifacts")
        if not isinstance(sums, dict) or t.user_attrs.get("reused_from") is not None:
            continue  # older trials have no checksums; a reused result is the other trial's
        folder = Path(run_dir) / "trials" / f"{t.number:05d}"
        problems += [
            f"trial {t.number} (`trials/{t.number:05d}`): {p}"
            for p in verify_artifacts(folder, sums)
        ]
    return problems


def steps_frame(refs: Iterable[RunRef]) -> pd.DataFrame:
    """One row per step per run: ``source``, ``label``, ``trial``, ``task``, ``seed`` and every
    field of ``metrics.jsonl`` (``step``, ``reward``, ``eval_reward``, ``kl_to_ref``, ...).

    A run whose summary has ``initial_eval`` gets a step-0 row with ``eval_reward`` /
    ``eval_accuracy`` from it (the curve's starting point). Unreadable files give no rows.
    """
    rows = []
    for ref in refs:
        base = {
            "source": ref.source,
            "label": ref.label,
            "trial": ref.trial,
            "task": ref.task,
            "seed": ref.seed,
        }
        summary, _ = read_summary(ref.path)
        initial = (summary or {}).get("initial_eval")
        if isinstance(initial, dict) and initial.get("reward") is not None:
            rows.append(
                {
                    **base,
                    "step": 0,
                    "eval_reward": initial.get("reward"),
                    "eval_accuracy": initial.get("accuracy"),
                }
            )
        records, _ = read_metrics_file(ref.path)
        rows.extend({**base, **r} for r in records if "step" in r)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=["source", "label", "trial", "task", "seed", "step"])
    return frame.sort_values(["source", "label", "task", "seed", "step"], kind="stable")


def curves_from_trials(study: optuna.Study, numbers: Sequence[int]) -> pd.DataFrame:
    """A steps frame (``eval_reward`` only) from the curves stored with trials: for runs whose
    folders are not at hand (a study on a remote storage)."""
    rows = []
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    for n in numbers:
        t = by_number[n]
        for run in t.user_attrs.get("runs") or []:
            base = {
                "source": "trial",
                "label": trial_label(t),
                "trial": n,
                "task": run.get("task"),
                "seed": run.get("seed"),
            }
            initial = run.get("initial_eval") or {}
            if initial.get("reward") is not None:
                rows.append({**base, "step": 0, "eval_reward": initial["reward"]})
            rows.extend({**base, "step": s, "eval_reward": v} for s, v in run.get("curve") or [])
    columns = ["source", "label", "trial", "task", "seed", "step", "eval_reward"]
    return pd.DataFrame(rows, columns=columns)


# ---- discoveries --------------------------------------------------------------------------
def discoveries_frame(run_dir: Path) -> pd.DataFrame | None:
    """One row per re-evaluated candidate (``discoveries.json``), best first; None when absent.

    Columns: ``label``, ``trial``, ``baseline`` (bool), ``key``, ``reward``, ``ci_low``,
    ``ci_high`` (the stored 95% CI, recomputed as a t-interval from
    ``rewards`` where it is missing), ``n`` (number of finals), ``rewards`` (list),
    ``search_reward``, ``accuracy``, ``kl_to_ref``, ``status``, ``objective`` (spec dict),
    and the paired comparison with the reference: ``reference``, ``paired_effect``,
    ``effect_low``, ``effect_high`` (its Bonferroni t-interval), ``verdict``, ``n_seeds``
    (NaN / None where there is none). Raises ValueError when the file exists but does not
    parse.
    """
    path = Path(run_dir) / DISCOVERIES_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        candidates = data["candidates"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: corrupt ({type(err).__name__}: {err})") from None
    rows = []
    for c in candidates:
        rewards = [float(v) for v in c.get("rewards") or [] if v is not None]
        ci = c.get("reward_ci95") or [None, None]
        low, high = _num(ci[0]), _num(ci[1])
        if not (math.isfinite(low) and math.isfinite(high)) and rewards:
            _, low, high, _ = t_interval(rewards)
        reward = _num(c.get("reward"))
        if not math.isfinite(reward) and rewards:
            reward = float(np.mean(rewards))
        rows.append(
            {
                "label": c.get("label"),
                "trial": c.get("trial"),
                "baseline": bool(c.get("baseline")),
                "key": c.get("key"),
                "reward": reward,
                "ci_low": low,
                "ci_high": high,
                "n": len(rewards),
                "rewards": rewards,
                "search_reward": _num(c.get("search_reward")),
                "accuracy": _num(c.get("accuracy")),
                "kl_to_ref": _num(c.get("kl_to_ref")),
                "status": c.get("status"),
                "objective": c.get("objective"),
                "reference": c.get("reference"),
                "paired_effect": _num(c.get("paired_effect")),
                "effect_low": _num(c.get("ci_low")),
                "effect_high": _num(c.get("ci_high")),
                "verdict": c.get("verdict"),
                "n_seeds": _num(c.get("n_seeds")),
            }
        )
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame = frame.sort_values("reward", ascending=False, na_position="last", kind="stable")
    return frame.reset_index(drop=True)


# ---- curve aggregation --------------------------------------------------------------------
# two-sided 95% Student-t quantiles t_{0.975, df} for df = 1..30
