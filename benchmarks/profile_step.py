"""Where one GRPO training step's time goes: sampling, scoring, reward, loss, backward, optimizer.

The addition task, the tiny policy from the cached warm start, 32 prompts x 8 completions per
step (as ``train_throughput.py``), the engine with one member. The engine is not modified: the
functions it calls are wrapped, for the duration of the measurement, by timers that charge wall
time to the innermost running phase (so the phases add up to the step time):

==================  ===================================================================
phase               what is timed
==================  ===================================================================
prompts             ``task.prompts`` (drawing the step's prompts)
sampling            ``decode`` (prefix-tree generation of the 256 completions)
old_ref_logprobs    ``Engine._fix``: the no-grad forwards (reference; old only when the
                    single-update fast path does not apply) and metrics
reward              ``task_rewards`` (the task's reward on the decoded completions)
policy_forward      the training forward (``forward.score`` with grad)
loss                the member's loss (advantages, ratios, clip, KL, aggregation)
backward            ``torch.autograd.backward``
grad_clip           ``clip_grad_norm_``
optimizer_step      ``optimizer.step``
other               the rest of ``Engine.step``: metrics, host syncs, Python
==================  ===================================================================

``Engine.evaluate`` (greedy held-out accuracy and a sampled KL, ``eval_prompts`` prompts) is
timed on its own and amortised over ``eval_every`` steps (``share_with_eval``); ``groups`` sums
the phases into sampling, old/ref log-probs, reward, loss forward + backward, optimizer step,
other and eval. A short ``torch.profiler`` pass lists the operators with the most self CPU
time. Prints one JSON document and writes it to ``--out``.

    python benchmarks/profile_step.py --steps 30 --out benchmarks/results/profile_cpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from common import emit, load_average, machine

from grape_evo.objective import presets
from grape_evo.policy import PolicyConfig, resolve_device
from grape_evo.tasks import get_task
from grape_evo.training import Engine, Member, TrainConfig, warm_start_policy

# The phases grouped as the issue asks: loss forward + backward, optimizer step (with clipping).
GROUPS = {
    "sampling": ("prompts", "sampling"),
    "old_ref_logprobs": ("old_ref_logprobs",),
    "reward": ("reward",),
    "loss_forward_backward": ("policy_forward", "loss", "backward"),
    "optimizer_step": ("grad_clip", "optimizer_step"),
    "other": ("other",),
    "eval": ("eval",),
}
PHASES = (
    "prompts",
    "sampling",
    "old_ref_logprobs",
    "reward",
    "policy_forward",
    "loss",
    "backward",
    "grad_clip",
    "optimizer_step",
    "other",
)


class PhaseTimer:
    """Exclusive wall time per phase: time is charged to the innermost running phase."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.stack: list[str] = []
        self.mark = 0.0

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def push(self, name: str) -> None:
        now = self._now()
        if self.stack:
            self.seconds[self.stack[-1]] += now - self.mark
        self.stack.append(name)
        self.calls[name] += 1
        self.mark = now

    def pop(self) -> None:
        now = self._now()
        self.seconds[self.stack.pop()] += now - self.mark
        self.mark = now

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            self.push(name)
            try:
                return fn(*args, **kwargs)
            finally:
                self.pop()

        return timed


@contextlib.contextmanager
def instrumented(engine: Engine, timer: PhaseTimer) -> Iterator[None]:
    """Wrap what ``engine`` calls with ``timer``; everything is restored on exit."""
    engine_mod = importlib.import_module("grape_evo.training.engine")
    batches_mod = importlib.import_module("grape_evo.training.batches")
    score = engine.forward.score

    def timed_score(*args: Any, **kwargs: Any) -> Any:
        inside_fix = timer.stack and timer.stack[-1] == "old_ref_logprobs"
        return timer.wrap("old_ref_logprobs" if inside_fix else "policy_forward", score)(
            *args, **kwargs
        )

    patches: list[tuple[Any, str, Any]] = [
        (batches_mod, "decode", timer.wrap("sampling", batches_mod.decode)),
        (batches_mod, "task_rewards", timer.wrap("reward", batches_mod.task_rewards)),
        (engine_mod, "member_loss", timer.wrap("loss", engine_mod.member_loss)),
        (Engine, "_fix", timer.wrap("old_ref_logprobs", Engine._fix)),
        (torch.autograd, "backward", timer.wrap("backward", torch.autograd.backward)),
        (
            torch.nn.utils,
            "clip_grad_norm_",
            timer.wrap("grad_clip", torch.nn.utils.clip_grad_norm_),
        ),
    ]
    originals = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    task, optimizer = engine.task, engine.optimizer
    try:
        for obj, name, new in patches:
            setattr(obj, name, new)
        engine.forward.score = timed_score  # type: ignore[method-assign]
        task.prompts = timer.wrap("prompts", task.prompts)  # type: ignore[method-assign]
        optimizer.step = timer.wrap("optimizer_step", optimizer.step)  # type: ignore[method-assign]
        yield
    finally:
        for obj, name, old in originals:
            setattr(obj, name, old)
        del engine.forward.score
        del task.prompts
        del optimizer.step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def plain_steps(engine: Engine, first: int, steps: int) -> list[float]:
    seconds = []
    for step in range(first, first + steps):
        _sync(engine.device)
        start = time.perf_counter()
        engine.step(step)
        _sync(engine.device)
        seconds.append(time.perf_counter() - start)
    return seconds


def profiled_steps(engine: Engine, first: int, steps: int) -> tuple[PhaseTimer, float]:
    timer = PhaseTimer(engine.device)
    start = time.perf_counter()
    with instrumented(engine, timer):
        for step in range(first, first + steps):
            timer.push("other")
            try:
                engine.step(step)
            finally:
                timer.pop()
    return timer, time.perf_counter() - start


def top_ops(engine: Engine, first: int, steps: int, k: int) -> list[dict[str, Any]]:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if engine.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        for step in range(first, first + steps):
            engine.step(step)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:k]
    return [
        {
            "op": e.key,
            "calls_per_step": e.count / steps,
            "self_cpu_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
            "share_of_self_cpu": e.self_cpu_time_total / total,
        }
        for e in ranked
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--eval-calls", type=int, default=3)
    parser.add_argument("--profiler-steps", type=int, default=5, help="0 turns it off")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--policy", default="tiny")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    load_before = load_average()
    task = get_task("addition")
    config = TrainConfig(batch_size=256, device=str(device), warm_start_steps=400)
    policy, _ = warm_start_policy(task, PolicyConfig(preset=args.policy), config, device)
    engine = Engine([Member(presets.get("grpo"), config.lr)], task, config, policy)

    plain_steps(engine, 0, args.warmup)
    step = args.warmup
    plain = plain_steps(engine, step, args.steps)
    step += args.steps
    timer, profiled_total = profiled_steps(engine, step, args.steps)
    step += args.steps

    eval_seconds = []
    for _ in range(args.eval_calls):
        _sync(device)
        start = time.perf_counter()
        engine.evaluate()
        _sync(device)
        eval_seconds.append(time.perf_counter() - start)

    ops = top_ops(engine, step, args.profiler_steps, args.top) if args.profiler_steps else []

    step_total = sum(timer.seconds.values())
    per_step = step_total / args.steps
    eval_call = statistics.median(eval_seconds)
    eval_per_step = eval_call / config.eval_every
    phases = {
        name: {
            "seconds_per_step": timer.seconds.get(name, 0.0) / args.steps,
            "share": timer.seconds.get(name, 0.0) / step_total,
            "share_with_eval": timer.seconds.get(name, 0.0)
            / args.steps
            / (per_step + eval_per_step),
            "calls_per_step": timer.calls.get(name, 0) / args.steps,
        }
        for name in PHASES
    }
    phases["eval"] = {
        "seconds_per_step": eval_per_step,
        "share": None,
        "share_with_eval": eval_per_step / (per_step + eval_per_step),
        "calls_per_step": 1 / config.eval_every,
    }
    groups = {
        group: {
            "seconds_per_step": sum(phases[n]["seconds_per_step"] for n in names),
            "share_with_eval": sum(phases[n]["share_with_eval"] for n in names),
        }
        for group, names in GROUPS.items()
    }
    result = {
        "benchmark": "profile_step",
        "objective": "grpo",
        "task": "addition",
        "policy": args.policy,
        "parameters": policy.num_parameters(),
        "prompts_x_completions": "32x8",
        "device": str(device),
        "machine": machine(device),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "steps": args.steps,
        "steps_per_second_plain": args.steps / sum(plain),
        "median_step_seconds_plain": statistics.median(plain),
        "steps_per_second_instrumented": args.steps / profiled_total,
        "step_seconds_instrumented": per_step,
        "eval": {
            "seconds_per_call": eval_call,
            "eval_prompts": config.eval_prompts,
            "eval_every": config.eval_every,
            "seconds_per_step_amortised": eval_per_step,
        },
        "groups": groups,
        "phases": phases,
        "top_ops": ops,
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
