"""The ``grape`` command line: presets, show, tasks, train, evolve, worker, report, export, docs."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.syntax import Syntax
from rich.table import Table

from grape_evo.cli_campaign import CampaignProgress, print_discoveries
from grape_evo.objective import ObjectiveError, ObjectiveSpec, presets
from grape_evo.policy import PolicyConfig, resolve_device
from grape_evo.policy.precision import resolve_precision
from grape_evo.search.campaign import (
    Campaign,
    CampaignError,
    budget_used,
    load_campaign_from_storage,
    load_run_study,
)
from grape_evo.search.campaign.lookup import TrialObjective, is_trial_ref, trial_objective
from grape_evo.search.space import SpaceError, load_space
from grape_evo.tasks import build_task, describe_tasks
from grape_evo.training import TrainConfig, train
from grape_evo.training.tracking import (
    REPORT_TO,
    TrackingError,
    make_tracker,
    run_settings,
    tracking_hook,
)

app = typer.Typer(
    help="GRAPE: search the space of RL post-training objectives.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console() if sys.stdout.isatty() else Console(width=160)
MIN_FREE_MB = 100  # a campaign folder needs at least this much free space (GRAPE_MIN_FREE_MB)
HEARTBEAT_HELP = "Seconds between a worker's heartbeats; a trial silent for 2x this is retried."
JOBS_HELP = (
    "Trials to run at once on this machine, each in its own process (torch threads: cores // "
    "JOBS; on CUDA they share the GPU)."
)
err_console = Console(stderr=True)
POPULATION_HELP = (
    "Train up to P candidates of each process at once in lockstep (one batched forward and "
    "backward for all of them; any objectives, any policy)."
)
CAMPAIGN_REPORT_HELP = (
    f"Also log every trained run ({', '.join(REPORT_TO[1:])}; optional packages): TensorBoard "
    "in each run folder's tensorboard/, the others as runs named STUDY/<run folder>."
)


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error (no traceback) and exit."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def load_objective(ref: str) -> ObjectiveSpec:
    """A preset name or a path to a YAML objective file."""
    if ref in presets.names():
        return presets.get(ref)
    path = Path(ref)
    if path.suffix in {".yaml", ".yml", ".json"} or path.exists():
        return ObjectiveSpec.from_yaml(path)
    raise ObjectiveError(f"'{ref}' is neither a preset nor a YAML file; presets: {presets.names()}")


@app.command("presets")
def presets_command() -> None:
    """List the preset objectives: each published algorithm as one point of the space."""
    table = Table(title="GRAPE presets (grape show NAME for the full spec and formula)")
    for column in ("name", "data", "G", "advantage", "surrogate", "KL", "aggregation", "paper"):
        table.add_column(column, overflow="fold")
    for name in presets.names():
        spec = presets.get(name).canonical()
        entry = presets.describe(name)
        if spec.preference is not None:
            advantage, aggregation = "-", "pair mean"
            surrogate = f"{spec.preference.name} β={spec.preference.loss.get('beta'):g}"
        else:
            advantage, surrogate = spec.advantage.name, spec.surrogate.name
            aggregation = spec.aggregation.name
        kl = f"{spec.kl.estimator}@{spec.kl.placement} {spec.kl.coef:g}" if spec.kl.active else "-"
        table.add_row(
            name,
            spec.data,
            str(spec.group_size),
            advantage,
            surrogate,
            kl,
            aggregation,
            entry.paper.split(",")[0],
        )
    console.print(table)


@app.command("show")
def show_command(
    objective: str = typer.Argument(..., help="A preset name or a YAML objective file."),
) -> None:
    """Print one objective as YAML and its loss as a formula."""
    try:
        spec = load_objective(objective)
    except ObjectiveError as err:
        fail(str(err))
    console.print(Syntax(spec.to_yaml(), "yaml", theme="ansi_dark", background_color="default"))
    if objective in presets.names():
        entry = presets.describe(objective)
        console.print(f"[bold]paper:[/] {entry.paper}")
        if entry.note:
            console.print(f"[bold]settings:[/] {entry.note}")
    console.print(f"[bold]key:[/] {spec.key()}")
    console.print("[bold]per-token loss:[/]")
    console.print(str(spec.to_sympy()), highlight=False, soft_wrap=True)
    console.print("[bold]LaTeX:[/]")
    console.print(spec.latex(), highlight=False, soft_wrap=True)


@app.command("tasks")
def tasks_command() -> None:
    """List the built-in tasks: reward type, answer length and a one-line summary."""
    table = Table(title="GRAPE tasks (answer tokens: gold length in characters, min-max)")
    for column in ("name", "reward", "answer tokens", "budget", "warm start", "summary"):
        table.add_column(column, overflow="fold")
    for info in describe_tasks():
        low, high = info.answer_tokens
        table.add_row(
            info.name,
            info.reward_kind,
            str(low) if low == high else f"{low}-{high}",
            str(info.max_new_tokens),
            str(info.warm_start_steps),
            info.summary,
        )
    console.print(table)


@app.command("train")
def train_command(
    objective: str = typer.Option(..., help="A preset name or a YAML objective file."),
    task: str = typer.Option(
        "addition", help="A built-in task (grape tasks) or a task file (.yaml, see README)."
    ),
    steps: int = typer.Option(200, min=1, help="RL steps."),
    seed: int = typer.Option(0, help="Seed of the warm start, sampling and prompts."),
    out: Path = typer.Option(..., help="Run folder: metrics.jsonl and summary.json go here."),
    device: str = typer.Option("auto", help="cpu, cuda, or auto (cuda when available)."),
    lora_rank: int = typer.Option(0, min=0, help="Train a LoRA adapter of this rank (0 = all)."),
    policy: str = typer.Option("tiny", help="Policy preset (tiny, small) or a local HF path."),
    lr: float = typer.Option(TrainConfig.lr, min=0.0, help="Learning rate."),
    batch_size: int = typer.Option(TrainConfig.batch_size, min=1, help="Completions per step."),
    eval_every: int = typer.Option(TrainConfig.eval_every, min=1, help="Steps between evals."),
    warm_start_steps: int = typer.Option(
        TrainConfig.warm_start_steps,
        min=0,
        help="SFT steps of the (cached) reference policy; 0 = none: start from --policy as is.",
    ),
    warm_start_lr: float = typer.Option(
        TrainConfig.warm_start_lr, min=0.0, help="Learning rate of the SFT warm start."
    ),
    save_model: bool = typer.Option(
        False, help="Write the trained policy to OUT/model (save_pretrained; LoRA: the adapter)."
    ),
    precision: str = typer.Option(
        "fp32", help="fp32, bf16 (bfloat16 autocast, float32 weights) or auto (bf16 on CUDA)."
    ),
    report_to: str = typer.Option(
        "none",
        help="Also log step metrics and eval samples to tensorboard (OUT/tensorboard), wandb, "
        "mlflow or trackio (optional packages).",
    ),
) -> None:
    """Train a small policy with one objective and write its run folder."""
    try:
        spec = load_objective(objective)
        task_obj = build_task(task)
        if warm_start_steps > 0:
            task_obj.require_demonstrations()
        config = TrainConfig(
            steps=steps,
            seed=seed,
            lr=lr,
            batch_size=batch_size,
            eval_every=eval_every,
            warm_start_steps=warm_start_steps,
            warm_start_lr=warm_start_lr,
            device=device,
            precision=resolve_precision(precision, resolve_device(device)),
        )
        is_path = Path(policy).exists()
        policy_config = PolicyConfig(
            preset="tiny" if is_path else policy,
            checkpoint=policy if is_path else None,
            lora_rank=lora_rank,
        )
        prepare_out_dir(out)
        settings = run_settings(spec, task_obj, config, policy_config)
        tracker = make_tracker(report_to, out, out.resolve().name, settings)
    except (ObjectiveError, ValueError, OSError) as err:
        fail(str(err))
    hook = None if tracker is None else tracking_hook(tracker)
    try:
        summary = train(
            spec, task_obj, config, policy_config, out, on_step=hook, save_model=save_model
        )
    finally:
        if tracker is not None:
            tracker.close()
    initial, final = summary.initial_eval, summary.final_eval
    console.print(
        f"[bold]{spec.name}[/] on {task_obj.name}: status [bold]{summary.status}[/] "
        f"{escape(summary.reason)}".rstrip()
    )
    if final is not None and initial is not None:
        console.print(
            f"held-out accuracy {initial.accuracy:.3f} -> {final.accuracy:.3f}, "
            f"reward {initial.reward:.3f} -> {final.reward:.3f}, "
            f"KL to reference {final.kl_to_ref:.3f} nats/sequence, "
            f"{summary.wall_seconds:.0f} s"
        )
    outputs = [out / "metrics.jsonl", out / "summary.json"]
    if summary.model:
        outputs.append(Path(summary.model))
    console.print("outputs: " + ", ".join(map(str, outputs)), markup=False)
    if not summary.ok:
        raise typer.Exit(1)


@app.command("evolve")
def evolve_command(
    space_file: Path = typer.Argument(..., help="Search-space YAML (see search_spaces/)."),
    out: Path = typer.Option(..., help="Campaign folder: study, trial runs, discoveries."),
    trials: int | None = typer.Option(
        None, min=1, help="Candidates to try, baselines not counted (default: the YAML's)."
    ),
    storage: str | None = typer.Option(
        None, help="Optuna storage URL (default sqlite in OUT; postgresql://... or journal:PATH)."
    ),
    resume: bool = typer.Option(False, help="Continue the study in OUT (or start one)."),
    device: str = typer.Option("cpu", help="cpu, cuda or auto."),
    heartbeat: int = typer.Option(10, min=1, help=HEARTBEAT_HELP),
    jobs: int = typer.Option(1, min=1, help=JOBS_HELP),
    population: int = typer.Option(1, min=1, help=POPULATION_HELP),
    report_to: str = typer.Option("none", help=CAMPAIGN_REPORT_HELP),
) -> None:
    """Run an evolution campaign over a search space, then re-evaluate the best on fresh seeds."""
    try:
        space = load_space(space_file)
        resolve_device(device)
        prepare_out_dir(out)
        campaign = Campaign(
            space,
            out,
            storage_url=storage,
            device=device,
            heartbeat_interval=heartbeat,
            jobs=jobs,
            population=population,
            report_to=report_to,
        )
        if campaign.exists() and not resume:
            fail(
                f"{out} already holds the study '{space.name}': pass --resume to continue it, "
                "or choose another --out"
            )
        study = campaign.open(create=True)
    except (SpaceError, CampaignError, ValueError, OSError) as err:
        fail(str(err))
    # The budget counts candidates; the baselines run on top of it.
    candidates = trials or int(study.user_attrs.get("candidates", space.search.trials))
    budget = candidates + len(space.baselines)
    study.set_user_attr("candidates", candidates)
    study.set_user_attr("budget", budget)
    try:  # a tracker that cannot start its first run (no login, no server) stops here
        with CampaignProgress(console, study, budget, jobs, population) as progress:
            campaign.optimize(study, budget, progress.trial_finished, wait_for_running=True)
        console.print("re-evaluating the top candidates and the baselines on fresh seeds ...")
        rows = campaign.reevaluate(study)
    except TrackingError as err:
        fail(str(err))
    print_discoveries(console, rows, out)


@app.command("worker")
def worker_command(
    storage: str = typer.Option(..., help="The campaign's Optuna storage URL."),
    study: str = typer.Option(..., help="The study (search space) name."),
    out: Path | None = typer.Option(None, help="Where this worker writes trial runs."),
    device: str = typer.Option("cpu", help="cpu, cuda or auto."),
    heartbeat: int = typer.Option(10, min=1, help=HEARTBEAT_HELP),
    jobs: int = typer.Option(1, min=1, help=JOBS_HELP),
    population: int = typer.Option(1, min=1, help=POPULATION_HELP),
    report_to: str = typer.Option("none", help=CAMPAIGN_REPORT_HELP),
) -> None:
    """Join a running campaign from another process or host and run trials until its budget."""
    try:
        resolve_device(device)
        campaign = load_campaign_from_storage(
            storage,
            study,
            out,
            device=device,
            heartbeat_interval=heartbeat,
            jobs=jobs,
            population=population,
            report_to=report_to,
        )
        prepare_out_dir(campaign.out_dir)
        opened = campaign.open(create=False)
    except (SpaceError, CampaignError, ValueError, OSError) as err:
        fail(str(err))
    space = campaign.space
    budget = int(opened.user_attrs.get("budget", space.search.trials + len(space.baselines)))
    try:
        with CampaignProgress(console, opened, budget, jobs, population) as progress:
            # Waits for trials running elsewhere: if their worker dies, this one retries them.
            campaign.optimize(opened, budget, progress.trial_finished, wait_for_running=True)
    except TrackingError as err:
        fail(str(err))
    console.print(f"worker done: study '{study}' has {budget_used(opened)}/{budget} trials")


@app.command("report")
def report_command(
    run_dir: Path = typer.Argument(..., help="A campaign folder written by `grape evolve`."),
    out: Path | None = typer.Option(None, help="Report folder (default RUN_DIR/report)."),
) -> None:
    """Write report.md, figures and trials.csv for a campaign."""
    from grape_evo.analysis import write_report

    try:
        load_run_study(run_dir)
    except CampaignError as err:
        fail(str(err))
    try:
        path = write_report(run_dir, out)
    except (ValueError, OSError, KeyError) as err:
        fail(f"cannot write the report for {run_dir}: {err}")
    console.print(f"report: {path}", markup=False)


@app.command("export")
def export_command(
    objective: str = typer.Argument(
        ..., help="A preset name, a YAML objective file, or a campaign's RUN:trial-N / RUN:best."
    ),
    to: str = typer.Option(..., "--to", help="Target library: trl or verl."),
    out: Path = typer.Option(..., help="Export folder: config, objective.yaml, README.md."),
    lr: float | None = typer.Option(None, help="Learning rate to write into the config."),
    batch_size: int | None = typer.Option(None, help="Completions per rollout batch."),
    group_size: int | None = typer.Option(None, help="Replace the objective's group size."),
    steps: int | None = typer.Option(None, help="Rollout batches (training steps)."),
    temperature: float | None = typer.Option(None, help="Sampling temperature."),
    max_new_tokens: int | None = typer.Option(None, help="Generation budget per completion."),
) -> None:
    """Write TRL or verl settings that compute this objective's loss (or a TRL trainer
    subclass that computes grape's loss where no stock setting does). RUN:trial-N exports the
    objective of trial N of the campaign folder RUN; RUN:best its completed trial with the
    best score."""
    from grape_evo.export import ExportSettings, check_target, export

    found: TrialObjective | None = None
    try:
        check_target(to)
        if is_trial_ref(objective):
            found = trial_objective(objective)
            spec = found.spec
        else:
            spec = load_objective(objective)
        settings = ExportSettings(
            lr=lr,
            batch_size=batch_size,
            group_size=group_size,
            steps=steps,
            temperature=temperature,
            max_new_tokens=max_new_tokens,
        )
        prepare_out_dir(out, min_free_mb=1)
        result = export(spec, to, out, settings)
    except (ObjectiveError, ValueError, OSError) as err:
        fail(str(err))
    mapping = result.mapping
    detail = mapping.trainer if mapping.status == "exact" else "; ".join(mapping.notes)
    if found is not None:
        score = "-" if found.score is None else f"{found.score:.4f}"
        line = f"{objective}: {found.label} ({found.state}, score {score})"
        if lr is None and "lr" in found.overrides:
            line += f"; it trained at lr {found.overrides['lr']:g} (--lr sets the exported rate)"
        console.print(line, markup=False, soft_wrap=True)
    console.print(f"[bold]{spec.name}[/] -> {to}: [bold]{mapping.status}[/] ({escape(detail)})")
    console.print("wrote " + ", ".join(str(p) for p in result.files), markup=False)


docs_app = typer.Typer(help="Regenerate the generated documentation.", no_args_is_help=True)
app.add_typer(docs_app, name="docs")


@docs_app.command("algorithms")
def docs_algorithms_command(
    out: Path = typer.Option(Path("docs/algorithms.md"), help="Markdown file to write."),
) -> None:
    """Write docs/algorithms.md: every preset's axes, formula, nearest neighbour and origin."""
    from grape_evo.docs import algorithms_markdown

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(algorithms_markdown())
    except OSError as err:
        fail(f"cannot write {out}: {err.strerror or err}")
    console.print(f"wrote {out}", markup=False)


@docs_app.command("export-table")
def docs_export_table_command(
    readme: Path = typer.Option(Path("README.md"), help="README holding the table's markers."),
) -> None:
    """Rewrite the README's table of presets against TRL and verl from the export mappings."""
    from grape_evo.export import update_readme

    try:
        changed = update_readme(readme)
    except (ValueError, OSError) as err:
        fail(f"cannot update {readme}: {err}")
    console.print(f"{readme}: {'updated' if changed else 'up to date'}", markup=False)


def prepare_out_dir(out: Path, min_free_mb: float | None = None) -> None:
    """Create the run folder and check, now rather than after an hour of training, that it is
    writable and has ``min_free_mb`` free (default ``GRAPE_MIN_FREE_MB`` or 100 MB)."""
    if min_free_mb is None:
        min_free_mb = float(os.environ.get("GRAPE_MIN_FREE_MB", MIN_FREE_MB))
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise OSError(f"the output folder {out} is not writable: {err.strerror or err}") from None
    free_mb = shutil.disk_usage(out).free / 2**20
    if free_mb < min_free_mb:
        raise OSError(
            f"the output folder {out} has {free_mb:.0f} MB free, less than the {min_free_mb:.0f} "
            "MB a run needs (free some space, or set GRAPE_MIN_FREE_MB)"
        )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
