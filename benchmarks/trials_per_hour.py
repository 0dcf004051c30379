"""Campaign throughput: trials per hour at a fixed per-trial budget, sequential vs ``jobs``
vs population mode.

The same fixed GRPO-family candidates (advantage x surrogate, enqueued in the same order) are
trained by ``Campaign.optimize`` in three modes, side by side in one run: ``sequential`` (one
process with every core's torch threads, as ``grape evolve`` runs by default),
``sequential_1_thread`` (the same on one thread: what each worker of ``jobs_2`` gets on two
cores, which tells thread contention apart from parallelism) and ``jobs_N`` (N worker
processes, ``cores // N`` threads each). Two more modes (unless ``--no-population``) run the
same campaign with ``Campaign(population=P)``, P = ``--trials`` (``grape evolve --population
P``): every candidate trained at once in lockstep, one batched forward for all members per pass
(``population``: every core's threads; ``population_1_thread``). Rounds alternate the modes,
the order reversed every round. Each measurement is a fresh study in a temporary folder; its
wall time covers the whole ``optimize`` call (trial folders, checksums, the study's records),
so the worker processes' start-up (spawn, imports) is counted. The warm start is built (and
cached) before timing. Re-evaluation is not part of it. Prints one JSON document and writes it
to ``--out``.

    python benchmarks/trials_per_hour.py --trials 6 --steps 40 --rounds 3 --jobs 2 \\
        --out benchmarks/results/trials_per_hour_cpu.json
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import emit, load_average, machine

from grape_evo.objective import presets
from grape_evo.policy import resolve_device
from grape_evo.search.campaign import Campaign, usable_cores
from grape_evo.search.space import SearchSpace, parse_space
from grape_evo.training import warm_start_policy

ADVANTAGES = ("group_zscore", "group_mean", "rloo", "rank")
SURROGATES = ("reinforce", "ppo_clip")


def make_space(steps: int, trials: int, batch_size: int, eval_prompts: int) -> SearchSpace:
    """A GRPO-family space on addition with the tiny policy, one seed, no baselines."""
    return parse_space(
        {
            "name": "throughput",
            "tasks": ["addition"],
            "policy": {"preset": "tiny"},
            "budget": {
                "steps": steps,
                "seeds": 1,
                "eval_every": steps,
                "batch_size": batch_size,
                "eval_prompts": eval_prompts,
            },
            "base": "grpo",
            "axes": {
                "advantage.name": {"choices": list(ADVANTAGES)},
                "surrogate.name": {"choices": list(SURROGATES)},
            },
            "baselines": [],
            "search": {"sampler": "random", "trials": trials, "pruner": "none"},
        },
        source="trials_per_hour.py",
    )


def points(trials: int) -> list[dict[str, str]]:
    """The first ``trials`` distinct candidates (so no trial reuses another's result)."""
    grid = [
        {"advantage.name": a, "surrogate.name": s}
        for a, s in itertools.product(ADVANTAGES, SURROGATES)
    ]
    if trials > len(grid):
        raise SystemExit(f"--trials is at most {len(grid)} (distinct candidates)")
    return grid[:trials]


def mode_name(jobs: int, threads: int, kind: str = "sequential") -> str:
    """``sequential`` / ``population`` (every core), ``sequential_1_thread`` /
    ``population_1_thread``, or ``jobs_N``."""
    if jobs > 1:
        return f"jobs_{jobs}"
    return kind if threads == usable_cores() else f"{kind}_{threads}_thread"


def measure(
    space: SearchSpace, trials: int, jobs: int, threads: int, device: str, population: int = 1
) -> dict[str, Any]:
    """Time one campaign of ``trials`` fixed candidates run with ``jobs`` processes (with
    ``jobs == 1``: in this process, with ``threads`` torch threads), training up to
    ``population`` candidates per process at once.

    ``startup_seconds`` is the time until the first trial started (worker processes' spawn and
    imports with ``jobs > 1``); ``trials_per_hour_after_startup`` leaves it out, which is what
    a long campaign approaches.
    """
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="grape-tph-") as folder:
        campaign = Campaign(space, Path(folder), device=device, jobs=jobs, population=population)
        study = campaign.open(create=True)
        for point in points(trials):
            study.enqueue_trial(point)
        load_before = load_average()
        started = datetime.datetime.now()
        start = time.perf_counter()
        campaign.optimize(study, trials, wait_for_running=True)
        seconds = time.perf_counter() - start
        done = study.get_trials(deepcopy=False)
    first = min(t.datetime_start for t in done if t.datetime_start is not None)
    startup = max(0.0, (first - started).total_seconds())
    complete = sum(t.state.name == "COMPLETE" for t in done)
    return {
        "mode": mode_name(jobs, threads, "population" if population > 1 else "sequential"),
        "jobs": jobs,
        "population": population,
        "threads_per_process": threads,
        "seconds": seconds,
        "startup_seconds": startup,
        "trials_complete": complete,
        "trial_states": sorted({t.state.name for t in done}),
        "trials_per_hour": 3600 * complete / seconds,
        "trials_per_hour_after_startup": 3600 * complete / (seconds - startup),
        "median_trial_seconds": statistics.median(
            (t.datetime_complete - t.datetime_start).total_seconds()
            for t in done
            if t.datetime_complete is not None and t.datetime_start is not None
        ),
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=8, help="Candidates per measurement.")
    parser.add_argument("--steps", type=int, default=30, help="RL steps per trial.")
    parser.add_argument("--batch-size", type=int, default=64, help="Completions per step.")
    parser.add_argument("--eval-prompts", type=int, default=64, help="Held-out prompts.")
    parser.add_argument("--jobs", type=int, nargs="+", default=[2], help="Parallel modes.")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--population",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Also measure the population modes (all candidates trained at once).",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = resolve_device(args.device)
    space = make_space(args.steps, args.trials, args.batch_size, args.eval_prompts)
    task = space.tasks[0].build()
    warm_start_policy(task, space.policy, space.budget.train_config(0), device)

    cores = usable_cores()
    # (kind, jobs, threads): the default sequential campaign, the same on one thread (what each
    # parallel worker gets on two cores), each parallel mode, and the population modes.
    threads = [cores, *([1] if cores > 1 else [])]
    modes = [
        *(("sequential", 1, t) for t in threads),
        *(("sequential", j, max(1, cores // j)) for j in args.jobs),
        *(("population", 1, t) for t in (threads if args.population else [])),
    ]
    load_start = load_average()
    host = machine(device)  # before the modes change the thread count
    rounds = []
    for r in range(args.rounds):
        order = modes if r % 2 == 0 else modes[::-1]
        runs = [
            measure(
                space, args.trials, j, t, str(device), args.trials if kind == "population" else 1
            )
            for kind, j, t in order
        ]
        rounds.append({run["mode"]: run for run in runs})
    names = list(rounds[0])

    def per_round(key: str, name: str) -> list[float]:
        return [r[name][key] / r["sequential"][key] for r in rounds]

    result = {
        "benchmark": "trials_per_hour",
        "task": "addition",
        "policy": "tiny",
        "candidates": [f"{p['advantage.name']}+{p['surrogate.name']}" for p in points(args.trials)],
        "group_size": presets.get("grpo").group_size,
        "per_trial_budget": space.budget.to_dict(),
        "device": str(device),
        "machine": host,
        "load_average_start": load_start,
        "load_average_end": load_average(),
        "rounds": [list(r.values()) for r in rounds],
        "median_trials_per_hour": {
            n: statistics.median(r[n]["trials_per_hour"] for r in rounds) for n in names
        },
        "median_trials_per_hour_after_startup": {
            n: statistics.median(r[n]["trials_per_hour_after_startup"] for r in rounds)
            for n in names
        },
        "ratio_vs_sequential_per_round": {
            n: per_round("trials_per_hour", n) for n in names if n != "sequential"
        },
        "ratio_vs_sequential_after_startup_per_round": {
            n: per_round("trials_per_hour_after_startup", n) for n in names if n != "sequential"
        },
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
