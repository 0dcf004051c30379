"""GRPO component ablation: switch off or swap one component at a time, paired over seeds.

    python experiments/grpo_ablation/run.py            # full run (resumes from runs/grpo_ablation)
    python experiments/grpo_ablation/run.py --quick    # smoke run into runs/grpo_ablation-quick

Every variant of ``config.yaml`` and the base objective train on the same seeds (the same warm
starts); the effect of a variant is the mean over seeds of its final held-out reward minus its
reference's (the base, or the variant named in ``against``), with a bootstrap 95% CI. Writes
``results.csv``, ``effects.csv``, ``effects.png`` and the results block of ``README.md``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pandas as pd

from grape_evo.analysis import figures
from grape_evo.experiment import RunPlan, cell_table, execute, finals_frame, paired_effects
from grape_evo.experiment.config import (
    ExperimentConfigError,
    field,
    load_config,
    parse_args,
    seeds_field,
    tasks_field,
)
from grape_evo.experiment.report import (
    effects_figure,
    save_learning_curves,
    write_results_block,
)
from grape_evo.experiment.tables import SIGNS, agreement, fmt_ci, markdown, verdict
from grape_evo.objective import ObjectiveSpec, presets

HERE = Path(__file__).parent


def variant_spec(
    base: ObjectiveSpec, name: str, change: dict[str, Any], path: Path
) -> ObjectiveSpec:
    """``base`` with the top-level fields in ``change`` replaced, named ``name``."""
    data = {**base.to_dict(), **change, "name": name}
    try:
        return ObjectiveSpec.from_dict(data)
    except ValueError as err:
        raise ExperimentConfigError(f"{path}: variants.{name}.change: {err}") from err


def read_config(path: Path, quick: bool) -> dict[str, Any]:
    config = load_config(path, quick)
    config["tasks"] = tasks_field(config, path)
    base_name = field(config, "base", str, path)
    if base_name not in presets.names():
        raise ExperimentConfigError(f"{path}: base: unknown preset {base_name!r}")
    base = presets.get(base_name)
    config["specs"] = {base_name: base}
    config["variants"] = field(config, "variants", dict, path)
    for name, variant in config["variants"].items():
        if not isinstance(variant, dict):
            raise ExperimentConfigError(f"{path}: variants.{name} must be a mapping")
        change = field(variant, "change", dict, path)
        if variant.get("sign") not in SIGNS:
            raise ExperimentConfigError(
                f"{path}: variants.{name}.sign must be one of {sorted(SIGNS)}"
            )
        against = variant.setdefault("against", base_name)
        if against != base_name and against not in config["variants"]:
            raise ExperimentConfigError(f"{path}: variants.{name}.against: unknown {against!r}")
        config["specs"][name] = variant_spec(base, name, change, path)
    config["base"] = base_name
    config["train"] = field(config, "train", dict, path)
    config["seeds"] = seeds_field(config, "seeds", path)
    return config


def effects_table(finals: pd.DataFrame, config: dict[str, Any]) -> pd.DataFrame:
    """Paired reward and KL effects of every variant against its reference, per task."""
    rows = []
    for name, variant in config["variants"].items():
        pair = finals[finals["label"].isin([name, variant["against"]])]
        reward = paired_effects(pair, variant["against"], "reward")
        kl = paired_effects(pair, variant["against"], "kl_to_ref").set_index("task")
        for r in reward.itertuples():
            rows.append(
                {
                    "task": r.task,
                    "label": name,
                    "against": variant["against"],
                    "n": r.n,
                    "effect": r.effect,
                    "low": r.low,
                    "high": r.high,
                    "wins": r.wins,
                    "kl_effect": kl.loc[r.task, "effect"],
                    "kl_low": kl.loc[r.task, "low"],
                    "kl_high": kl.loc[r.task, "high"],
                    "expected": variant["expected"],
                    "sign": variant["sign"],
                    "agrees": agreement(variant["sign"], r.low, r.high),
                }
            )
    return pd.DataFrame(rows)


def results_text(cells: pd.DataFrame, effects: pd.DataFrame, config: dict[str, Any]) -> str:
    lines = []
    for task in config["tasks"]:
        part = effects[effects["task"] == task]
        rows = [
            {
                "variant": f"{e.label} vs {e.against}",
                "pairs": e.n,
                "reward effect": fmt_ci(e.effect, e.low, e.high, signed=True),
                "verdict": verdict(e.low, e.high),
                "seeds better": f"{e.wins}/{e.n}",
                "KL effect (nats/seq)": fmt_ci(e.kl_effect, e.kl_low, e.kl_high, signed=True),
                "published direction": e.expected,
                "published vs ours": e.agrees,
            }
            for e in part.itertuples()
        ]
        base = cells[(cells["task"] == task) & (cells["label"] == config["base"])].iloc[0]
        lines += [
            f"### {task}",
            "",
            f"{config['base']} (reference): final reward "
            f"{fmt_ci(base.reward, base.reward_low, base.reward_high)}, from "
            f"{base.initial_reward:.3f} at the warm start; KL to the reference "
            f"{fmt_ci(base.kl_to_ref, base.kl_to_ref_low, base.kl_to_ref_high)}.",
            "",
            markdown(pd.DataFrame(rows)),
            "",
            f"![{task} learning curves](curves_{task}.png)",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], "runs/grpo_ablation")
    path = HERE / "config.yaml"
    try:
        config = read_config(path, args.quick)
        plans = [
            RunPlan(
                name,
                task,
                spec,
                entry.train(config["train"], path, seed=seed),
                task_ref=entry.ref,
            )
            for task, entry in config["tasks"].items()
            for name, spec in config["specs"].items()
            for seed in config["seeds"]
        ]
    except ExperimentConfigError as err:
        sys.exit(f"error: {err}")
    out = args.results or (args.out / "results" if args.quick else HERE)
    out.mkdir(parents=True, exist_ok=True)
    results, compute = execute(
        plans,
        args.out,
        jobs=args.jobs,
        population=args.population,
        progress=not args.no_progress,
        description="ablation",
    )
    finals = finals_frame(results)
    finals.to_csv(out / "results.csv", index=False)
    cells = cell_table(finals)
    effects = effects_table(finals, config)
    effects.to_csv(out / "effects.csv", index=False)
    figures.save(
        effects_figure(effects, "GRPO ablation: effect on final held-out reward", "reward effect"),
        out / "effects.png",
    )
    for task in config["tasks"]:
        save_learning_curves(
            results, task, out / f"curves_{task}.png", list(config["specs"]), [config["base"]]
        )
    budget = (
        f"Budget per run: {config['train']['steps']} steps x {config['train']['batch_size']} "
        f"completions, lr {config['train'].get('lr', 1e-4):g} for every variant, tiny policy, "
        f"CPU, seeds {config['seeds']}. Effect = mean over seeds of (variant - reference) final "
        "held-out reward [bootstrap 95% CI]. 'published vs ours' compares the CI with the "
        "published direction: confirmed (the CI is on the expected side; for 'no loss': "
        "not below 0), contradicted (clearly on the other side) or inconclusive (the CI spans 0)."
    )
    footer = f"Compute: {compute.run_seconds / 60:.1f} run-minutes ({len(plans)} runs)."
    write_results_block(
        out / "README.md",
        "\n\n".join(
            [budget, "![effects](effects.png)", results_text(cells, effects, config), footer]
        ),
    )
    print(compute.describe())
    print(f"total compute: {compute.run_seconds / 60:.1f} run-minutes; results in {out}")


if __name__ == "__main__":
    main()
