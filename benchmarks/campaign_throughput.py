"""A whole campaign end to end, sequential vs ``--population P`` vs ``--jobs N``.

What `grape evolve SPACE` does, timed by phase in each mode on the same machine, back to back:
the learning-rate tuning and the search (``Campaign.optimize``: trials, baselines, pruning) and
the fresh-seed re-evaluation (``Campaign.reevaluate``). Modes: ``sequential`` (one process, one
member per engine, every core's torch threads), ``population_P`` (lockstep batches of up to P
members, every core's threads), ``jobs_N`` (N worker processes with ``cores // N`` threads
each, for the search and for the re-evaluation's seeds) and ``jobs_N_population_P`` (both).
Every mode is a fresh study in a temporary folder with the same sampler seed. The warm starts
of every seed (search and re-evaluation) are built before timing; their cached initial
evaluations are deleted before each mode, so each pays for its own. Runs are counted from the
run folders (``summary.json`` files: tuning, trials, baselines, re-evaluation). Rounds alternate
the order of the modes. ``--population`` takes several sizes (each a mode, alone and with
``--jobs``; ``--jobs 1`` leaves out the worker modes), ``--policy`` another policy preset.
Prints one JSON document and writes it to ``--out``.

    python benchmarks/campaign_throughput.py --population 8 --jobs 2 \\
        --out benchmarks/results/campaign_throughput_cpu.json
    python benchmarks/campaign_throughput.py --device cuda --policy small --jobs 1 \\
        --population 4 16 64 --out benchmarks/results/campaign_throughput_cuda.json
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import emit, load_average, machine, with_policy

from grape_evo.policy import resolve_device
from grape_evo.search.campaign import Campaign, usable_cores
from grape_evo.search.campaign.reevaluation import REEVAL_SEED_OFFSET
from grape_evo.search.space import SearchSpace, load_space
from grape_evo.training import cache_root, warm_start_policy
from grape_evo.training.initial_eval import FOLDER as INITIAL_EVAL_FOLDER


def build_warm_starts(space: SearchSpace, device: torch.device) -> list[Path]:
    """Every warm start the campaign uses (search and re-evaluation seeds), built now."""
    budget = space.budget
    seeds = [
        *range(budget.seeds),
        *range(REEVAL_SEED_OFFSET, REEVAL_SEED_OFFSET + budget.reeval_seeds),
    ]
    folders = []
    for task_ref in space.tasks:
        task = task_ref.build()
        for seed in seeds:
            _, folder = warm_start_policy(task, space.policy, budget.train_config(seed), device)
            if folder is not None:
                folders.append(folder)
    return folders


def forget_initial_evaluations(warm_starts: list[Path]) -> None:
    for folder in warm_starts:
        shutil.rmtree(folder / INITIAL_EVAL_FOLDER, ignore_errors=True)


def measure(space: SearchSpace, device: str, jobs: int, population: int) -> dict[str, Any]:
    """One campaign end to end in a fresh folder; wall seconds per phase and runs trained."""
    cores = usable_cores()
    threads = max(1, cores // jobs)
    torch.set_num_threads(cores)  # the main process; workers set cores // jobs themselves
    with tempfile.TemporaryDirectory(prefix="grape-campaign-") as folder:
        campaign = Campaign(space, Path(folder), device=device, jobs=jobs, population=population)
        load_before = load_average()
        start = time.perf_counter()
        study = campaign.open(create=True)
        campaign.optimize(study, space.search.trials + len(space.baselines), wait_for_running=True)
        search = time.perf_counter() - start
        rows = campaign.reevaluate(study)
        total = time.perf_counter() - start
        runs = sum(1 for _ in Path(folder).rglob("summary.json"))
        complete = sum(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False))
    parts = ([f"jobs_{jobs}"] if jobs > 1 else []) + (
        [f"population_{population}"] if population > 1 else []
    )
    name = "_".join(parts) or "sequential"
    return {
        "mode": name,
        "jobs": jobs,
        "population": population,
        "threads_per_process": threads,
        "seconds": total,
        "search_seconds": search,
        "reevaluation_seconds": total - search,
        "runs": runs,
        "runs_per_hour": 3600 * runs / total,
        "trials_complete": complete,
        "reevaluated": len(rows),
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--space", type=Path, default=Path("search_spaces/quickstart.yaml"))
    parser.add_argument("--population", type=int, nargs="+", default=[8])
    parser.add_argument("--policy", default=None, help="a policy preset (default: the space's)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = resolve_device(args.device)
    space = with_policy(load_space(args.space), args.policy)
    host = machine(device)
    warm_starts = build_warm_starts(space, device)
    sizes = [1, *args.population]
    modes = list(dict.fromkeys((jobs, size) for jobs in (1, args.jobs) for size in sizes))
    load_start = load_average()
    rounds = []
    for r in range(args.rounds):
        measured = []
        for jobs, population in modes if r % 2 == 0 else modes[::-1]:
            forget_initial_evaluations(warm_starts)
            measured.append(measure(space, str(device), jobs, population))
        rounds.append({m["mode"]: m for m in measured})
    names = list(rounds[0])

    def ratios(key: str) -> dict[str, list[float]]:
        return {
            n: [r["sequential"][key] / r[n][key] for r in rounds]
            for n in names
            if n != "sequential"
        }

    emit(
        {
            "benchmark": "campaign_throughput",
            "space": str(args.space),
            "policy": space.policy.to_dict(),
            "budget": space.budget.to_dict(),
            "trials": space.search.trials,
            "baselines": list(space.baselines),
            "device": str(device),
            "machine": host,
            "cache": str(cache_root()),
            "load_average_start": load_start,
            "load_average_end": load_average(),
            "rounds": [list(r.values()) for r in rounds],
            "median_seconds": {
                n: statistics.median(r[n]["seconds"] for r in rounds) for n in names
            },
            "speedup_vs_sequential_per_round": ratios("seconds"),
            "search_speedup_vs_sequential_per_round": ratios("search_seconds"),
            "reevaluation_speedup_vs_sequential_per_round": ratios("reevaluation_seconds"),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
