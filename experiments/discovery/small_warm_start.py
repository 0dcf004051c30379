"""The small policy's warm-start recipe: SFT curves of the larger-policy tasks at several rates.

    python experiments/discovery/small_warm_start.py   # resumes from runs/discovery/warm_start

The warm start is SFT on the task's demonstrations (the ``sft`` preset, as
`grape_evo.training.warm_start` trains it); here it runs from the built (untrained) policy with
a held-out evaluation every ``eval_every`` steps, once per rate of ``warm_start_probe`` in
``config.yaml``, seed 0. Writes ``small_warm_start.csv`` (task, lr, step, held-out reward and
accuracy), from which ``larger_policy`` takes its steps and rate.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from grape_evo.experiment import RunPlan, execute
from grape_evo.experiment.config import (
    ExperimentConfigError,
    field,
    load_config,
    parse_args,
    tasks_field,
)
from grape_evo.objective import presets
from grape_evo.policy import PolicyConfig

HERE = Path(__file__).parent


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], "runs/discovery")
    path = HERE / "config.yaml"
    try:
        config = load_config(path, args.quick)
        larger = field(config, "larger_policy", dict, path)
        probe = field(config, "warm_start_probe", dict, path)
        policy = PolicyConfig(preset=field(larger, "policy", str, path))
        plans = [
            RunPlan(
                "sft",
                label,
                presets.get("sft"),
                entry.train(
                    probe["train"], path, lr=lr, warm_start_steps=0, eval_every=probe["eval_every"]
                ),
                policy,
                stage="warm_start",
                task_ref=entry.ref,
            )
            for label, entry in tasks_field(larger, path, where="larger_policy.").items()
            for lr in field(probe, "lrs", list, path)
        ]
    except (ExperimentConfigError, KeyError) as err:
        sys.exit(f"error: {path}: warm_start_probe: {err}")
    results, compute = execute(
        plans, args.out, jobs=args.jobs, progress=not args.no_progress, description="warm starts"
    )
    rows = [
        dict(task=r.plan.task, lr=r.plan.train.lr, step=step, reward=reward, accuracy=accuracy)
        for r in results
        for (step, reward), (_, accuracy) in zip(r.curve(), r.curve("eval_accuracy"), strict=True)
    ]
    out = args.results or (args.out / "results" if args.quick else HERE)
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out / "small_warm_start.csv", index=False, float_format="%.4f")
    print(compute.describe())


if __name__ == "__main__":
    main()
