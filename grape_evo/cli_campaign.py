"""What `grape evolve` and `grape worker` print while a campaign runs, and its discoveries.

In a terminal: a rich progress bar (trials done of the budget, the best so far) and a table of
the fresh-seed re-evaluation. Anywhere else (output piped to a file, as under nohup or a batch
scheduler, where a bar would be drawn once, at the end): one plain line per finished trial,
a summary line, and one line per re-evaluated objective, each flushed as it is printed::

    trial 3 trial-3: COMPLETE fitness 0.1234 | seeds 2 | 4.1 s
    trial 4 trial-4: PRUNED (pruned at global step 2: reward 0.120) | seeds 1 | 1.9 s
    campaign tiny: 6/6 trials; best 0.123 (trial-3)  pruned 1  failed 0
    reevaluated trial-3: effect +0.012 CI [-0.004, +0.029] verdict unresolved | reward 0.512 | ...
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from grape_evo.search.campaign import budget_used, summarize
from grape_evo.search.records import TrialRecord

__all__ = ["CampaignProgress", "print_discoveries", "reevaluated_line", "trial_line"]


class CampaignProgress:
    """The progress of a campaign on ``console`` while the ``with`` block runs; pass
    `trial_finished` to `Campaign.optimize` as its ``on_trial``."""

    def __init__(
        self, console: Console, study: optuna.Study, budget: int, jobs: int, population: int
    ) -> None:
        self.console, self.study, self.budget = console, study, budget
        modes = [f"{jobs} jobs"] * (jobs > 1) + [f"population {population}"] * (population > 1)
        self.name = f"campaign {study.study_name}" + (f" ({', '.join(modes)})" if modes else "")
        self.plain = not console.is_terminal
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            console=console,
            disable=self.plain,
        )
        self.job = self.bar.add_task(self.name, total=budget, status="")

    def __enter__(self) -> CampaignProgress:
        self.bar.start()
        self._refresh()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self._refresh()
        self.bar.stop()
        if exc_type is None and self.plain:
            done = budget_used(self.study)
            self._print(f"{self.name}: {done}/{self.budget} trials; {self._status()}")

    def trial_finished(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """One trial finished (in this process or in one of its workers)."""
        if self.plain:
            self._print(trial_line(study, trial))
        self._refresh()

    def _refresh(self) -> None:
        self.bar.update(self.job, completed=budget_used(self.study), status=self._status())

    def _status(self) -> str:
        info = summarize(self.study)
        best = info["best_score"]
        best_text = "-" if best is None else f"{best:.3f} ({info['best_label']})"
        return f"best {best_text}  pruned {info['pruned']}  failed {info['failed']}"

    def _print(self, line: str) -> None:
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)


def trial_line(study: optuna.Study, trial: FrozenTrial) -> str:
    """One finished trial: number, label, state, its values (named as the study's metrics)
    or why it has none, the seeds it ran and its wall time."""
    record = TrialRecord.of(trial)
    head = f"trial {trial.number} {record.label(trial.number)}: {trial.state.name}"
    if trial.state == TrialState.COMPLETE and trial.values:
        names = study.metric_names or [f"value_{i}" for i in range(len(trial.values))]
        head += "".join(f" {n} {v:.4f}" for n, v in zip(names, trial.values, strict=True))
        if record.reused_from is not None:
            head += f" (reused from trial {record.reused_from})"
    else:
        surplus = "surplus: the budget was claimed elsewhere (not trained, not counted)"
        head += f" ({record.failure or (surplus if record.surplus else 'no reason recorded')})"
    seeds = len({run.seed for run in record.runs})
    elapsed = "-" if trial.duration is None else f"{trial.duration.total_seconds():.1f} s"
    return f"{head} | seeds {seeds} | {elapsed}"


def reevaluated_line(row: dict[str, Any]) -> str:
    """One row of the fresh-seed re-evaluation: label, paired effect to the reference with its
    interval and verdict, mean reward, seeds and status."""
    ci = f"[{_fmt(row.get('ci_low'), True)}, {_fmt(row.get('ci_high'), True)}]"
    return (
        f"reevaluated {_label(row)}: effect {_fmt(row.get('paired_effect'), True)} CI {ci} "
        f"verdict {row.get('verdict') or '-'} | reward {_fmt(row['reward'])} | "
        f"seeds {_seeds(row)} | {row['status']}"
    )


def print_discoveries(console: Console, rows: list[dict[str, Any]], out: Path) -> None:
    """The re-evaluated objectives, ranked: a table in a terminal, else one line each."""
    reference = next((r["reference"] for r in rows if r.get("reference")), None)
    title = "fresh-seed re-evaluation: held-out reward"
    if reference:
        title += f"; effect = paired difference to {reference} (t-interval, Bonferroni)"
    if console.is_terminal:
        console.print(_table(title, rows))
    else:
        console.print(title, markup=False, highlight=False, soft_wrap=True)
        for row in rows:
            console.print(reevaluated_line(row), markup=False, highlight=False, soft_wrap=True)
    console.print(f"discoveries: {out / 'discoveries.json'}; study: {out}", markup=False)


def _table(title: str, rows: list[dict[str, Any]]) -> Table:
    table = Table(title=title)
    columns = ["rank", "objective", "reward", "effect", "CI", "verdict", "seeds", "KL to ref"]
    for column in [*columns, "status"]:
        table.add_column(column)
    for rank, row in enumerate(rows, 1):
        table.add_row(
            str(rank),
            _label(row),
            _fmt(row["reward"]),
            _fmt(row.get("paired_effect"), signed=True),
            f"[{_fmt(row.get('ci_low'), True)}, {_fmt(row.get('ci_high'), True)}]",
            row.get("verdict") or "-",
            _seeds(row),
            _fmt(row["kl_to_ref"]),
            row["status"],
        )
    return table


def _label(row: dict[str, Any]) -> str:
    label = row["label"] + (" (baseline)" if row["baseline"] else "")
    return label + (" (reference)" if row.get("reference") == row["label"] else "")


def _seeds(row: dict[str, Any]) -> str:
    return str(row.get("n_seeds", len(row["rewards"])))


def _fmt(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x:+.3f}" if signed else f"{x:.3f}"
