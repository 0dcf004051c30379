"""What one lockstep step of P members saves over P steps of one, per objective kind.

The quickstart campaign's runs are of a few kinds: GRPO-family trials of a search round (P
objectives on one seed), a candidate's re-evaluation seeds (one objective on P seeds), PPO's
(4 epochs x 4 minibatches with a separate critic, group size 1) and DPO's (offline pairs). For
each kind this times `Engine.step` with one member and with P (the quickstart budget: addition,
tiny policy, 64 rows, cached warm starts), ``--threads`` torch threads, the two sizes
interleaved over ``--rounds`` rounds. ``speedup`` = (ms per step of one member) / (ms per
step of P members / P): the most packing can save on that kind's training steps, since a
campaign's run also evaluates, starts and waits. Prints one JSON document and writes it to
``--out``.

    python benchmarks/population_step.py --out benchmarks/results/population_step_cpu.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from common import emit, load_average, machine

from grape_evo.objective import presets
from grape_evo.search.space import SearchSpace, load_space
from grape_evo.training import Member, TrainConfig, warm_start_policy
from grape_evo.training.batches import sample_offline_pairs
from grape_evo.training.engine import Engine
from grape_evo.training.run import spec_needs_critic

# (kind, preset, one seed for every member?)
KINDS = [
    ("grpo_one_seed", "grpo", True),
    ("grpo_own_seeds", "grpo", False),
    ("ppo_own_seeds", "ppo", False),
    ("dpo_own_seeds", "dpo", False),
]
FIRST_SEED = 1000  # the re-evaluation's seeds


def engine_for(
    space: SearchSpace, preset: str, members: int, one_seed: bool, config: TrainConfig
) -> Engine:
    """An engine of ``members`` members of ``preset`` from the space's cached warm starts."""
    task = space.tasks[0].build()
    spec = presets.get(preset)
    seeds = [FIRST_SEED if one_seed else FIRST_SEED + i for i in range(members)]
    policy_config = replace(space.policy, value_head=spec_needs_critic(spec))
    device = torch.device(config.device)
    policies, pairs = {}, {}
    for seed in dict.fromkeys(seeds):
        seeded = replace(config, seed=seed)
        policies[seed], _ = warm_start_policy(task, policy_config, seeded, device)
        if spec.canonical().data == "preference_pairs":
            pairs[seed] = sample_offline_pairs(policies[seed], task, seeded)
    return Engine([Member(spec, config.lr, s) for s in seeds], task, config, policies, pairs)


def step_ms(engine: Engine, steps: int, warmup: int) -> float:
    """Median milliseconds of one `Engine.step` after ``warmup`` steps."""
    times = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        engine.step(step)
        if step >= warmup:
            times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--population", type=int, default=8)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    space = load_space(Path("search_spaces/quickstart.yaml"))
    config = space.budget.train_config(FIRST_SEED, device="cpu")
    device = torch.device("cpu")
    load_start = load_average()
    rows: list[dict[str, Any]] = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for kind, preset, one_seed in KINDS:
            single, packed = [], []
            for r in range(args.rounds):
                sizes = [1, args.population] if r % 2 == 0 else [args.population, 1]
                for size in sizes:
                    engine = engine_for(space, preset, size, one_seed, config)
                    (single if size == 1 else packed).append(
                        step_ms(engine, args.steps, args.warmup)
                    )
            one, many = statistics.median(single), statistics.median(packed)
            rows.append(
                {
                    "kind": kind,
                    "preset": preset,
                    "threads": threads,
                    "members": args.population,
                    "ms_per_step_one_member": one,
                    "ms_per_step_all_members": many,
                    "ms_per_member_step": many / args.population,
                    "speedup": one * args.population / many,
                    "speedup_per_round": [
                        s * args.population / p for s, p in zip(single, packed, strict=True)
                    ],
                }
            )
            print(f"{kind} threads={threads}: {rows[-1]['speedup']:.2f}x", flush=True)
    emit(
        {
            "benchmark": "population_step",
            "budget": space.budget.to_dict(),
            "machine": machine(device),
            "load_average_start": load_start,
            "load_average_end": load_average(),
            "steps": args.steps,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "kinds": rows,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
