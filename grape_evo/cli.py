"""The ``grape`` command line: presets, show, train."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table

from grape_evo.objective import ObjectiveError, ObjectiveSpec, presets
from grape_evo.policy import PolicyConfig, resolve_device
from grape_evo.tasks import get_task
from grape_evo.training import TrainConfig, train

app = typer.Typer(
    help="GRAPE: search the space of RL post-training objectives.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console() if sys.stdout.isatty() else Console(width=160)
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error (no traceback) and exit."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
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


@app.command("train")
def train_command(
    objective: str = typer.Option(..., help="A preset name or a YAML objective file."),
    task: str = typer.Option("addition", help="Task name (see grape_evo.tasks)."),
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
        TrainConfig.warm_start_steps, min=0, help="SFT steps of the (cached) reference policy."
    ),
) -> None:
    """Train a small policy with one objective and write its run folder."""
    try:
        spec = load_objective(objective)
        task_obj = get_task(task)
        config = TrainConfig(
            steps=steps,
            seed=seed,
            lr=lr,
            batch_size=batch_size,
            eval_every=eval_every,
            warm_start_steps=warm_start_steps,
            device=device,
        )
        is_path = Path(policy).exists()
        policy_config = PolicyConfig(
            preset="tiny" if is_path else policy,
            checkpoint=policy if is_path else None,
            lora_rank=lora_rank,
        )
        resolve_device(device)
        prepare_out_dir(out)
    except (ObjectiveError, ValueError, OSError) as err:
        fail(str(err))
    summary = train(spec, task_obj, config, policy_config, out_dir=out)
    initial, final = summary["initial_eval"] or {}, summary["final_eval"] or {}
    console.print(
        f"[bold]{spec.name}[/] on {task}: status [bold]{summary['status']}[/] "
        f"{summary['reason']}".rstrip()
    )
    if final:
        console.print(
            f"held-out accuracy {initial.get('accuracy', 0):.3f} -> {final['accuracy']:.3f}, "
            f"reward {initial.get('reward', 0):.3f} -> {final['reward']:.3f}, "
            f"KL to reference {final['kl_to_ref']:.3f} nats/sequence, "
            f"{summary['wall_seconds']:.0f} s"
        )
    console.print(f"outputs: {out / 'metrics.jsonl'}, {out / 'summary.json'}")
    if summary["status"] != "ok":
        raise typer.Exit(1)


def prepare_out_dir(out: Path) -> None:
    """Create the run folder and check it is writable now, not after an hour of training."""
    out.mkdir(parents=True, exist_ok=True)
    probe = out / ".write-test"
    probe.write_text("ok")
    probe.unlink()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
