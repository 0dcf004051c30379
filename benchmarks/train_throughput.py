"""RL training throughput: steps/s and generated tokens/s for GRPO on addition.

32 prompts x 8 completions per step, the tiny policy (and the small one on a GPU), from the
cached warm start. Prints one JSON document and writes it to ``--out``.

    python benchmarks/train_throughput.py --steps 20 \\
        --out benchmarks/results/train_throughput_cpu.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import emit, machine

from grape_evo.objective import presets
from grape_evo.policy import PolicyConfig, resolve_device
from grape_evo.tasks import get_task
from grape_evo.training import Engine, Member, TrainConfig, warm_start_policy


def measure(policy_preset: str, device: torch.device, steps: int, warmup: int) -> dict:
    task = get_task("addition")
    config = TrainConfig(steps=steps, batch_size=256, device=str(device), warm_start_steps=400)
    policy, _ = warm_start_policy(task, PolicyConfig(preset=policy_preset), config, device)
    engine = Engine([Member(presets.get("grpo"), config.lr)], task, config, policy)
    for step in range(warmup):
        engine.step(step)
    if device.type == "cuda":
        torch.cuda.synchronize()
    tokens = 0.0
    start = time.perf_counter()
    for step in range(warmup, warmup + steps):
        metrics = engine.step(step)[0]
        tokens += metrics["completion_length"] * config.batch_size
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {
        "policy": policy_preset,
        "parameters": policy.num_parameters(),
        "steps": steps,
        "seconds": seconds,
        "steps_per_second": steps / seconds,
        "generated_tokens_per_second": tokens / seconds,
        "completions_per_step": config.batch_size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = resolve_device(args.device)
    runs = [measure("tiny", device, args.steps, args.warmup)]
    if device.type == "cuda":
        runs.append(measure("small", device, args.steps, args.warmup))
    result = {
        "benchmark": "train_throughput",
        "objective": "grpo",
        "task": "addition",
        "prompts_x_completions": "32x8",
        "device": str(device),
        "machine": machine(device),
        "runs": runs,
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
