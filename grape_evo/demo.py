"""``make demo``: a small end-to-end run on CPU that shows what the toolkit does.

Trains GRPO, Dr. GRPO and PPO on the addition task from the same cached SFT warm start, then
prints held-out accuracy before and after and where each run folder is.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from grape_evo.objective import presets
from grape_evo.tasks import get_task
from grape_evo.training import TrainConfig, train

DEMO_PRESETS = ("grpo", "dr_grpo", "ppo")


def main(out: Path = Path("runs/demo"), steps: int = 60) -> None:
    console = Console()
    task = get_task("addition")
    table = Table(title=f"{steps} RL steps on addition (held-out, greedy)")
    for column in ("objective", "accuracy before", "accuracy after", "KL to ref", "status"):
        table.add_column(column)
    for name in DEMO_PRESETS:
        spec = presets.get(name)
        console.print(f"[bold]{name}[/]: {spec.latex(aggregate=False)}", highlight=False)
        summary = train(spec, task, TrainConfig(steps=steps, eval_every=20), out_dir=out / name)
        initial, final = summary["initial_eval"] or {}, summary["final_eval"] or {}
        table.add_row(
            name,
            f"{initial.get('accuracy', float('nan')):.3f}",
            f"{final.get('accuracy', float('nan')):.3f}",
            f"{final.get('kl_to_ref', float('nan')):.3f}",
            summary["status"],
        )
    console.print(table)
    console.print(f"run folders (metrics.jsonl, summary.json): {out.resolve()}")


if __name__ == "__main__":
    main()
