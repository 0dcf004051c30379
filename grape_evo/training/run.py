"""Training runs end to end: warm start, M >= 1 members in lockstep, evaluation, run folders.

`train` trains one objective; `train_members` trains several, each from the warm start of its
seed (`Member.seed`), each with its own run folder and summary, the same contract as `train`
(**contract**, DESIGN.md section 4): ``OUT/metrics.jsonl`` and ``OUT/summary.json`` (and with
``save_model`` the trained policy in ``OUT/model``, see `grape_evo.training.saving`). A run
never ends in a traceback: a diverged run reports ``status: diverged``, a failure (a task that
raises, a model that outputs NaN, ...) ``status: failed`` and a run its caller stopped
(pruned) ``status: stopped``, each with a ``reason``. Ctrl-C still stops the run, leaving
what was written so far.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from grape_evo.objective import ObjectiveSpec, build_objective
from grape_evo.policy import PolicyConfig, resolve_device
from grape_evo.tasks import Task
from grape_evo.training.batches import sample_offline_pairs
from grape_evo.training.config import TrainConfig
from grape_evo.training.engine import Engine, Member
from grape_evo.training.initial_eval import evaluation_key, initial_evaluation
from grape_evo.training.losses import needs_critic
from grape_evo.training.members import seed_configs
from grape_evo.training.records import EvalReport, MetricsLog, RunStatus, RunSummary, StepRecord
from grape_evo.training.saving import MODEL_DIR, save_trained
from grape_evo.training.warm_start import warm_start_policy

StepHook = Callable[[StepRecord], str | None]
"""Called after every step with its record; a returned reason stops the run (e.g. a pruner's
decision): the run ends with ``status: stopped`` and that reason."""


def spec_needs_critic(spec: ObjectiveSpec) -> bool:
    """Whether training ``spec`` needs a value head (a critic advantage)."""
    return needs_critic(build_objective(spec))


def is_eval_step(config: TrainConfig, step: int) -> bool:
    """Whether the run evaluates after step ``step`` (0-based): every ``eval_every`` and last."""
    return (step + 1) % config.eval_every == 0 or step + 1 == config.steps


def _failure_reason(err: Exception) -> str:
    last = traceback.extract_tb(err.__traceback__)[-1]
    return f"{type(err).__name__}: {err} (at {Path(last.filename).name}:{last.lineno})"


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
    on_step: StepHook | None = None,
    save_model: bool = False,
) -> RunSummary:
    """Train ``spec`` on ``task`` from the cached warm start at ``config.lr``: `train_members`
    with one member."""
    member = Member(spec, config.lr)
    outs, hooks = [out_dir], [on_step]
    return train_members(
        [member], task, config, policy_config, outs, progress, cache_dir, hooks, save_model
    )[0]


def train_members(
    members: Sequence[Member],
    task: Task,
    config: TrainConfig,
    policy_config: PolicyConfig | None = None,
    out_dirs: Sequence[str | Path | None] | None = None,
    progress: bool = True,
    cache_dir: Path | None = None,
    on_steps: Sequence[StepHook | None] | None = None,
    save_model: bool = False,
) -> list[RunSummary]:
    """Train M members in lockstep, each from the warm start of its seed; one summary per
    member.

    Member i trains at its own ``lr`` (``config.lr`` is not used) on its own seed (``seed``,
    default ``config.seed``); its run folder ``out_dirs[i]`` and summary follow the contract
    above, with ``trained_with`` = M and ``train_config`` its own rate and seed. A LoRA policy
    trains one engine per seed (its adapters would need each seed's base weights).
    ``on_steps[i]`` is called after each of its steps. With ``save_model``, a member that ends
    ``ok`` or ``stopped`` and has a run folder gets its trained policy written to
    ``OUT/model`` (summary field ``model``).
    """
    start = time.perf_counter()
    count = len(members)
    outs = [None if d is None else Path(d) for d in out_dirs or [None] * count]
    hooks = list(on_steps or [None] * count)
    if not members or len(outs) != count or len(hooks) != count:
        raise ValueError(
            f"train_members needs one out dir and hook per member: {count} members, "
            f"{len(outs)} out dirs, {len(hooks)} hooks"
        )
    device = resolve_device(config.device)
    base_policy = policy_config or PolicyConfig()
    seeds, configs = seed_configs(members, config)
    if len(configs) > 1 and base_policy.use_lora:
        return _per_seed(
            members, seeds, task, configs, base_policy, outs, progress, cache_dir, hooks, save_model
        )
    critics = [spec_needs_critic(m.spec) for m in members]
    summaries = [
        RunSummary(
            objective=m.spec.to_dict(),
            objective_key=m.spec.key(),
            task=task.config(),
            seed=seed,
            train_config=replace(config, lr=m.lr, seed=seed).to_dict(),
            policy=replace(base_policy, value_head=critic).to_dict(),
            device=str(device),
            trained_with=count,
        )
        for m, critic, seed in zip(members, critics, seeds, strict=True)
    ]
    logs: list[MetricsLog | None] = []
    torch.manual_seed(config.seed)
    try:
        with _progress(progress) as bar:
            label = members[0].spec.name if count == 1 else f"{count} members"
            job = bar.add_task(f"{label} on {task.name}", total=config.steps, status="warm start")
            policy_cfg = replace(base_policy, value_head=any(critics))
            starts = {
                seed: warm_start_policy(task, policy_cfg, cfg, device, cache_dir)
                for seed, cfg in configs.items()
            }
            policies = {seed: policy for seed, (policy, _) in starts.items()}
            pairs = {}
            if any(m.spec.canonical().data == "preference_pairs" for m in members):
                bar.update(job, status="labelling preference pairs")
                pairs = {s: sample_offline_pairs(policies[s], task, c) for s, c in configs.items()}
            engine = Engine(members, task, config, policies, pairs)
            logs = [None if o is None else MetricsLog(o / "metrics.jsonl") for o in outs]
            # the members of a seed start from the same weights: one evaluation per seed,
            # cached beside its warm start
            initial = {
                seed: initial_evaluation(
                    cache,
                    evaluation_key(configs[seed], policy_cfg, device.type),
                    lambda seed=seed: _evaluate_first(engine, seeds.index(seed)),
                )
                for seed, (_, cache) in starts.items()
            }
            last_evals = [initial[seed] for seed in seeds]
            for summary, seed in zip(summaries, seeds, strict=True):
                cache = starts[seed][1]
                summary.initial_eval = initial[seed]
                summary.warm_start_cache = "" if cache is None else str(cache)
            for step in range(config.steps):
                live = engine.live
                if not live:
                    break
                results = engine.step(step)
                evaluations = engine.evaluate() if is_eval_step(config, step) else [None] * count
                for i in live:
                    status, reason = engine.status[i]
                    metrics, evaluation = results[i], evaluations[i]
                    if status != RunStatus.OK or metrics is None:
                        summaries[i].end(status, reason)
                        continue
                    last_evals[i] = evaluation or last_evals[i]
                    record = StepRecord(step + 1, metrics, evaluation, time.perf_counter() - start)
                    if (log := logs[i]) is not None:
                        log.write(record)
                    summaries[i].steps = step + 1
                    if (hook := hooks[i]) is not None and (why := hook(record)):
                        engine.stop(i, RunStatus.STOPPED, why)
                        summaries[i].end(RunStatus.STOPPED, why)
                bar.update(job, advance=1, status=_status_line(engine, results, last_evals))
            for i, (summary, evaluation) in enumerate(zip(summaries, last_evals, strict=True)):
                if summary.status not in (RunStatus.OK, RunStatus.STOPPED):
                    continue
                summary.final_eval = evaluation
                summary.kl_to_ref = evaluation.kl_to_ref if summary.ok and evaluation else None
                if save_model and (out := outs[i]) is not None:
                    engine.export(i, policies[seeds[i]])
                    summary.model = str(save_trained(policies[seeds[i]], out / MODEL_DIR))
    except (KeyboardInterrupt, SystemExit):
        for summary in summaries:
            summary.end(RunStatus.FAILED, "interrupted")
        raise
    except Exception as err:  # a candidate must never crash its caller
        for summary in summaries:
            summary.end(RunStatus.FAILED, _failure_reason(err))
    finally:
        wall_seconds = time.perf_counter() - start
        for log in logs:
            if log is not None:
                log.close()
        for summary, out in zip(summaries, outs, strict=True):
            summary.wall_seconds = wall_seconds
            if out is not None:
                summary.write(out / "summary.json")
    return summaries


def _evaluate_first(engine: Engine, member: int) -> EvalReport:
    report = engine.evaluate([member])[member]
    assert report is not None
    return report


def _per_seed(
    members: Sequence[Member],
    seeds: list[int],
    task: Task,
    configs: dict[int, TrainConfig],
    policy_config: PolicyConfig,
    outs: list[Path | None],
    progress: bool,
    cache_dir: Path | None,
    hooks: list[StepHook | None],
    save_model: bool,
) -> list[RunSummary]:
    """`train_members` with one engine per seed, summaries in the members' order."""
    summaries: list[RunSummary | None] = [None] * len(members)
    for seed, config in configs.items():
        own = [i for i, s in enumerate(seeds) if s == seed]
        trained = train_members(
            [replace(members[i], seed=None) for i in own],
            task,
            config,
            policy_config,
            [outs[i] for i in own],
            progress,
            cache_dir,
            [hooks[i] for i in own],
            save_model,
        )
        for i, summary in zip(own, trained, strict=True):
            summaries[i] = summary
    return [s for s in summaries if s is not None]


def _status_line(engine: Engine, results: list, last_evals: list) -> str:
    """The progress bar's status: one member's reward and accuracy, or how many still train."""
    if len(results) > 1:
        return f"{len(engine.live)} of {len(results)} training"
    reward = (results[0] or {}).get("reward", float("nan"))
    accuracy = last_evals[0].accuracy if last_evals[0] is not None else float("nan")
    return f"reward {reward:.3f}  eval acc {accuracy:.3f}"
