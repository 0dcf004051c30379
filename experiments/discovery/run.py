"""Discovery: search objectives on several tasks; test them on held-out tasks and a larger policy.

    python experiments/discovery/run.py            # full run (resumes from runs/discovery)
    python experiments/discovery/run.py --quick    # smoke run into runs/discovery-quick

1. Runs the ``discovery`` campaign (``search_spaces/discovery.yaml`` with the ``space_overrides``
   of ``config.yaml``; ``--population`` and ``--jobs`` as given) and re-evaluates its best
   candidates and baselines on fresh seeds. The Optuna study resumes.
2. Takes the ``top`` candidates by re-evaluated paired effect against the campaign's
   reference and trains each unchanged (objective and learning rate) next to every
   ``references`` objective, on the meta-test seeds: on every meta-train task (the space's),
   every held-out task, and the larger policy's tasks. Effects are paired differences over
   seeds (the same warm start, prompts and sampling streams) with t 95% CIs, Bonferroni-
   adjusted over the comparisons against each reference in the tables and figures.
Writes ``results.csv``, ``effects.csv`` (every candidate against every reference on every
target), ``campaign_trials.csv`` (every trial of the search: state, why it stopped, genes,
fitness per rung), ``effects_<reference>.png``, ``curves_<target>.png`` and the results block of
``README.md``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from grape_evo.analysis import figures
from grape_evo.analysis.diff import describe_diff
from grape_evo.analysis.formulas import formula_table, read_formulas
from grape_evo.analysis.frames import PARAM_PREFIX, trials_frame
from grape_evo.experiment import (
    RunPlan,
    RunResult,
    cell_table,
    execute,
    finals_frame,
    paired_effects,
)
from grape_evo.experiment.campaign import (
    Discovery,
    campaign_space,
    discovered,
    run_campaign,
    run_minutes,
)
from grape_evo.experiment.config import (
    ExperimentConfigError,
    TaskEntry,
    field,
    load_config,
    parse_args,
    preset_list,
    seeds_field,
    tasks_field,
)
from grape_evo.experiment.report import effects_figure, save_learning_curves, write_results_block
from grape_evo.experiment.tables import fmt_ci, fmt_effect, markdown
from grape_evo.objective import presets
from grape_evo.objective.expression.probe import drift_conditions
from grape_evo.policy import PolicyConfig
from grape_evo.search.campaign.ledger import retried_numbers
from grape_evo.search.records import TrialRecord
from grape_evo.search.space import SearchSpace

HERE = Path(__file__).parent
KINDS = ("meta-train", "held-out", "larger policy")


@dataclass(frozen=True)
class Target:
    """Where the discovered objectives are tested: a task (with its warm start) and a policy,
    on seeds; ``kind`` is one of `KINDS`."""

    kind: str
    entry: TaskEntry
    policy: PolicyConfig
    seeds: list[int]

    @property
    def label(self) -> str:
        return self.entry.label if self.policy.preset == "tiny" else f"{self.entry.label}_small"


def meta_train_entries(space: SearchSpace, labels: dict[str, TaskEntry]) -> dict[str, TaskEntry]:
    """The space's tasks as experiment tasks, with their own warm start (the budget's when they
    have none), labelled as in ``labels`` (``meta_train_labels`` of the config; a task it does
    not name is labelled by its folder name)."""
    named = {e.identity: e.label for e in labels.values()}
    entries = {}
    for ref in space.tasks:
        steps = ref.train_config(space.budget.train_config(seed=0)).warm_start_steps
        items = tuple(sorted((("name", ref.name), *ref.kwargs)))
        label = named.get(items, ref.slug)
        entries[label] = TaskEntry(label, items, {"warm_start_steps": steps})
    return entries


def read_config(path: Path, quick: bool) -> tuple[dict[str, Any], SearchSpace, list[Target]]:
    config = load_config(path, quick)
    space = campaign_space(config, path)
    config["top"] = field(config, "top", int, path)
    config["references"] = preset_list(field(config, "references", list, path), "references", path)
    config["train"] = field(config, "train", dict, path)
    seeds = seeds_field(config, "seeds", path)
    tiny = PolicyConfig(preset="tiny")
    labels = tasks_field(config, path, "meta_train_labels") if "meta_train_labels" in config else {}
    meta_train = meta_train_entries(space, labels).values()
    searched = {e.identity for e in meta_train}
    for entry in labels.values():
        if entry.overrides or entry.identity not in searched:
            raise ExperimentConfigError(
                f"{path}: meta_train_labels.{entry.label} must be '{{task: {{...}}}}' naming one "
                "of the space's tasks (its warm start is the space's)"
            )
    targets = [Target("meta-train", e, tiny, seeds) for e in meta_train]
    for entry in tasks_field(config, path, "held_out").values():
        if entry.identity in searched:
            raise ExperimentConfigError(f"{path}: held_out.{entry.label} is a meta-train task")
        targets.append(Target("held-out", entry, tiny, seeds))
    larger = field(config, "larger_policy", dict, path)
    policy = PolicyConfig(preset=field(larger, "policy", str, path))
    larger_seeds = seeds_field(larger, "seeds", path)
    for entry in tasks_field(larger, path, where="larger_policy.").values():
        targets.append(Target("larger policy", entry, policy, larger_seeds))
    return config, space, targets


def plans_of(
    config: dict[str, Any], path: Path, targets: Sequence[Target], objectives: Sequence[Discovery]
) -> list[RunPlan]:
    plans = []
    for target in targets:
        for _, spec, lr in objectives:
            for seed in target.seeds:
                train = target.entry.train(config["train"], path, seed=seed, lr=lr)
                plans.append(
                    RunPlan(
                        spec.name,
                        target.label,
                        spec,
                        train,
                        target.policy,
                        stage=target.kind.replace(" ", "_"),
                        task_ref=target.entry.ref,
                    )
                )
    return plans


def effects_table(finals: pd.DataFrame, references: Sequence[str]) -> pd.DataFrame:
    """Every discovered objective against every reference on every target, paired over
    seeds: ``low``/``high`` the t 95% CI of one comparison, ``low_adjusted``/``high_adjusted``
    Bonferroni-adjusted over the ``comparisons`` against that reference (objectives x
    targets), the family the tables' verdicts are drawn from."""
    frames = []
    for reference in references:
        discovered = finals[~finals["label"].isin(set(references) - {reference})]
        frame = paired_effects(discovered, reference, by=("target",))
        adjusted = paired_effects(discovered, reference, by=("target",), comparisons=len(frame))
        frame.insert(1, "reference", reference)
        frames.append(
            frame.assign(
                comparisons=len(frame),
                low_adjusted=adjusted["low"],
                high_adjusted=adjusted["high"],
            )
        )
    return pd.concat(frames, ignore_index=True)


def formula_lines(found: Sequence[Discovery], reference: str) -> list[str]:
    """Each discovered objective: what differs from the reference, its formulas against the
    nearest published forms, and LPO's drift conditions on its drift."""
    lines = []
    for row, spec, lr in found:
        changes = "; ".join(describe_diff(spec, presets.get(reference))) or f"as {reference}"
        regime = f"{spec.epochs} epoch(s) x {spec.minibatches} minibatch(es), staleness "
        regime += f"{spec.staleness}, group size {spec.group_size}"
        lines += [f"**{row['label']}** (lr {lr:.3g}; {regime}): {changes}", ""]
        readings = read_formulas(spec)
        lines += formula_table(readings)
        for f in (f for f in readings if f.kind == "drift" and spec.preference is None):
            c = drift_conditions(f.text)
            lines += [
                f"Drift conditions (LPO) of `{f.field}`: f >= 0 {_yes(c.nonnegative)}, "
                f"f(1, A) = 0 {_yes(c.zero_at_one)}, df/dr(1, A) = 0 {_yes(c.flat_at_one)}.",
                "",
            ]
    return lines


def _yes(flag: bool) -> str:
    return "holds" if flag else "fails"


def search_table(rows: list[dict[str, Any]], found: Sequence[Discovery]) -> pd.DataFrame:
    """The re-evaluation on the meta-train tasks: every row the campaign re-ran on fresh seeds
    (candidates picked for the meta-test marked), its reward and paired effect."""
    picked = {row["label"] for row, _, _ in found}
    table = []
    for r in rows:
        low, high = (_number(v) for v in r["reward_ci95"])
        if r["status"] != "ok":
            paired = r["status"]
        elif r.get("paired_effect") is None:
            paired = "reference"
        else:
            paired = fmt_effect(r["paired_effect"], r["ci_low"], r["ci_high"])
        table.append(
            {
                "objective": r["label"] + (" (meta-tested)" if r["label"] in picked else ""),
                "kind": "baseline" if r["baseline"] else "candidate",
                "reward in the search": f"{_number(r['search_reward']):.3f}",
                "fresh-seed reward": fmt_ci(_number(r["reward"]), low, high),
                f"- {r.get('reference')}, paired": paired,
            }
        )
    return pd.DataFrame(table)


def campaign_trials(study: optuna.Study, rungs: Sequence[int]) -> pd.DataFrame:
    """Every trial of the search (an interrupted trial that was retried gives way to its
    retry, ``retry_of``; a formula rejected by the cheap checks is a FAIL that says why): its
    state, why it stopped (pruned or failed), its reward (a pruned trial's: the value it was
    pruned at), its fitness at each of the ``rungs`` (seed counts) and its genes."""
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    fitness = [TrialRecord.of(t).rungs or {} for t in trials]
    frame = trials_frame(study).assign(
        retry_of=pd.array([t.system_attrs.get("failed_trial") for t in trials], dtype="Int64"),
        **{f"fitness_{rung}_seeds": [f.get(str(rung)) for f in fitness] for rung in rungs},
    )
    keep = ["number", "label", "retry_of", "state", "failure", "reward", "kl_to_ref"]
    keep += [f"fitness_{rung}_seeds" for rung in rungs]
    keep += [c for c in frame.columns if c.startswith(PARAM_PREFIX)]
    frame = frame.loc[~frame["number"].isin(retried), keep]
    return frame.rename(columns={"failure": "stopped"})


def _number(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def target_table(
    finals: pd.DataFrame, effects: pd.DataFrame, target: str, references: Sequence[str]
) -> pd.DataFrame:
    cells = cell_table(finals[finals["target"] == target], by=("label",))
    table = []
    for c in cells.sort_values("reward", ascending=False).itertuples():
        row = {
            "objective": c.label,
            "n ok": c.n,
            "reward": fmt_ci(c.reward, c.reward_low, c.reward_high),
            "KL to ref": fmt_ci(c.kl_to_ref, c.kl_to_ref_low, c.kl_to_ref_high),
        }
        for reference in references:
            match = effects[
                (effects["target"] == target)
                & (effects["reference"] == reference)
                & (effects["label"] == c.label)
            ]
            columns = ["effect", "low_adjusted", "high_adjusted"]
            row[f"- {reference}"] = "-" if match.empty else fmt_effect(*match[columns].iloc[0])
        table.append(row)
    return pd.DataFrame(table)


def results_text(
    space: SearchSpace,
    rows: list[dict[str, Any]],
    found: Sequence[Discovery],
    finals: pd.DataFrame,
    effects: pd.DataFrame,
    targets: Sequence[Target],
    config: dict[str, Any],
    minutes: tuple[float, float],
) -> str:
    reference = space.search.reference or config["references"][0]
    budget = space.budget
    lines = [
        f"Search: `{space.name}` on {', '.join(t.label for t in space.tasks)} "
        f"({space.policy.preset} policy), {space.search.trials} candidates + baselines "
        f"{', '.join(space.baselines)}, {budget.steps} steps, seeds by successive halving "
        f"{list(budget.rungs)}; the top {budget.top_k} and the baselines re-run on "
        f"{budget.reeval_seeds} fresh seeds. Meta-test: the top {config['top']} by paired "
        f"effect against {reference}, unchanged, next to {', '.join(config['references'])} "
        f"on each target's seeds ({config['train'].get('steps')} steps).",
        "",
        "### The discovered objectives",
        "",
        *formula_lines(found, reference),
        "### The search's re-evaluation (meta-train tasks, fresh seeds)",
        "",
        markdown(search_table(rows, found)),
        "",
    ]
    for kind in KINDS:
        lines += [f"### {kind.capitalize()}", ""]
        for target in (t for t in targets if t.kind == kind):
            part = finals[finals["target"] == target.label]
            lines += [
                f"**{target.label}**: {target.policy.preset} policy, "
                f"{target.entry.overrides.get('warm_start_steps')} warm-start steps (held-out "
                f"reward {part['initial_reward'].mean():.3f} at the start), seeds {target.seeds}",
                "",
                markdown(target_table(finals, effects, target.label, config["references"])),
                "",
                f"![{target.label}](curves_{target.label}.png)",
                "",
            ]
    lines += [f"![effects against {r}](effects_{r}.png)" for r in config["references"]]
    lines += [
        "",
        f"Compute: {minutes[0]:.1f} run-minutes in the campaign (search and re-evaluation), "
        f"{minutes[1]:.1f} in the meta-test.",
    ]
    return "\n".join(lines)


def save_figures(
    results: list[RunResult], effects: pd.DataFrame, found: Sequence[Discovery], out: Path,
    references: Sequence[str], targets: Sequence[Target],
) -> None:  # fmt: skip
    labels = [spec.name for _, spec, _ in found] + list(references)
    for target in targets:
        save_learning_curves(
            results, target.label, out / f"curves_{target.label}.png", labels, references,
            title=f"{target.label} ({target.kind}, {target.policy.preset} policy): "
            "held-out gold reward",
        )  # fmt: skip
    for reference in references:
        part = effects[effects["reference"] == reference]
        part = part.drop(columns=["low", "high"]).rename(
            columns={"target": "task", "low_adjusted": "low", "high_adjusted": "high"}
        )
        title = f"Discovered objectives - {reference}, Bonferroni over {len(part)}"
        fig = effects_figure(part, title, "held-out reward effect")
        figures.save(fig, out / f"effects_{reference}.png")


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], "runs/discovery")
    path = HERE / "config.yaml"
    try:
        config, space, targets = read_config(path, args.quick)
    except ExperimentConfigError as err:
        sys.exit(f"error: {err}")
    out = args.results or (args.out / "results" if args.quick else HERE)
    out.mkdir(parents=True, exist_ok=True)
    print(f"campaign: {space.name}, {space.search.trials} candidates + {space.baselines}")
    campaign, study, rows = run_campaign(
        space, args.out / "campaign", jobs=args.jobs, population=args.population
    )
    found = discovered(study, rows, config["top"], campaign.lr, by="paired_effect")
    if not found:
        sys.exit("error: the campaign has no re-evaluated candidate that finished ok")
    objectives = [
        *found,
        *(Discovery({}, presets.get(r), campaign.lr) for r in config["references"]),
    ]
    results, compute = execute(
        plans_of(config, path, targets, objectives),
        args.out / "meta-test",
        jobs=args.jobs,
        population=args.population,
        progress=not args.no_progress,
        description="meta-test",
    )
    finals = finals_frame(results).rename(columns={"task": "target"})
    kinds = {t.label: t.kind for t in targets}
    finals.insert(1, "kind", finals["target"].map(kinds))
    finals.to_csv(out / "results.csv", index=False)
    effects = effects_table(finals, config["references"])
    effects.insert(1, "kind", effects["target"].map(kinds))
    effects.to_csv(out / "effects.csv", index=False)
    campaign_trials(study, space.budget.rungs).to_csv(out / "campaign_trials.csv", index=False)
    save_figures(results, effects, found, out, config["references"], targets)
    minutes = (run_minutes(args.out / "campaign"), compute.run_seconds / 60)
    text = results_text(space, rows, found, finals, effects, targets, config, minutes)
    write_results_block(out / "README.md", text)
    print(compute.describe())
    print(f"results in {out}")


if __name__ == "__main__":
    main()
