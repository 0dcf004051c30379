"""Scoring layouts of the stacked forward: prefix tree vs dense block vs the automatic choice.

For each shape (task, members M, group size G, rows B) it draws one step's on-policy batch from
the cached warm start (tiny policy) and times `StackedGPT2.score` over those rows, without and
with a backward pass, in the three layouts (``dense`` False / True / None). Every timing is the
median of ``--repeats`` calls after one warm-up, the layouts interleaved. Prints one JSON
document and writes it to ``--out``.

    python benchmarks/dense_or_tree.py --out benchmarks/results/dense_or_tree_cpu.json
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

from grape_evo.objective import ObjectiveSpec, presets
from grape_evo.policy import PolicyConfig, resolve_device, rows_of
from grape_evo.tasks import get_task
from grape_evo.training import Member, TrainConfig, warm_start_policy
from grape_evo.training.engine import Engine

# (task, members, group size, rows, warm-start steps): a GRPO step alone and in a population,
# a held-out evaluation's KL pass (4 samples of 64 prompts), PPO's 16-row minibatches, and
# long completions.
SHAPES = [
    ("addition", 1, 8, 64, 600),
    ("addition", 8, 8, 64, 600),
    ("addition", 1, 4, 256, 600),
    ("addition", 1, 1, 16, 600),
    ("addition", 8, 1, 64, 600),
    ("long_sort", 1, 8, 64, 300),
    ("long_sort", 8, 8, 64, 300),
    ("long_sort", 1, 1, 16, 300),
]
LAYOUTS = {"tree": False, "dense": True, "auto": None}


def measure(
    shape: tuple[str, int, int, int, int], repeats: int, device: torch.device
) -> dict[str, Any]:
    task_name, members, group, rows_per_member, warm_steps = shape
    task = get_task(task_name)
    warm = TrainConfig(warm_start_steps=warm_steps, device=device.type)  # the cached one
    policy, _ = warm_start_policy(task, PolicyConfig(), warm, device)
    config = replace(warm, batch_size=rows_per_member)
    base = "grpo" if group > 1 else "reinforce"
    spec = ObjectiveSpec.from_dict({**presets.get(base).to_dict(), "group_size": group})
    engine = Engine([Member(spec, config.lr)] * members, task, config, policy)
    batches = engine._collect(0, engine.live)
    rows = rows_of([batches[i].rollout for i in engine.live], policy.tokenizer.pad_id)
    weights = [engine.weights[i] for i in engine.live]
    forward = engine.forward
    times: dict[str, list[float]] = {f"{n}_{g}": [] for n in LAYOUTS for g in ("no_grad", "grad")}
    for repeat in range(repeats + 1):
        for name, dense in LAYOUTS.items():
            forward.dense = dense
            for grad in (False, True):
                start = time.perf_counter()
                with torch.set_grad_enabled(grad):
                    out = forward.score(rows, weights)
                    if grad:
                        out.logp.sum().backward()
                if repeat:  # the first round warms up
                    times[f"{name}_{'grad' if grad else 'no_grad'}"].append(
                        time.perf_counter() - start
                    )
    forward.dense = None
    medians = {k: 1000 * statistics.median(v) for k, v in times.items()}
    return {
        "task": task_name,
        "members": members,
        "group_size": group,
        "rows_per_member": rows_per_member,
        "completion_tokens": rows.ids.shape[-1],
        "prompt_tokens": rows.prompts.ids.shape[-1],
        "distinct_prompts": rows.prompts.ids.shape[1],
        "median_ms": medians,
        "dense_over_tree_grad": medians["dense_grad"] / medians["tree_grad"],
        "auto_over_best_grad": medians["auto_grad"]
        / min(medians["dense_grad"], medians["tree_grad"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    load_start = load_average()
    shapes = [measure(shape, args.repeats, device) for shape in SHAPES]
    emit(
        {
            "benchmark": "dense_or_tree",
            "device": str(device),
            "machine": machine(device),
            "load_average_start": load_start,
            "load_average_end": load_average(),
            "shapes": shapes,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
