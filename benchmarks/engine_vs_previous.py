"""The one training engine against an earlier revision's code, side by side in one run.

Issue 13 replaced the two engines (``Trainer`` and ``PopulationTrainer``) by one; it must be no
slower. This script exports an earlier revision (default ``480763a``, the last commit with two
engines) into a temporary folder with ``git archive`` and alternates fresh processes running
the same measurement on that code and on this checkout (``PYTHONPATH`` picks the code):

* ``step``: steps/s of one GRPO objective, 32 prompts x 8 completions, the tiny policy from its
  cached warm start, one torch thread (earlier: ``Trainer.step``; now: ``Engine.step`` with one
  member), median over ``--steps`` steps after 3 warm-up steps;
* ``quickstart``: the search phase of ``search_spaces/quickstart.yaml`` (16 candidates + 3
  baselines, 2 seeds, 60 steps each) with ``population=8``, one torch thread: wall time of
  ``Campaign.optimize`` on a fresh study, as trials per hour.

Both codes' warm starts are built before timing (their cache keys differ). Rounds alternate
the order of the two codes. Prints one JSON document and writes it to ``--out``.

    python benchmarks/engine_vs_previous.py --rounds 3 \\
        --out benchmarks/results/engine_vs_previous_cpu.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path
from typing import Any

import torch
from common import emit, load_average, machine

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "search_spaces" / "quickstart.yaml"

DRIVER = r"""
import json, statistics, sys, tempfile, time
import torch
torch.set_num_threads(1)
from grape_evo import training
from grape_evo.objective import presets
from grape_evo.policy import PolicyConfig
from grape_evo.search.campaign import Campaign
from grape_evo.search.space import load_space
from grape_evo.tasks import get_task

mode, space_file, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
cpu = torch.device("cpu")
if mode in ("warm", "step"):
    task = get_task("addition")
    config = training.TrainConfig(batch_size=256, lr=1e-4, seed=0, warm_start_steps=600)
    policy, _ = training.warm_start_policy(task, PolicyConfig(), config, cpu)
if mode == "warm":
    space = load_space(space_file)
    for seed in range(space.budget.seeds):
        training.warm_start_policy(
            task, space.policy, space.budget.train_config(seed), cpu
        )
    print(json.dumps({}))
elif mode == "step":
    spec = presets.get("grpo")
    if hasattr(training, "Engine"):
        engine = training.Engine([training.Member(spec, config.lr)], task, config, policy)
        run = lambda s: engine.step(s)[0]
    else:
        run = training.Trainer(spec, task, config, policy).step
    for s in range(3):
        run(s)
    seconds = []
    for s in range(3, 3 + steps):
        start = time.perf_counter()
        run(s)
        seconds.append(time.perf_counter() - start)
    print(json.dumps({"steps_per_second": 1 / statistics.median(seconds)}))
else:
    space = load_space(space_file)
    budget = space.search.trials + len(space.baselines)
    with tempfile.TemporaryDirectory() as out:
        campaign = Campaign(space, out, population=8)
        study = campaign.open(create=True)
        start = time.perf_counter()
        campaign.optimize(study, budget, wait_for_running=True)
        seconds = time.perf_counter() - start
    rate = budget * 3600 / seconds
    print(json.dumps({"trials": budget, "seconds": seconds, "trials_per_hour": rate}))
"""


def export(revision: str, folder: Path) -> None:
    """The revision's ``grape_evo`` package, unpacked into ``folder``."""
    archive = subprocess.run(
        ["git", "archive", revision, "grape_evo"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")


def measure(code: Path, mode: str, steps: int, cache: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(code), "GRAPE_CACHE": str(cache)}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, mode, str(QUICKSTART), str(steps)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode:
        raise RuntimeError(f"{code} {mode}: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--previous", default="480763a", help="The earlier revision.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="grape-previous-") as tmp:
        previous, cache = Path(tmp) / "code", Path(tmp) / "cache"
        export(args.previous, previous)
        codes = {"previous": previous, "now": ROOT}
        for code in codes.values():
            measure(code, "warm", 0, cache)
        load_start = load_average()
        rounds: list[dict[str, Any]] = []
        for r in range(args.rounds):
            order = list(codes) if r % 2 == 0 else list(reversed(codes))
            row: dict[str, Any] = {"order": order, "load_average": load_average()}
            for mode in ("step", "quickstart"):
                for name in order:
                    row[f"{mode}_{name}"] = measure(codes[name], mode, args.steps, cache)
            rounds.append(row)
    step_ratio = [
        r["step_now"]["steps_per_second"] / r["step_previous"]["steps_per_second"] for r in rounds
    ]
    qs_ratio = [
        r["quickstart_now"]["trials_per_hour"] / r["quickstart_previous"]["trials_per_hour"]
        for r in rounds
    ]
    result = {
        "benchmark": "engine_vs_previous",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "previous_revision": args.previous,
        "machine": machine(torch.device("cpu")),
        "load_average_start": load_start,
        "load_average_end": load_average(),
        "rounds": rounds,
        "step_steps_per_second": {
            name: statistics.median(r[f"step_{name}"]["steps_per_second"] for r in rounds)
            for name in ("previous", "now")
        },
        "quickstart_population_8_trials_per_hour": {
            name: statistics.median(r[f"quickstart_{name}"]["trials_per_hour"] for r in rounds)
            for name in ("previous", "now")
        },
        "step_ratio_now_over_previous": {
            "per_round": step_ratio,
            "median": statistics.median(step_ratio),
        },
        "quickstart_ratio_now_over_previous": {
            "per_round": qs_ratio,
            "median": statistics.median(qs_ratio),
        },
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
