"""Training runs end to end: warm start, train, evaluate, write the run folder.

`train` runs one candidate; `train_population` runs P candidates in lockstep
(`population.PopulationTrainer`) and writes one run folder per member, with the same contract.

Outputs (**contract**, DESIGN.md section 4): ``OUT/metrics.jsonl`` and ``OUT/summary.json``.
A run never ends in a traceback: a diverged run reports ``status: diverged`` and a failure
(an exception from a task, a model that outputs NaN, ...) ``status: failed``, each with a
``reason``. Ctrl-C still stops the run, leaving the metrics written so far.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

from grape_evo.objective import ObjectiveSpec
from grape_evo.policy import Policy, PolicyConfig, resolve_device
from grape_evo.tasks import Task
from grape_evo.training.batches import OfflinePairs
from grape_evo.training.config import TrainConfig
from grape_evo.training.population import PopulationTrainer, PopulationUnsupported
from grape_evo.training.run_log import MetricsLog, write_json_atomic
from grape_evo.training.trainer import Diverged, EvalReport, Trainer, sample_offline_pairs
from grape_evo.training.warm_start import warm_start_policy

STEP_KEYS = ("reward", "kl_to_ref", "entropy", "clip_fraction", "grad_norm", "loss")
StepCallback = Callable[[int, dict[str, Any]], None]


def _eval_dict(report: EvalReport | None) -> dict[str, float] | None:
    if report is None:
        return None
    return report.to_dict()


def needs_critic(spec: ObjectiveSpec) -> bool:
    """Whether training ``spec`` needs a value head: an RL objective with ``gae`` advantages."""
    canonical = spec.canonical()
    return canonical.preference is None and canonical.advantage.name == "gae"


def _is_eval_step(config: TrainConfig, step: int) -> bool:
    """Whether the run evaluates after step ``step`` (0-based): every ``eval_every`` and last."""
    return (step + 1) % config.eval_every == 0 or step + 1 == config.steps


def _step_record(
    step: int, metrics: dict[str, float], evaluation: EvalReport | None, start: float
) -> dict[str, Any]:
    """One ``metrics.jsonl`` line: ``step`` (1-based), `STEP_KEYS` first, then the objective's
    own metrics, the evaluation when there was one, and ``seconds`` since the run started."""
    record: dict[str, Any] = {"step": step + 1}
    record.update({k: metrics.get(k) for k in STEP_KEYS})
    record.update({k: v for k, v in metrics.items() if k not in record})
    if evaluation is not None:
        record.update(
            eval_reward=evaluation.reward,
            eval_accuracy=evaluation.accuracy,
            eval_kl_to_ref=evaluation.kl_to_ref,
        )
    record["seconds"] = time.perf_counter() - start
    return record


def _new_summary(
    spec: ObjectiveSpec,
    task: Task,
    config: TrainConfig,
    policy_cfg: PolicyConfig,
    device: torch.device,
) -> dict[str, Any]:
    """A run's ``summary.json`` before its first step (status ``ok``, nothing evaluated)."""
    return {
        "objective": spec.to_dict(),
        "objective_key": spec.key(),
        "task": task.config(),
        "seed": config.seed,
        "train_config": config.to_dict(),
        "policy": policy_cfg.to_dict(),
        "device": str(device),
        "initial_eval": None,
        "final_eval": None,
        "kl_to_ref": None,
        "steps": 0,
        "status": "ok",
        "reason": "",
    }


def _failure_reason(err: Exception) -> str:
    last = traceback.extract_tb(err.__traceback__)[-1]
    return f"{type(err).__name__}: {err} (at {Path(last.filename).name}:{last.lineno})"


def _start(
    task: Task,
    policy_cfg: PolicyConfig,
    config: TrainConfig,
    device: torch.device,
    cache_dir: Path | None,
    specs: Sequence[ObjectiveSpec],
    bar: Progress,
    job: TaskID,
) -> tuple[Policy, Path, OfflinePairs | None]:
    """The cached warm start (policy and its cache folder) and, when one of ``specs`` trains
    on offline preference pairs, the pairs sampled from it (right after loading it, so a run
    draws the same pairs alone or in a population)."""
    bar.update(job, status="warm start")
    policy, cache = warm_start_policy(task, policy_cfg, config, device, cache_dir)
    pairs = None
    if any(spec.canonical().data == "preference_pairs" for spec in specs):
        bar.update(job, status="labelling preference pairs")
        pairs = sample_offline_pairs(policy, task, config)
    return policy, cache, pairs


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        disable=not enabled,
        transient=False,
    )


def train(
    spec: ObjectiveSpec,
    task: Task,
    config: TrainConfig,
    policy_config: PolicyConfig | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    cache_dir: Path | None = None,
    step_callback: StepCallback | None = None,
) -> dict[str, Any]:
    """Train ``spec`` on ``task`` from the cached warm start and return the summary.

    ``step_callback(step, record)`` is called after every step with the metrics record (the
    search layer uses it to report intermediate values and to prune); an exception it raises
    stops the run (status ``stopped``) and is re-raised after the outputs are written.
    """
    start = time.perf_counter()
    device = resolve_device(config.device)
    base_policy = policy_config or PolicyConfig()
    policy_cfg = replace(base_policy, value_head=needs_critic(spec))
    out = Path(out_dir) if out_dir is not None else None
    log = MetricsLog(out / "metrics.jsonl") if out is not None else None
    torch.manual_seed(config.seed)
    summary = _new_summary(spec, task, config, policy_cfg, device)
    callback_error: Exception | None = None
    try:
        with _progress(progress) as bar:
            job = bar.add_task(f"{spec.name} on {task.name}", total=config.steps, status="")
            policy, cache, pairs = _start(
                task, policy_cfg, config, device, cache_dir, [spec], bar, job
            )
            summary["warm_start_cache"] = str(cache)
            trainer = Trainer(spec, task, config, policy, offline_pairs=pairs)
            initial = trainer.evaluate()
            summary["initial_eval"] = _eval_dict(initial)
            last_eval = initial
            for step in range(config.steps):
                metrics = trainer.step(step)
                evaluation = trainer.evaluate() if _is_eval_step(config, step) else None
                last_eval = evaluation or last_eval
                record = _step_record(step, metrics, evaluation, start)
                if log is not None:
                    log.write(record)
                summary["steps"] = step + 1
                if step_callback is not None:
                    try:
                        step_callback(step + 1, record)
                    except Exception as err:  # e.g. a pruner's stop signal: not our failure
                        callback_error = err
                        summary.update(status="stopped", reason=f"{type(err).__name__}: {err}")
                        break
                bar.update(
                    job,
                    advance=1,
                    status=f"reward {metrics.get('reward', float('nan')):.3f}  "
                    f"eval acc {last_eval.accuracy:.3f}",
                )
            summary["final_eval"] = _eval_dict(last_eval)
            summary["kl_to_ref"] = last_eval.kl_to_ref if callback_error is None else None
    except Diverged as err:
        summary.update(status="diverged", reason=str(err))
    except (KeyboardInterrupt, SystemExit):
        summary.update(status="failed", reason="interrupted")
        raise
    except Exception as err:  # a candidate must never crash its caller
        summary.update(status="failed", reason=_failure_reason(err))
    finally:
        summary["wall_seconds"] = time.perf_counter() - start
        if log is not None:
            log.close()
        if out is not None:
            write_json_atomic(out / "summary.json", summary)
    if callback_error is not None:
        raise callback_error
    return summary


def train_population(
    specs: Sequence[ObjectiveSpec],
    task: Task,
    configs: Sequence[TrainConfig],
    policy_config: PolicyConfig | None = None,
    out_dirs: Sequence[str | Path] | None = None,
    progress: bool = True,
    cache_dir: Path | None = None,
    step_callbacks: Sequence[StepCallback | None] | None = None,
) -> list[dict[str, Any]]:
    """Train P candidates in lockstep on ``task`` from one warm start; one summary per member.

    ``configs[i]`` is member i's `TrainConfig`; they may differ in ``lr`` only. Member i's run
    folder ``out_dirs[i]`` and its summary follow `train`'s contract, plus ``population`` (P);
    its ``wall_seconds`` is the whole population's. Its records are what `train` writes for it
    alone, up to float rounding (see `grape_evo.training.population`). ``step_callbacks[i]`` is
    called as `train` calls its callback; an exception it raises stops member i only (status
    ``stopped``) and is not re-raised (the caller's callback knows what it raised).

    Raises:
        PopulationUnsupported: before any step and without writing a run folder, when
            population mode cannot train these members or this policy (use `train`).
    """
    start = time.perf_counter()
    count = len(specs)
    outs = [None if d is None else Path(d) for d in out_dirs or [None] * count]
    callbacks = list(step_callbacks or [None] * count)
    if not specs or len(configs) != count or len(outs) != count or len(callbacks) != count:
        raise ValueError(
            f"train_population needs one config, out dir and callback per member: {count} "
            f"specs, {len(configs)} configs, {len(outs)} out dirs, {len(callbacks)} callbacks"
        )
    config = configs[0]
    for i, other in enumerate(configs):
        if replace(other, lr=config.lr) != config:
            raise PopulationUnsupported(
                f"population member {i}'s TrainConfig differs from member 0's in more than lr"
            )
    device = resolve_device(config.device)
    base_policy = policy_config or PolicyConfig()
    critics = [needs_critic(spec) for spec in specs]
    policy_cfg = replace(base_policy, value_head=any(critics))
    summaries = [
        {
            **_new_summary(spec, task, c, replace(base_policy, value_head=critic), device),
            "population": count,
        }
        for spec, c, critic in zip(specs, configs, critics, strict=True)
    ]
    logs: list[MetricsLog | None] = []
    torch.manual_seed(config.seed)
    try:
        with _progress(progress) as bar:
            job = bar.add_task(f"{count} candidates on {task.name}", total=config.steps, status="")
            policy, cache, pairs = _start(
                task, policy_cfg, config, device, cache_dir, specs, bar, job
            )
            lrs = [c.lr for c in configs]
            trainer = PopulationTrainer(specs, task, config, policy, lrs, offline_pairs=pairs)
            logs = [None if o is None else MetricsLog(o / "metrics.jsonl") for o in outs]
            last_evals = trainer.evaluate()
            for summary, initial in zip(summaries, last_evals, strict=True):
                summary.update(warm_start_cache=str(cache), initial_eval=_eval_dict(initial))
            for step in range(config.steps):
                live = trainer.live
                if not live:
                    break
                results = trainer.step(step)
                evaluations = trainer.evaluate() if _is_eval_step(config, step) else [None] * count
                for i in live:
                    summary, metrics, evaluation = summaries[i], results[i], evaluations[i]
                    if trainer.members[i].status != "ok" or metrics is None:
                        summary.update(status="diverged", reason=trainer.members[i].reason)
                        continue
                    last_evals[i] = evaluation or last_evals[i]
                    record = _step_record(step, metrics, evaluation, start)
                    if (log := logs[i]) is not None:
                        log.write(record)
                    summary["steps"] = step + 1
                    if (callback := callbacks[i]) is not None:
                        try:
                            callback(step + 1, record)
                        except Exception as err:  # e.g. a pruner's stop signal: not our failure
                            reason = f"{type(err).__name__}: {err}"
                            trainer.stop(i, "stopped", reason)
                            summary.update(status="stopped", reason=reason)
                bar.update(job, advance=1, status=f"{len(trainer.live)} of {count} training")
            for summary, evaluation in zip(summaries, last_evals, strict=True):
                if summary["status"] in ("ok", "stopped"):
                    summary["final_eval"] = _eval_dict(evaluation)
                    ok = summary["status"] == "ok" and evaluation is not None
                    summary["kl_to_ref"] = evaluation.kl_to_ref if ok else None
    except PopulationUnsupported:
        outs = [None] * count  # nothing trained: no run folder
        raise
    except (KeyboardInterrupt, SystemExit):
        _fail_running(summaries, "interrupted")
        raise
    except Exception as err:  # a candidate must never crash its caller
        _fail_running(summaries, _failure_reason(err))
    finally:
        wall_seconds = time.perf_counter() - start
        for log in logs:
            if log is not None:
                log.close()
        for summary, out in zip(summaries, outs, strict=True):
            summary["wall_seconds"] = wall_seconds
            if out is not None:
                write_json_atomic(out / "summary.json", summary)
    return summaries


def _fail_running(summaries: list[dict[str, Any]], reason: str) -> None:
    """Mark every member still training as ``failed`` with ``reason``."""
    for summary in summaries:
        if summary["status"] == "ok":
            summary.update(status="failed", reason=reason)
