"""The regime experiment: which tasks and regimes let published objectives differ.

    python experiments/regime/run.py            # full run (resumes from runs/regime)
    python experiments/regime/run.py --quick    # smoke run into runs/regime-quick

Every objective of ``config.yaml`` trains on every task in every regime on the same seeds (the
objectives of one (task, regime, seed) in one lockstep batch). For every pair of objectives the
effect is the mean over seeds of the paired difference of final held-out reward (the expected
reward under sampling on the task's fixed evaluation set), with a t 95% CI. An A/A pair (one
objective against itself on other seeds) measures the noise floor. Writes ``separation.csv``,
``aa.csv``, ``regime_effects.csv`` (each regime against the first, per objective),
``results.csv``, ``separation.png``, learning curves and the results block of
``README.md``; the README says which tasks are admitted for search.
"""

from __future__ import annotations

import itertools
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from grape_evo.analysis import figures
from grape_evo.analysis.stats import Interval, paired_interval, t_interval, verdict
from grape_evo.experiment import RunPlan, RunResult, execute, finals_frame
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
from grape_evo.experiment.tables import fmt_ci, markdown
from grape_evo.objective import ObjectiveSpec, presets

HERE = Path(__file__).parent
REGIME_FIELDS = ("epochs", "minibatches", "staleness")
TRAIN_WINDOW = 10
COLUMNS = ["task", "regime", "objective_a", "objective_b", "n_seeds", "effect", "ci_low", "ci_high"]


def read_config(path: Path, quick: bool) -> dict[str, Any]:
    config = load_config(path, quick)
    config["tasks"] = tasks_field(config, path)
    config["objectives"] = preset_list(field(config, "objectives", list, path), "objectives", path)
    config["regimes"] = field(config, "regimes", dict, path)
    for name, regime in config["regimes"].items():
        if not isinstance(regime, dict) or set(regime) - set(REGIME_FIELDS):
            raise ExperimentConfigError(
                f"{path}: regimes.{name} must be a mapping of {list(REGIME_FIELDS)}"
            )
    config["train"] = field(config, "train", dict, path)
    config["seeds"] = seeds_field(config, "seeds", path)
    aa = field(config, "aa", dict, path)
    aa["seeds"] = seeds_field(aa, "seeds", path)
    if len(aa["seeds"]) != len(config["seeds"]) or set(aa["seeds"]) & set(config["seeds"]):
        raise ExperimentConfigError(f"{path}: aa.seeds must be as many as seeds, all others")
    if aa.get("regime") not in config["regimes"] or aa.get("objective") not in config["objectives"]:
        raise ExperimentConfigError(f"{path}: aa names an objective and a regime of the config")
    config["aa"] = aa
    config["admission"] = field(config, "admission", dict, path)
    return config


def regime_spec(name: str, regime: dict[str, Any]) -> ObjectiveSpec:
    """Preset ``name`` with its regime fields replaced."""
    return ObjectiveSpec.from_dict({**presets.get(name).to_dict(), **regime})


def plans_of(config: dict[str, Any], path: Path) -> list[RunPlan]:
    plans = []
    for task, entry in config["tasks"].items():
        for regime_name, regime in config["regimes"].items():
            for seed in config["seeds"]:
                train = entry.train(config["train"], path, seed=seed)
                for name in config["objectives"]:
                    spec = regime_spec(name, regime)
                    plans.append(
                        RunPlan(name, task, spec, train, stage=regime_name, task_ref=entry.ref)
                    )
        aa = config["aa"]
        for seed in aa["seeds"]:
            train = entry.train(config["train"], path, seed=seed)
            spec = regime_spec(aa["objective"], config["regimes"][aa["regime"]])
            stage = f"aa-{aa['regime']}"
            plans.append(
                RunPlan(aa["objective"], task, spec, train, stage=stage, task_ref=entry.ref)
            )
    return plans


def by_seed(finals: pd.DataFrame, stage: str, task: str, label: str) -> pd.Series:
    part = finals[
        (finals["stage"] == stage) & (finals["task"] == task) & (finals["label"] == label)
    ]
    return part.set_index("seed")["reward"].sort_index()


def paired_on_seeds(values: pd.Series, reference: pd.Series) -> Interval:
    """The paired interval of ``values - reference`` (final rewards by seed) over the seeds
    both have."""
    seeds = sorted(set(values.index) & set(reference.index))
    return paired_interval(values[seeds].tolist(), reference[seeds].tolist())


def separation_table(finals: pd.DataFrame, config: dict[str, Any]) -> pd.DataFrame:
    """Every pair of objectives on every task in every regime: the paired effect a - b."""
    rows = []
    for task in config["tasks"]:
        for regime in config["regimes"]:
            for a, b in itertools.combinations(config["objectives"], 2):
                interval = paired_on_seeds(
                    by_seed(finals, regime, task, a), by_seed(finals, regime, task, b)
                )
                rows.append(
                    dict(
                        zip(
                            COLUMNS,
                            [task, regime, a, b, interval.n, interval.mean, interval.low,
                             interval.high],
                            strict=True,
                        )
                    )
                )  # fmt: skip
    return pd.DataFrame(rows, columns=COLUMNS)


def regime_table(finals: pd.DataFrame, config: dict[str, Any]) -> pd.DataFrame:
    """Every objective on every task: each regime against the first (same seeds, so paired),
    columns task, objective, regime, n_seeds, effect, ci_low, ci_high."""
    first, *others = config["regimes"]
    rows = []
    for task, name, regime in itertools.product(config["tasks"], config["objectives"], others):
        interval = paired_on_seeds(
            by_seed(finals, regime, task, name), by_seed(finals, first, task, name)
        )
        rows.append(
            {"task": task, "objective": name, "regime": regime, "n_seeds": interval.n,
             "effect": interval.mean, "ci_low": interval.low, "ci_high": interval.high}
        )  # fmt: skip
    return pd.DataFrame(rows)


def aa_table(finals: pd.DataFrame, config: dict[str, Any]) -> pd.DataFrame:
    """The A/A pair per task: the objective on the other seeds against itself, by index."""
    aa, rows = config["aa"], []
    for task in config["tasks"]:
        first = by_seed(finals, aa["regime"], task, aa["objective"])
        second = by_seed(finals, f"aa-{aa['regime']}", task, aa["objective"])
        interval = paired_interval(second.tolist(), first.tolist())
        sd = pd.Series(second.to_numpy() - first.to_numpy()).std()
        rows.append(
            {
                "task": task,
                "n_seeds": interval.n,
                "effect": interval.mean,
                "ci_low": interval.low,
                "ci_high": interval.high,
                "sd_of_difference": sd,
            }
        )
    return pd.DataFrame(rows)


def admission(
    separation: pd.DataFrame, finals: pd.DataFrame, config: dict[str, Any]
) -> pd.DataFrame:
    """Per task: the pairs that separate (|effect| > min_effect, CI excludes 0), the
    reference's final reward, and whether the task is admitted."""
    rule, rows = config["admission"], []
    first_regime = next(iter(config["regimes"]))
    for task in config["tasks"]:
        part = separation[separation["task"] == task]
        clear = part[
            (part["effect"].abs() > rule["min_effect"])
            & ((part["ci_low"] > 0) | (part["ci_high"] < 0))
        ]
        pairs = {(r.objective_a, r.objective_b) for r in clear.itertuples()}
        reference = t_interval(by_seed(finals, first_regime, task, rule["reference"]).tolist())
        admitted = len(pairs) >= rule["min_pairs"] and reference.mean <= rule["max_reference"]
        rows.append(
            {
                "task": task,
                "separating pairs (any regime)": len(pairs),
                "separating pairs per regime": ", ".join(
                    f"{r}: {int((clear['regime'] == r).sum())}" for r in config["regimes"]
                ),
                f"{rule['reference']} final reward": fmt_ci(*reference[:3]),
                "admitted": "yes" if admitted else "no",
            }
        )
    return pd.DataFrame(rows)


def separation_figure(separation: pd.DataFrame, config: dict[str, Any], reference: str) -> Any:
    """Paired effects against the reference objective, one panel per regime."""
    regimes = list(config["regimes"])
    rows = len(config["tasks"]) * (len(config["objectives"]) - 1)  # one per (task, objective)
    fig, axes = plt.subplots(
        1, len(regimes), figsize=(5 * len(regimes), 1.6 + 0.32 * rows), sharey=True
    )
    axes = axes if len(regimes) > 1 else [axes]
    for ax, regime in zip(axes, regimes, strict=True):
        part = separation[
            (separation["regime"] == regime)
            & ((separation["objective_a"] == reference) | (separation["objective_b"] == reference))
        ]
        labels, effects, lows, highs = [], [], [], []
        for r in part.itertuples():
            flip = r.objective_a == reference  # always other - reference
            other = r.objective_b if flip else r.objective_a
            sign = -1.0 if flip else 1.0
            lo, hi = sorted((sign * r.ci_low, sign * r.ci_high))
            labels.append(f"{r.task}: {other}")
            effects.append(sign * r.effect)
            lows.append(lo)
            highs.append(hi)
        y = list(range(len(labels)))
        err = [[e - lo for e, lo in zip(effects, lows, strict=True)],
               [hi - e for e, hi in zip(effects, highs, strict=True)]]  # fmt: skip
        ax.errorbar(effects, y, xerr=err, fmt="o", color="#1f77b4", ecolor="#1f77b4", capsize=2)
        ax.axvline(0.0, color="grey", lw=0.8)
        ax.set_yticks(y, labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_title(f"{regime}: objective - {reference}")
        ax.set_xlabel("paired effect on final held-out reward (t 95% CI)")
    fig.tight_layout()
    return fig


def results_text(
    finals: pd.DataFrame,
    separation: pd.DataFrame,
    aa: pd.DataFrame,
    regimes: pd.DataFrame,
    admitted: pd.DataFrame,
    config: dict[str, Any],
) -> str:
    lines = ["### Admission", "", markdown(admitted), "", "### A/A (noise floor)", ""]
    aa_rows = [
        {
            "task": r.task,
            "pairs": r.n_seeds,
            f"{config['aa']['objective']} (other seeds) - itself": fmt_ci(
                r.effect, r.ci_low, r.ci_high, signed=True
            ),
            "verdict": verdict(Interval(r.effect, r.ci_low, r.ci_high, r.n_seeds)),
            "sd of the difference": f"{r.sd_of_difference:.3f}",
        }
        for r in aa.itertuples()
    ]
    lines += [markdown(pd.DataFrame(aa_rows)), "", "![separation](separation.png)", ""]
    for task in config["tasks"]:
        rows = []
        for regime in config["regimes"]:
            for name in config["objectives"]:
                value = t_interval(by_seed(finals, regime, task, name).tolist())
                rows.append(
                    {"regime": regime, "objective": name, "final reward": fmt_ci(*value[:3])}
                )
        table = pd.DataFrame(rows).pivot(index="objective", columns="regime", values="final reward")
        table = table.reindex(index=config["objectives"], columns=list(config["regimes"]))
        lines += [f"### {task}", "", markdown(table.reset_index()), ""]
        lines += [
            f"Training reward (mean of the last {TRAIN_WINDOW} steps' batches: on a proxy task the "
            "proxy) / final KL to the reference (nats), mean over the seeds that ended ok:",
            "",
            markdown(_drift_table(finals, task, config).reset_index()),
            "",
        ]
        first = next(iter(config["regimes"]))
        change = regimes[regimes["task"] == task].assign(
            cell=lambda f: [
                fmt_ci(r.effect, r.ci_low, r.ci_high, signed=True) for r in f.itertuples()
            ]
        )
        change = change.pivot(index="objective", columns="regime", values="cell")
        change = change.reindex(index=config["objectives"])
        lines += [
            f"Each regime against {first}, per objective (paired over seeds; regime_effects.csv):",
            "",
            markdown(change.reset_index()),
            "",
        ]
        lines += [_clear_pairs(separation, task), ""]
        lines += [f"![{task}, {r}](curves_{task}_{r}.png)" for r in config["regimes"]] + [""]
    return "\n".join(lines)


def last_train_reward(result: RunResult) -> float:
    """The mean training-batch reward of a run's last `TRAIN_WINDOW` steps (NaN unless ok)."""
    values = [value for _, value in result.curve("reward")[1:]][-TRAIN_WINDOW:]
    return statistics.fmean(values) if values and result.status == "ok" else math.nan


def _drift_table(finals: pd.DataFrame, task: str, config: dict[str, Any]) -> pd.DataFrame:
    """Per objective and regime: 'training reward / KL to the reference' over ok runs."""
    ok = finals[(finals["task"] == task) & (finals["status"] == "ok")]
    means = ok.groupby(["label", "stage"])[["train_reward", "kl_to_ref"]].mean()
    table = pd.DataFrame(
        [
            [
                f"{means.loc[(name, regime), 'train_reward']:.2f} / "
                f"{means.loc[(name, regime), 'kl_to_ref']:.2f}"
                if (name, regime) in means.index
                else "-"
                for regime in config["regimes"]
            ]
            for name in config["objectives"]
        ],
        index=pd.Index(config["objectives"], name="objective"),
        columns=list(config["regimes"]),
    )
    return table


def _clear_pairs(separation: pd.DataFrame, task: str) -> str:
    """The pairs whose 95% CI excludes 0 on ``task``, by regime."""
    part = separation[
        (separation["task"] == task) & ((separation["ci_low"] > 0) | (separation["ci_high"] < 0))
    ]
    if part.empty:
        return "No pair of objectives differs with a CI that excludes 0."
    items = [
        f"{r.regime}: {r.objective_a} - {r.objective_b} "
        f"{fmt_ci(r.effect, r.ci_low, r.ci_high, signed=True)}"
        for r in part.itertuples()
    ]
    return "Pairs whose CI excludes 0: " + "; ".join(items) + "."


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], "runs/regime")
    path = HERE / "config.yaml"
    try:
        config = read_config(path, args.quick)
        plans = plans_of(config, path)
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
        description="regime",
    )
    finals = finals_frame(results)
    finals["stage"] = [r.plan.stage for r in results]
    finals["train_reward"] = [last_train_reward(r) for r in results]
    finals.to_csv(out / "results.csv", index=False)
    separation = separation_table(finals, config)
    separation.to_csv(out / "separation.csv", index=False)
    aa = aa_table(finals, config)
    aa.to_csv(out / "aa.csv", index=False)
    regimes = regime_table(finals, config)
    regimes.to_csv(out / "regime_effects.csv", index=False)
    admitted = admission(separation, finals, config)
    reference = config["admission"]["reference"]
    figures.save(separation_figure(separation, config, reference), out / "separation.png")
    for task, regime in itertools.product(config["tasks"], config["regimes"]):
        save_learning_curves(
            [r for r in results if r.plan.stage == regime],
            task,
            out / f"curves_{task}_{regime}.png",
            config["objectives"],
            [reference],
            title=f"{task}, {regime}: held-out reward",
        )
    t = config["train"]
    budget = (
        f"Budget per run: {t['steps']} steps x {t['batch_size']} completions, "
        f"lr {t.get('lr', 1e-4):g} for every objective, tiny policy, CPU, "
        f"seeds {config['seeds']}; the objectives of one (task, regime, seed) trained in one "
        "lockstep batch. Final reward: the expected gold "
        f"reward under sampling ({t['eval_samples']} completions per prompt) on each task's "
        f"fixed set of {t['eval_prompts']} held-out prompts. Effects: mean paired difference "
        "over seeds with a t 95% CI (separation.csv: every pair, every regime)."
    )
    footer = f"Compute: {compute.run_seconds / 60:.1f} run-minutes ({len(plans)} runs)."
    write_results_block(
        out / "README.md",
        "\n\n".join(
            [budget, results_text(finals, separation, aa, regimes, admitted, config), footer]
        ),
    )
    print(compute.describe())
    print(f"total compute: {compute.run_seconds / 60:.1f} run-minutes; results in {out}")


if __name__ == "__main__":
    main()
