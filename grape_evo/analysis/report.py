"""``grape report RUN_DIR``: a campaign folder -> ``RUN_DIR/report/report.md`` with figures.

Sections: learning curves of the top discovered objectives against the PPO / GRPO / DPO
baselines; final held-out reward on fresh seeds with t 95% CIs and paired effects on the
reference; reward vs KL with the
Pareto front; optimisation history; axis importances; each top objective's formula, YAML and
difference from the nearest baseline; data problems (run folders whose ``summary.json`` is
missing or corrupt, run files whose sha256 differs from the checksum stored with their trial).
``trials.csv`` holds one row per trial.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd

from grape_evo.analysis import figures as F
from grape_evo.analysis.candidates import (
    Candidate,
    baseline_specs,
    curve_baselines,
    source_trial,
    top_candidates,
)
from grape_evo.analysis.diff import fmt_value, nearest_baseline_diff
from grape_evo.analysis.formulas import formula_table, read_formulas
from grape_evo.analysis.frames import (
    RunRef,
    artifact_problems,
    curves_from_trials,
    discoveries_frame,
    find_run_folders,
    runs_frame,
    steps_frame,
    trials_frame,
)
from grape_evo.analysis.pareto import pareto_mask
from grape_evo.analysis.summaries import best_so_far, curve_summary, param_importances
from grape_evo.search.campaign import load_run_study
from grape_evo.search.fitness import GAIN_FLOOR

SECTIONS = (
    "Learning curves",
    "Final held-out scores",
    "Reward vs KL to reference",
    "Optimisation history",
    "Axis importance",
    "Top objectives",
    "Data problems",
)


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """Write the campaign report of ``run_dir`` into ``out`` (default ``RUN_DIR/report``).

    Returns the path of ``report.md``. Missing or corrupt run outputs are listed under "Data
    problems"; a figure that cannot be drawn is replaced by a note.
    """
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    study = load_run_study(run_dir)
    trials = trials_frame(study)
    trials.to_csv(out / "trials.csv", index=False)
    runs = runs_frame(run_dir, study)
    problems = [
        f"`{_rel(Path(p), run_dir)}`: {why}"
        for p, why in zip(runs["path"], runs["problem"], strict=True)
        if why
    ]
    checksums = artifact_problems(run_dir, study)
    problems += checksums
    checked = sum(isinstance(t.user_attrs.get("artifacts"), dict) for t in study.trials)
    try:
        disc = discoveries_frame(run_dir)
    except ValueError as err:
        problems.append(str(err))
        disc = None
    baselines = baseline_specs(study)
    top = top_candidates(study, trials, disc)

    lines: list[str] = [f"# Campaign report: {study.study_name}", ""]
    lines += _overview(study, trials, runs, disc, run_dir)
    lines += _section_curves(out, run_dir, study, top, baselines, disc)
    lines += _section_final(out, disc)
    lines += _section_pareto(out, trials)
    lines += _section_history(out, trials)
    lines += _section_importance(out, study)
    lines += _section_top(out, top, baselines)
    lines += ["## Data problems", ""]
    if problems:
        lines += [f"- {p}" for p in problems]
    else:
        lines.append(
            f"None: all {len(runs)} run folders read have a summary.json that parses "
            f"and a readable metrics.jsonl; the checksums of {checked} trials' run files match."
        )
    lines.append("")
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


# ---- sections -----------------------------------------------------------------------------
def _overview(study, trials, runs, disc, run_dir: Path) -> list[str]:
    states = trials["state"].value_counts().to_dict() if not trials.empty else {}
    directions = ", ".join(d.name.lower() for d in study.directions)
    budget = study.user_attrs.get("budget")
    lines = [
        f"Campaign folder: `{run_dir}`. Study `{study.study_name}`, directions: {directions} "
        f"({'reward' if len(study.directions) == 1 else 'reward, KL to reference'}).",
        "",
        f"Trials: {len(trials)} ("
        + ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items()))
        + f"); run folders read: {len(runs)}"
        + (f"; fresh-seed re-evaluation of {len(disc)} objectives." if disc is not None else ".")
        + " One row per trial in [trials.csv](trials.csv).",
        "",
    ]
    if budget:
        text = budget if isinstance(budget, str) else json.dumps(budget)
        lines += [f"Trial budget: {text}.", ""]
    floored = _floored_tasks(study)
    if floored:
        lines += [
            f"**Fitness caveat:** on {', '.join(floored)} the reference gained less than "
            f"{GAIN_FLOOR} over its warm start in some trial's runs, so fitness there is the raw "
            f"reward difference divided by that floor (-0.04 reads -2.0): the budget is too "
            "small for the reference to learn. Read the raw differences (`fitness.tasks` in "
            "the trials' records) and the fresh-seed effects below.",
            "",
        ]
    return lines


def _floored_tasks(study) -> list[str]:
    """Tasks on which some trial's fitness divided by the gain floor, not the reference's gain."""
    tasks: set[str] = set()
    for t in study.get_trials(deepcopy=False):
        fitness = t.user_attrs.get("fitness")
        for part in (fitness or {}).get("tasks") or []:
            if isinstance(part, dict) and part.get("gain", math.inf) <= GAIN_FLOOR:
                tasks.add(str(part.get("task")))
    return sorted(tasks)


def _section_curves(out, run_dir, study, top, baselines, disc) -> list[str]:
    lines = ["## Learning curves", ""]
    base = curve_baselines(study)
    base_labels = [b for b, _ in base]
    labels = [c.label for c in top] + base_labels
    refs = find_run_folders(run_dir, study)
    reeval = [r for r in refs if r.source == "reeval" and r.label in labels]
    source = "fresh-seed re-evaluation runs (`reeval/`)"
    steps = steps_frame(reeval) if reeval else pd.DataFrame()
    if steps.empty or "eval_reward" not in steps:
        numbers = {c.trial: c.label for c in top if c.trial is not None}
        numbers.update({n: label for label, n in base})
        wanted: list[RunRef] = []
        for number, label in numbers.items():
            src = source_trial(study, number)
            wanted += [
                RunRef(r.source, label, number, r.task, r.seed, r.path)
                for r in refs
                if r.source == "trial" and r.trial == src
            ]
        steps = steps_frame(wanted)
        source = "search runs (`trials/`)"
        if steps.empty or "eval_reward" not in steps:
            steps = curves_from_trials(study, list(numbers))
            steps["label"] = [
                numbers.get(n, lab) for n, lab in zip(steps["trial"], steps["label"], strict=True)
            ]
            source = "curves stored with the trials"
    curves = curve_summary(steps) if not steps.empty else curve_summary(pd.DataFrame())
    if curves.empty:
        return [*lines, "No held-out reward curves were found for these objectives.", ""]
    lines += [
        f"Held-out reward against training step for the top {len(top)} discovered objectives "
        f"and the baselines {', '.join(base_labels) or '(none)'}; from the {source}. Lines: "
        "mean over seeds; bands: 95% CI of the mean, mean ± t(0.975, n-1)·s/√n (zero width "
        "with one seed). Step 0 is the warm-start policy before training.",
        "",
    ]
    for task in sorted(curves["task"].dropna().unique()):
        part = curves[curves["task"] == task]
        name = f"curves_{_slug(str(task))}.png"
        lines += _figure(
            out,
            name,
            lambda p=part, t=task: F.learning_curves_figure(
                p, labels, base_labels, title=f"Learning curves: {t}"
            ),
            f"learning curves on {task}",
        )
    return lines


def _section_final(out, disc) -> list[str]:
    lines = ["## Final held-out scores", ""]
    if disc is None or disc.empty:
        return [*lines, "No `discoveries.json` (the fresh-seed re-evaluation has not run).", ""]
    reference = next((r for r in disc["reference"] if isinstance(r, str)), None)
    lines += [
        "Fresh-seed re-evaluation (`discoveries.json`): mean final held-out reward over "
        "(task, seed) and its t 95% CI of the mean"
        + (
            f"; the paired effect on {reference} (the mean per-seed difference on the same "
            "seeds: warm start, prompts and sampling streams) with its t-interval, "
            "Bonferroni-corrected over the objectives compared, and the verdict it supports "
            "(better / worse when the interval excludes 0, else unresolved)."
            if reference
            else "."
        ),
        "",
    ]
    lines += _figure(out, "final_scores.png", lambda: F.final_scores_figure(disc), "final scores")
    lines += [
        "| objective | kind | reward | 95% CI | paired effect | CI (Bonferroni) | verdict | "
        "seeds | search score | KL to ref | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, r in disc.iterrows():
        kind = "baseline" if r["baseline"] else "discovered"
        if r["label"] == reference:
            kind = "reference"
        lines.append(
            f"| {r['label']} | {kind} | {_f(r['reward'])} | [{_f(r['ci_low'])}, "
            f"{_f(r['ci_high'])}] | {_f(r['paired_effect'])} | [{_f(r['effect_low'])}, "
            f"{_f(r['effect_high'])}] | {r['verdict'] or '-'} | {r['n']} | "
            f"{_f(r['search_reward'])} | {_f(r['kl_to_ref'])} | {r['status']} |"
        )
    return [*lines, ""]


def _pareto_points(trials: pd.DataFrame) -> pd.DataFrame:
    done = trials[trials["state"] == "COMPLETE"].sort_values("number")
    done = done[done["reward"].notna() & done["kl_to_ref"].notna()]
    return done.drop_duplicates("key")[
        ["label", "number", "key", "reward", "kl_to_ref", "baseline"]
    ].reset_index(drop=True)


def _section_pareto(out, trials) -> list[str]:
    lines = ["## Reward vs KL to reference", ""]
    points = _pareto_points(trials)
    if points.empty:
        return [*lines, "No completed trials with both a reward and a KL.", ""]
    lines += [
        "Search results of the completed trials (one point per distinct objective key; "
        "mean final held-out reward and KL over the search seeds). The Pareto front "
        "maximises reward and minimises KL.",
        "",
    ]
    lines += _figure(out, "pareto.png", lambda: F.pareto_figure(points), "reward vs KL")
    front = points[pareto_mask(points["reward"], points["kl_to_ref"])]
    front = front.sort_values("kl_to_ref")
    lines.append(
        "On the front: "
        + ", ".join(
            f"{r['label']} (reward {_f(r['reward'])}, KL {_f(r['kl_to_ref'])})"
            for _, r in front.iterrows()
        )
        + "."
    )
    return [*lines, ""]


def _section_history(out, trials) -> list[str]:
    lines = ["## Optimisation history", ""]
    if trials.empty:
        return [*lines, "The study has no trials.", ""]
    counts = trials["state"].value_counts()
    lines += [
        f"Complete: {int(counts.get('COMPLETE', 0))}, pruned: {int(counts.get('PRUNED', 0))}, "
        f"failed: {int(counts.get('FAIL', 0))}"
        + "".join(
            f", {s.lower()}: {int(n)}"
            for s, n in counts.items()
            if s not in ("COMPLETE", "PRUNED", "FAIL")
        )
        + ". Reused results (same objective key): "
        + str(int(trials["reused_from"].notna().sum()))
        + ".",
        "",
    ]
    best = best_so_far(trials)
    lines += _figure(
        out, "history.png", lambda: F.history_figure(trials, best), "optimisation history"
    )
    failed = trials[trials["state"] == "FAIL"]
    if not failed.empty:
        lines += ["Failures:", ""]
        lines += [
            f"- trial {int(r['number'])}: {r['failure'] or '(no reason recorded)'}"
            for _, r in failed.head(20).iterrows()
        ]
        if len(failed) > 20:
            lines.append(f"- ... and {len(failed) - 20} more (see trials.csv)")
        lines.append("")
    return lines


def _section_importance(out, study) -> list[str]:
    lines = ["## Axis importance", ""]
    importances, note = param_importances(study)
    if importances is None:
        return [*lines, f"Skipped: {note}.", ""]
    method = note.split(" ", 1)[0]
    lines += [f"{note[0].upper()}{note[1:]}.", ""]
    lines += _figure(
        out,
        "importance.png",
        lambda: F.importance_figure(importances, method=method),
        "axis importance",
    )
    lines += ["| axis | importance |", "|---|---|"]
    lines += [f"| `{k}` | {v:.3f} |" for k, v in importances.items()]
    return [*lines, ""]


def _section_top(out, top: list[Candidate], baselines) -> list[str]:
    lines = ["## Top objectives", ""]
    if not top:
        return [*lines, "No completed candidate trials.", ""]
    for rank, c in enumerate(top, 1):
        ci = f", 95% CI [{_f(c.ci[0])}, {_f(c.ci[1])}]" if c.ci else ""
        lines += [f"### {rank}. {c.label}: reward {_f(c.reward)}{ci}", ""]
        if c.spec is None:
            lines += ["(the trial stores no valid objective spec)", ""]
            continue
        name, text = nearest_baseline_diff(c.spec, baselines)
        extra = "".join(f" + {k} {fmt_value(v)}" for k, v in sorted(c.overrides.items()))
        lines += [f"Nearest baseline: **{name}**: `{text}{extra}`", ""]
        try:
            latex = c.spec.latex()
        except Exception as err:
            latex = c.formula
            lines += [f"(formula from the trial record; sympy failed: {err})", ""]
        if latex:
            slug = _slug(c.label)
            shown = round_latex_numbers(latex)
            drawn = _figure(
                out,
                f"formula_{slug}.png",
                lambda tex=shown: F.formula_figure(tex),
                f"formula of {c.label}",
                note_failure=False,
            )
            if drawn:
                lines += drawn
                if shown != latex:
                    lines += ["(numbers rounded to 4 significant digits in the image)", ""]
            else:
                lines += ["mathtext could not render the formula; LaTeX source:", ""]
                lines += ["```latex", latex, "```", ""]
        lines += formula_table(read_formulas(c.spec))
        lines += ["```yaml", c.spec.to_yaml().rstrip(), "```", ""]
    return lines


# ---- helpers ------------------------------------------------------------------------------
def _figure(out: Path, name: str, make, alt: str, note_failure: bool = True) -> list[str]:
    """Draw and save a figure; markdown lines for it, or a note (``[]`` if not noted)."""
    try:
        fig = make()
        F.save(fig, out / name)
    except Exception as err:
        (out / name).unlink(missing_ok=True)
        if not note_failure:
            return []
        return [f"(figure `{name}` could not be drawn: {type(err).__name__}: {err})", ""]
    return [f"![{alt}]({name})", ""]


def round_latex_numbers(latex: str, digits: int = 4) -> str:
    """Long decimals (6+ digits after the point) rounded to ``digits`` significant digits."""
    return re.sub(r"\d+\.\d{6,}", lambda m: f"{float(m.group()):.{digits}g}", latex)


def _f(x: Any) -> str:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "-"
    return "-" if not math.isfinite(x) else f"{x:.4g}"


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in text)


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
