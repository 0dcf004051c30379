"""One training run end to end: warm start, train, evaluate, write the run folder.

Outputs (**contract**, DESIGN.md section 4): ``OUT/metrics.jsonl`` and ``OUT/summary.json``.
A run never ends in a traceback: a diverged run reports ``status: diverged`` and a failure
(an exception from a task, a model that outputs NaN, ...) ``status: failed``, each with a
``reason``. Ctrl-C still stops the run, leaving the metrics written so far.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from grape_evo.objective import ObjectiveSpec
from grape_evo.policy import PolicyConfig, resolve_device
from grape_evo.tasks import Task
from grape_evo.training.config import TrainConfig
from grape_evo.training.run_log import MetricsLog, write_json_atomic
from grape_evo.training.trainer import Diverged, EvalReport, Trainer, sample_offline_pairs
from grape_evo.training.warm_start import warm_start_policy

STEP_KEYS = ("reward", "kl_to_ref", "entropy", "clip_fraction", "grad_norm", "loss")


def _eval_dict(report: EvalReport | None) -> dict[str, float] | None:
    if report is None:
        return None
    return report.to_dict()


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
    step_callback: Any = None,
) -> dict[str, Any]:
    """Train ``spec`` on ``task`` from the cached warm start and return the summary.

    ``step_callback(step, record)`` is called after every step with the metrics record (the
    search layer uses it to report intermediate values and to prune); an exception it raises
    stops the run (status ``stopped``) and is re-raised after the outputs are written.
    """
    start = time.perf_counter()
    canonical = spec.canonical()
    device = resolve_device(config.device)
    base_policy = policy_config or PolicyConfig()
    needs_critic = canonical.preference is None and canonical.advantage.name == "gae"
    policy_cfg = PolicyConfig(**{**base_policy.to_dict(), "value_head": needs_critic})
    out = Path(out_dir) if out_dir is not None else None
    log = MetricsLog(out / "metrics.jsonl") if out is not None else None
    torch.manual_seed(config.seed)
    summary: dict[str, Any] = {
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
    callback_error: Exception | None = None
    try:
        with _progress(progress) as bar:
            job = bar.add_task(f"{spec.name} on {task.name}", total=config.steps, status="")
            bar.update(job, status="warm start")
            policy, cache = warm_start_policy(task, policy_cfg, config, device, cache_dir)
            summary["warm_start_cache"] = str(cache)
            pairs = None
            if canonical.data == "preference_pairs":
                bar.update(job, status="labelling preference pairs")
                pairs = sample_offline_pairs(policy, task, config)
            trainer = Trainer(spec, task, config, policy, offline_pairs=pairs)
            initial = trainer.evaluate()
            summary["initial_eval"] = _eval_dict(initial)
            last_eval = initial
            for step in range(config.steps):
                metrics = trainer.step(step)
                record: dict[str, Any] = {"step": step + 1}
                record.update({k: metrics.get(k) for k in STEP_KEYS})
                record.update({k: v for k, v in metrics.items() if k not in record})
                if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
                    last_eval = trainer.evaluate()
                    record.update(
                        eval_reward=last_eval.reward,
                        eval_accuracy=last_eval.accuracy,
                        eval_kl_to_ref=last_eval.kl_to_ref,
                    )
                record["seconds"] = time.perf_counter() - start
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
        last = traceback.extract_tb(err.__traceback__)[-1]
        summary.update(
            status="failed",
            reason=f"{type(err).__name__}: {err} (at {Path(last.filename).name}:{last.lineno})",
        )
    finally:
        summary["wall_seconds"] = time.perf_counter() - start
        if log is not None:
            log.close()
        if out is not None:
            write_json_atomic(out / "summary.json", summary)
    if callback_error is not None:
        raise callback_error
    return summary
