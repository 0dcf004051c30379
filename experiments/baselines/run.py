"""The baseline table: every preset on each task, the same budget, 5 seeds, tuned learning rates.

    python experiments/baselines/run.py            # full run (resumes from runs/baselines)
    python experiments/baselines/run.py --quick    # smoke run into runs/baselines-quick

Stage 1 trains every (preset, learning rate) of the grid on the tuning task and seeds and keeps,
per preset, the learning rate with the best mean final held-out reward. Stage 2 trains
each (task, preset) with the preset's learning rate on the evaluation seeds. Writes ``results.csv``,
``tuning.csv``, one learning-curve PNG per task and the results block of ``README.md``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd

from grape_evo.experiment import RunPlan, cell_table, execute, finals_frame, paired_effects
from grape_evo.experiment.config import (
    ExperimentConfigError,
    field,
    load_config,
    parse_args,
    preset_list,
    seeds_field,
    tasks_field,
)
from grape_evo.experiment.report import save_learning_curves, write_results_block
from grape_evo.experiment.tables import fmt_ci, fmt_effect, markdown
from grape_evo.objective import presets

HERE = Path(__file__).parent


def plans_for(config: dict, path: Path, stage: str, seeds: list[int], lrs: dict) -> list[RunPlan]:
    """One plan per (task, preset, seed) at ``lrs[(task, preset)]`` (a list: one plan each)."""
    plans = []
    for task, entry in config["tasks"].items():
        for name in config["presets"][task]:
            for lr in lrs[(task, name)]:
                for seed in seeds:
                    train = entry.train(config["train"], path, seed=seed, lr=lr)
                    plans.append(
                        RunPlan(
                            name, task, presets.get(name), train, stage=stage, task_ref=entry.ref
                        )
                    )
    return plans


def read_config(path: Path, quick: bool) -> dict:
    config = load_config(path, quick)
    config["tasks"] = tasks_field(config, path)
    chosen = preset_list(config.get("presets", "all"), "presets", path)
    exclude = field(config, "exclude", dict, path) if "exclude" in config else {}
    config["presets"] = {
        task: [n for n in chosen if n not in preset_list(exclude.get(task, []), "exclude", path)]
        for task in config["tasks"]
    }
    config["train"] = field(config, "train", dict, path)
    config["seeds"] = seeds_field(config, "seeds", path)
    tuning = field(config, "tuning", dict, path)
    config["tuning_seeds"] = seeds_field(tuning, "seeds", path)
    config["tuning_task"] = field(tuning, "task", str, path)
    if config["tuning_task"] not in config["tasks"]:
        raise ExperimentConfigError(f"{path}: tuning.task must be one of tasks")
    config["lrs"] = field(tuning, "lrs", list, path)
    config["untuned"] = field(config, "untuned", dict, path) if "untuned" in config else {}
    preset_list(list(config["untuned"]), "untuned", path)
    config["reference"] = config.get("reference", "grpo")
    return config


def best_lrs(tuning: pd.DataFrame) -> pd.DataFrame:
    """Per (task, label): the lr with the highest mean final reward (diverged counts as -inf)."""
    scored = tuning.assign(score=tuning["reward"].where(tuning["status"] == "ok", -math.inf))
    means = scored.groupby(["task", "label", "lr"], sort=False)["score"].mean().reset_index()
    best = means.loc[means.groupby(["task", "label"], sort=False)["score"].idxmax()]
    return best.rename(columns={"score": "tuning_reward"})


def results_text(cells: pd.DataFrame, effects: pd.DataFrame, config: dict, out: Path) -> str:
    reference = config["reference"]
    lines = []
    for task in config["tasks"]:
        part = cells[cells["task"] == task].sort_values("reward", ascending=False)
        eff = effects[effects["task"] == task].set_index("label")
        rows = []
        for c in part.itertuples():
            if c.label == reference:
                diff = "reference"
            elif c.label in eff.index:
                e = eff.loc[c.label]
                diff = fmt_effect(e.effect, e.low, e.high)
            else:
                diff = "n/a"
            rows.append(
                {
                    "preset": c.label,
                    "lr": f"{c.lr:g}",
                    "n ok": f"{c.n}" + (f" ({c.not_ok} diverged/failed)" if c.not_ok else ""),
                    "reward": fmt_ci(c.reward, c.reward_low, c.reward_high),
                    "accuracy": fmt_ci(c.accuracy, c.accuracy_low, c.accuracy_high),
                    "KL to ref (nats/seq)": fmt_ci(c.kl_to_ref, c.kl_to_ref_low, c.kl_to_ref_high),
                    f"reward - {reference}, paired": diff,
                }
            )
        start = part["initial_reward"].mean()
        lines += [
            f"### {task}",
            "",
            f"Held-out reward at the warm start (mean over seeds): {start:.3f}. "
            f"Sorted by final reward.",
            "",
            markdown(pd.DataFrame(rows)),
            "",
            f"![{task} learning curves](curves_{task}.png)",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], "runs/baselines")
    path = HERE / "config.yaml"
    try:
        config = read_config(path, args.quick)
        tuning_task = config["tuning_task"]
        grid = {
            (task, name): config["lrs"]
            if task == tuning_task and name not in config["untuned"]
            else []
            for task, name in _cells(config)
        }
        tune_plans = plans_for(config, path, "tune", config["tuning_seeds"], grid)
    except ExperimentConfigError as err:
        sys.exit(f"error: {err}")
    out = args.results or (args.out / "results" if args.quick else HERE)
    out.mkdir(parents=True, exist_ok=True)

    tune_results, tune_compute = execute(
        tune_plans,
        args.out,
        jobs=args.jobs,
        population=args.population,
        progress=not args.no_progress,
        description="tuning",
    )
    tuning = finals_frame(tune_results)
    chosen = best_lrs(tuning)
    chosen.to_csv(out / "tuning.csv", index=False)
    tuned = {r.label: r.lr for r in chosen.itertuples()}
    lrs = {
        (task, name): [tuned.get(name) or config["untuned"][name]] for task, name in _cells(config)
    }
    eval_plans = plans_for(config, path, "eval", config["seeds"], lrs)
    results, compute = execute(
        eval_plans,
        args.out,
        jobs=args.jobs,
        population=args.population,
        progress=not args.no_progress,
        description="eval",
    )

    finals = finals_frame(results)
    finals.to_csv(out / "results.csv", index=False)
    cells = cell_table(finals, by=("task", "label", "lr"))
    effects = paired_effects(finals, config["reference"])
    for task, names in config["presets"].items():
        save_learning_curves(
            results, task, out / f"curves_{task}.png", names, highlight=[config["reference"]]
        )
    text = results_text(cells, effects, config, out)
    lrs_text = ", ".join(f"{lr:g}" for lr in config["lrs"])
    budget = (
        f"Budget per run: {config['train']['steps']} steps x {config['train']['batch_size']} "
        f"completions (or pairs x 2, or demonstrations), tiny policy, CPU. Evaluation seeds "
        f"{config['seeds']}; learning rate chosen per preset from [{lrs_text}] on "
        f"{config['tuning_task']} with tuning seeds {config['tuning_seeds']} by mean final "
        f"reward (`tuning.csv`), and used on every task; not tuned: "
        f"{config['untuned'] or 'none'}. Reward, "
        "accuracy and KL: mean over seeds [bootstrap 95% CI]; the last column is the mean "
        "paired difference to the reference on the same seeds (same warm start)."
    )
    total = tune_compute.run_seconds + compute.run_seconds
    footer = (
        f"Compute: {total / 60:.1f} run-minutes ({len(tune_plans)} tuning runs, "
        f"{len(eval_plans)} evaluation runs)."
    )
    write_results_block(out / "README.md", "\n\n".join([budget, text, footer]))
    print(f"tuning {tune_compute.describe()}")
    print(f"evaluation {compute.describe()}")
    print(f"total compute: {total / 60:.1f} run-minutes; results in {out}")


def _cells(config: dict) -> list[tuple[str, str]]:
    return [(task, name) for task in config["tasks"] for name in config["presets"][task]]


if __name__ == "__main__":
    main()
