"""What one lockstep step of P members saves over P steps of one, per objective kind.

The quickstart campaign's runs are of a few kinds: GRPO-family trials of a search round (P
objectives on one seed), a candidate's re-evaluation seeds (one objective on P seeds), PPO's
(4 epochs x 4 minibatches with a separate critic, group size 1) and DPO's (offline pairs). For
each kind and each population size in ``--members`` this times `Engine.step` and one
`Engine.evaluate` of every member (the quickstart budget: addition, 64 rows, cached warm
starts; ``--policy`` another preset), ``--threads`` torch threads, the sizes interleaved over
``--rounds`` rounds (their order reversed every other round). Per size:

* ``speedup`` = (ms per step of one member) / (ms per step of P members / P), when 1 is among
  the sizes: the most packing can save on that kind's training steps;
* ``runs_per_hour`` = P * 3600 / (steps * step seconds + evaluations * evaluation seconds)
  for a run of the budget's steps and evaluations (every ``eval_every`` and the last; the
  initial one is cached per warm start): training alone, without start-up, warm-start loads or
  a campaign's waits;
* ``memory_per_member_mib`` (CUDA only) = (peak allocated while the engine is built, steps and
  evaluates) - (allocated before), over P.

Own-seed kinds give member i the seed ``1000 + i % --warm-starts`` (default: every member its
own); members that share a seed repeat each other's work, which costs the same time.
Prints one JSON document and writes it to ``--out``.

    python benchmarks/population_step.py --out benchmarks/results/population_step_cpu.json
    python benchmarks/population_step.py --device cuda --policy small --members 1 4 16 64 \\
        --warm-starts 4 --out benchmarks/results/population_step_cuda.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from common import emit, load_average, machine, with_policy

from grape_evo.objective import presets
from grape_evo.policy import resolve_device
from grape_evo.search.space import SearchSpace, load_space
from grape_evo.training import Member, TrainConfig, warm_start_policy
from grape_evo.training.batches import sample_offline_pairs
from grape_evo.training.engine import Engine
from grape_evo.training.run import is_eval_step, spec_needs_critic

# (kind, preset, one seed for every member?)
KINDS = [
    ("grpo_one_seed", "grpo", True),
    ("grpo_own_seeds", "grpo", False),
    ("ppo_own_seeds", "ppo", False),
    ("dpo_own_seeds", "dpo", False),
]
FIRST_SEED = 1000  # the re-evaluation's seeds


def engine_for(
    space: SearchSpace,
    preset: str,
    members: int,
    one_seed: bool,
    config: TrainConfig,
    warm_starts: int | None = None,
) -> Engine:
    """An engine of ``members`` members of ``preset`` from the space's cached warm starts:
    one seed, or member i on seed ``FIRST_SEED + i % warm_starts`` (default: its own)."""
    task = space.tasks[0].build()
    spec = presets.get(preset)
    distinct = 1 if one_seed else warm_starts or members
    seeds = [FIRST_SEED + i % distinct for i in range(members)]
    policy_config = replace(space.policy, value_head=spec_needs_critic(spec))
    device = resolve_device(config.device)
    policies, pairs = {}, {}
    for seed in dict.fromkeys(seeds):
        seeded = replace(config, seed=seed)
        policies[seed], _ = warm_start_policy(task, policy_config, seeded, device)
        if spec.canonical().data == "preference_pairs":
            pairs[seed] = sample_offline_pairs(policies[seed], task, seeded)
    return Engine([Member(spec, config.lr, s) for s in seeds], task, config, policies, pairs)


def timed_ms(action: Callable[[], object], device: torch.device) -> float:
    """Wall milliseconds of ``action`` (CUDA work included)."""
    start = time.perf_counter()
    action()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - start)


def measure(engine: Engine, steps: int, warmup: int, device: torch.device) -> tuple[float, float]:
    """(median ms of one `Engine.step` after ``warmup`` steps, ms of one `Engine.evaluate`
    of every member after them)."""
    times = []
    for step in range(warmup + steps):
        elapsed = timed_ms(lambda step=step: engine.step(step), device)
        if step >= warmup:
            times.append(elapsed)
    return statistics.median(times), timed_ms(engine.evaluate, device)


class Measured(NamedTuple):
    """One engine's figures: median ms per step, ms per evaluation, (CUDA) MiB per member."""

    step: float
    evaluation: float
    memory: float | None


def measure_size(
    space: SearchSpace,
    preset: str,
    members: int,
    one_seed: bool,
    config: TrainConfig,
    args: argparse.Namespace,
) -> Measured:
    """One engine of ``members`` (``args``: its warm starts, steps and warm-up steps)."""
    device = resolve_device(config.device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    engine = engine_for(space, preset, members, one_seed, config, args.warm_starts)
    step, evaluation = measure(engine, args.steps, args.warmup, device)
    memory = None
    if device.type == "cuda":
        memory = (torch.cuda.max_memory_allocated() - before) / members / 2**20
    return Measured(step, evaluation, memory)


def summarise(
    found: dict[int, list[Measured]], size: int, steps: int, evaluations: int
) -> dict[str, Any]:
    """The row of population ``size`` from every size's per-round measurements ``found``:
    medians over rounds, runs per hour for a run of ``steps`` steps and ``evaluations``
    evaluations, and the speed-up over one member when one member was measured."""
    step = statistics.median(f.step for f in found[size])
    evaluation = statistics.median(f.evaluation for f in found[size])
    memory = [f.memory for f in found[size] if f.memory is not None]
    one = found.get(1)
    return {
        "members": size,
        "ms_per_step_all_members": step,
        "ms_per_member_step": step / size,
        "ms_per_evaluation_all_members": evaluation,
        "runs_per_hour": size * 3600 / ((steps * step + evaluations * evaluation) / 1000),
        "memory_per_member_mib": max(memory) if memory else None,
        "speedup": None if one is None else statistics.median(f.step for f in one) * size / step,
        "speedup_per_round": None
        if one is None
        else [a.step * size / b.step for a, b in zip(one, found[size], strict=True)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--members", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--policy", default=None, help="a policy preset (default: the space's)")
    names = [k for k, _, _ in KINDS]
    parser.add_argument("--kinds", nargs="+", choices=names, default=names)
    parser.add_argument("--warm-starts", type=int, default=None)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    space = with_policy(load_space(Path("search_spaces/quickstart.yaml")), args.policy)
    device = resolve_device(args.device)
    config = space.budget.train_config(FIRST_SEED, device=str(device))
    evaluations = sum(is_eval_step(config, s) for s in range(config.steps))
    sizes = sorted(set(args.members))
    load_start = load_average()
    rows: list[dict[str, Any]] = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for kind, preset, one_seed in [k for k in KINDS if k[0] in args.kinds]:
            found: dict[int, list[Measured]] = {size: [] for size in sizes}
            for r in range(args.rounds):
                for size in sizes if r % 2 == 0 else sizes[::-1]:
                    found[size].append(measure_size(space, preset, size, one_seed, config, args))
            for size in sizes:
                summary = summarise(found, size, config.steps, evaluations)
                rows.append({"kind": kind, "preset": preset, "threads": threads, **summary})
                print(
                    f"{kind} threads={threads} members={size}: "
                    f"{summary['runs_per_hour']:.0f} runs/h",
                    flush=True,
                )
    emit(
        {
            "benchmark": "population_step",
            "budget": space.budget.to_dict(),
            "policy": space.policy.to_dict(),
            "device": str(device),
            "machine": machine(device),
            "load_average_start": load_start,
            "load_average_end": load_average(),
            "steps": args.steps,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "evaluations_per_run": evaluations,
            "kinds": rows,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
