"""Does ``torch.compile`` pay for the engine? Eager vs compiled steps, one process.

The stacked GPT-2 forward's blocks (`StackedGPT2._layers`: every layer of M weight sets, used
for sampling, the training forward and the reference pass) are the regular, batched part of a
step, so they are where compilation could pay. This script trains the same 6 GRPO-family
candidates as ``trials_per_hour.py`` (one `Engine` with 6 members, the tiny policy, 64
completions per step) from the cached warm start:

1. ``eager``: ``--rounds`` runs of ``--steps`` steps each, a fresh engine per run;
2. ``compiled``: the same after ``torch.compile(StackedGPT2._layers, dynamic=True)`` (inductor):
   the first run pays compilation and every recompilation its new shapes (prompt and
   completion lengths, prefix-tree widths change from step to step) trigger; later runs show
   the steady state.

A campaign trial trains for about a second, so compilation pays only if its one-off cost is
recovered within a campaign. Prints one JSON document and writes it to ``--out``.

    python benchmarks/torch_compile.py --steps 40 --rounds 2 \\
        --out benchmarks/results/torch_compile_cpu.json
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from common import emit, load_average, machine
from trials_per_hour import make_space, points

from grape_evo.policy import resolve_device
from grape_evo.policy.stacked_gpt2 import StackedGPT2
from grape_evo.training import Engine, Member, warm_start_policy

MEMBERS = 6


def timed_run(space: Any, steps: int, device: torch.device) -> float:
    """Seconds for ``steps`` steps of a fresh 6-member engine (warm start load excluded)."""
    task = space.tasks[0].build()
    config = space.budget.train_config(0, device=str(device))
    specs = [space.to_spec(p)[0] for p in points(MEMBERS)]
    policy, _ = warm_start_policy(task, space.policy, config, device)
    engine = Engine([Member(spec, config.lr) for spec in specs], task, config, policy)
    start = time.perf_counter()
    for step in range(steps):
        engine.step(step)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2, help="Runs per mode after the first.")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default all).")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    space = make_space(args.steps, MEMBERS, 64, 64)
    load_start = load_average()
    timed_run(space, 2, device)  # builds and caches the warm start, warms up the kernels
    eager = [timed_run(space, args.steps, device) for _ in range(args.rounds)]
    StackedGPT2._layers = torch.compile(StackedGPT2._layers, dynamic=True)  # type: ignore[method-assign]
    compiled = [timed_run(space, args.steps, device) for _ in range(args.rounds + 1)]
    steady = statistics.median(compiled[1:])
    result = {
        "benchmark": "torch_compile",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "what": "engine, 6 members, StackedGPT2._layers compiled with dynamic=True",
        "steps_per_run": args.steps,
        "device": str(device),
        "machine": machine(device),
        "load_average_start": load_start,
        "load_average_end": load_average(),
        "eager_seconds_per_run": eager,
        "compiled_first_run_seconds": compiled[0],
        "compiled_later_runs_seconds": compiled[1:],
        "steady_speedup_vs_eager": statistics.median(eager) / steady,
        "break_even_runs": (
            (compiled[0] - steady) / (statistics.median(eager) - steady)
            if statistics.median(eager) > steady
            else None
        ),
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
