"""Transfer: do objectives discovered on one task still beat GRPO on other tasks and policies?

    python experiments/transfer/run.py            # full run (resumes from runs/transfer)
    python experiments/transfer/run.py --quick    # smoke run into runs/transfer-quick

1. Runs the ``grpo_family`` campaign (with ``space_overrides`` from ``config.yaml``) on its
   task, and re-evaluates its best candidates and baselines on fresh seeds (``grape evolve``'s
   two phases; the Optuna study resumes).
2. Takes the ``top`` candidates by re-evaluated reward and trains each unchanged (objective and
   learning rate) on every target of ``config.yaml`` next to the reference (GRPO), on the same
   seeds. Effects are paired differences to the reference with t 95% CIs.
Writes ``results.csv``, ``effects.csv``, ``effects.png`` and the results block of ``README.md``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from grape_evo.analysis import figures
from grape_evo.analysis.diff import describe_diff
from grape_evo.analysis.stats import t_interval
from grape_evo.experiment import RunPlan, execute, finals_frame, paired_effects
from grape_evo.experiment.campaign import campaign_space, discovered, run_campaign, run_minutes
from grape_evo.experiment.config import (
    ExperimentConfigError,
    field,
    load_config,
    parse_args,
    seeds_field,
    train_config,
)
from grape_evo.experiment.report import effects_figure, write_results_block
from grape_evo.experiment.tables import cell_table, fmt_ci, fmt_effect, markdown
from grape_evo.objective import presets
from grape_evo.policy import PolicyConfig

HERE = Path(__file__).parent


def source_table(rows: list[dict[str, Any]], chosen: list, reference: str) -> pd.DataFrame:
    """The re-evaluation on the search task: reward and paired difference to the reference."""
    ref = next((r for r in rows if r["label"] == reference), None)
    table = []
    for r, _, lr in chosen:
        diff = "n/a"
        if ref is not None:
            pairs = [a - b for a, b in zip(r["rewards"], ref["rewards"], strict=True)]
            _, low, high, _ = t_interval(pairs)
            mean = sum(pairs) / len(pairs) if pairs else math.nan
            diff = fmt_effect(mean, low, high)
        low, high = r["reward_ci95"]
        table.append(
            {
                "objective": r["label"],
                "lr": f"{lr:g}",
                "search reward": f"{r['search_reward']:.3f}",
                "re-evaluated reward": fmt_ci(r["reward"], low, high),
                f"- {reference}, paired": diff,
            }
        )
    if ref is not None:
        low, high = ref["reward_ci95"]
        table.append(
            {
                "objective": reference,
                "lr": "baseline",
                "search reward": f"{ref['search_reward']:.3f}",
                "re-evaluated reward": fmt_ci(ref["reward"], low, high),
                f"- {reference}, paired": "reference",
            }
        )
    return pd.DataFrame(table)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], "runs/transfer")
    path = HERE / "config.yaml"
    try:
        config = load_config(path, args.quick)
        space = campaign_space(config, path)
        top = field(config, "top", int, path)
        reference = field(config, "reference", str, path)
        reference_lr = float(config.get("reference_lr", space.budget.lr))
        targets = field(config, "targets", dict, path)
        base_train = field(config, "train", dict, path)
        for name, target in targets.items():
            seeds_field(target, "seeds", path)
            if field(target, "policy", str, path) not in ("tiny", "small"):
                raise ExperimentConfigError(f"{path}: targets.{name}.policy: tiny or small")
    except ExperimentConfigError as err:
        sys.exit(f"error: {err}")
    out = args.results or (args.out / "results" if args.quick else HERE)
    out.mkdir(parents=True, exist_ok=True)

    print(f"campaign: {space.name}, {space.search.trials} candidates + baselines {space.baselines}")
    campaign, study, rows = run_campaign(space, args.out / "campaign")
    chosen = discovered(study, rows, top, campaign.lr)
    if not chosen:
        sys.exit("error: the campaign has no re-evaluated candidate that finished ok")
    objectives = [(spec.name, spec, lr) for _, spec, lr in chosen]
    objectives.append((reference, presets.get(reference), reference_lr))
    plans = []
    for name, target in targets.items():
        for label, spec, lr in objectives:
            for seed in target["seeds"]:
                train = train_config(
                    base_train,
                    path,
                    f"targets.{name}",
                    seed=seed,
                    lr=lr,
                    warm_start_steps=target["warm_start_steps"],
                )
                policy = PolicyConfig(preset=target["policy"])
                plans.append(RunPlan(label, target["task"], spec, train, policy, stage=name))
    results, compute = execute(
        plans,
        args.out,
        jobs=args.jobs,
        population=args.population,
        progress=not args.no_progress,
        description="transfer",
    )
    finals = finals_frame(results)
    stage = {id(r.plan): r.plan.stage for r in results}
    finals["target"] = [stage[id(r.plan)] for r in results]
    finals.to_csv(out / "results.csv", index=False)
    effects = paired_effects(finals, reference, by=("target",))
    effects.to_csv(out / "effects.csv", index=False)
    forest = effects.rename(columns={"target": "task"})
    figures.save(
        effects_figure(forest, f"Transfer: discovered objectives vs {reference}", "reward effect"),
        out / "effects.png",
    )
    write_results_block(
        out / "README.md",
        results_text(space, rows, chosen, finals, effects, targets, reference, compute),
    )
    campaign_minutes = run_minutes(args.out / "campaign")
    print(compute.describe())
    print(
        f"total compute: {compute.run_seconds / 60:.1f} run-minutes of transfer runs "
        f"+ {campaign_minutes:.1f} min of campaign trials; results in {out}"
    )


def results_text(space, rows, chosen, finals, effects, targets, reference, compute) -> str:
    base = presets.get(reference)
    lines = [
        f"Search: `{space.name}` on {', '.join(t.name for t in space.tasks)} "
        f"({space.policy.preset} policy), {space.search.trials} candidates, "
        f"{space.budget.steps} steps x {space.budget.seeds} seeds each; re-evaluated on "
        f"{space.budget.reeval_seeds} fresh seeds.",
        "",
        "### The discovered objectives",
        "",
    ]
    for r, spec, lr in chosen:
        changes = "; ".join(describe_diff(spec, base)) or f"same as {reference}"
        lines += [f"- **{r['label']}** (lr {lr:g}): {changes}", f"  `{spec.to_sympy()}`"]
    lines += [
        "",
        "### On the search task, fresh seeds",
        "",
        markdown(source_table(rows, chosen, reference)),
        "",
        "### Transferred",
        "",
        "![effects](effects.png)",
        "",
    ]
    cells = cell_table(finals, by=("target", "label", "lr"))
    for name, target in targets.items():
        eff = effects[effects["target"] == name].set_index("label")
        table = []
        for c in cells[cells["target"] == name].sort_values("reward", ascending=False).itertuples():
            if c.label in eff.index:
                e = eff.loc[c.label]
                diff = fmt_effect(e.effect, e.low, e.high)
            else:
                diff = "reference"
            table.append(
                {
                    "objective": c.label,
                    "lr": f"{c.lr:g}",
                    "n ok": c.n,
                    "reward": fmt_ci(c.reward, c.reward_low, c.reward_high),
                    "KL to ref": fmt_ci(c.kl_to_ref, c.kl_to_ref_low, c.kl_to_ref_high),
                    f"- {reference}, paired": diff,
                }
            )
        start = finals.loc[finals["target"] == name, "initial_reward"].mean()
        lines += [
            f"**{name}**: task {target['task']}, {target['policy']} policy, "
            f"{target['warm_start_steps']} warm-start steps (held-out reward {start:.3f} at the "
            f"start), seeds {target['seeds']}",
            "",
            markdown(pd.DataFrame(table)),
            "",
        ]
    lines.append(f"Compute: {compute.run_seconds / 60:.1f} run-minutes of transfer runs.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
