"""Experiment trackers (``--report-to`` of ``grape train``, ``grape evolve`` and ``grape
worker``): the step metrics every step and a few sampled completions at each evaluation, sent
to TensorBoard, Weights & Biases, MLflow or Trackio.

A `Tracker` has three methods: ``log_scalars(values, step)``, ``log_samples(samples, step)``
and ``close()``. `make_tracker` builds the one a ``--report-to`` name asks for, importing its
package only then (the packages are optional: ``pip install 'grape-evo[tracking]'`` for
TensorBoard); a missing package is a `TrackingError` naming the ``pip install`` command, which
`check_report_to` raises without starting a run (a campaign checks before it trains).
`tracking_hook` turns a tracker into the training loop's per-step hook (`StepHook`), so the
loop itself knows nothing of trackers; `with_tracker` puts it in front of another hook (a
pruner's), whose stop reason alone decides: a tracker never stops a run.

What is logged, at the 1-based ``step`` of `StepRecord`:

* scalars: every number of the step's ``metrics.jsonl`` record except ``step`` (missing and
  non-finite values skipped), named ``train/<key>``, or ``eval/<key>`` for its ``eval_<key>``
  values;
* at each evaluation, ``eval/samples``: the evaluation's sampled completions (prompt,
  completion, gold reward), as a table (wandb, trackio) or a markdown table (TensorBoard text,
  an MLflow text artifact ``samples/step_NNNNNN.md``).

Where runs go: TensorBoard writes ``OUT/tensorboard`` (OUT: the run folder); wandb (files under
OUT) and trackio log to project ``grape-evo`` and MLflow to experiment ``grape-evo``
(``WANDB_PROJECT`` and ``MLFLOW_EXPERIMENT_NAME`` override), each run named after the run
folder, with the run's settings (`run_settings`) as its config. A campaign (`RunTracking`)
tracks every run it trains, trials, baselines, the reference, learning-rate tuning and the
re-evaluation, each under its own run folder and named ``<study>/<run folder under the
campaign folder>`` (``tiny/trials/00003/addition/seed0``). The members of a lockstep batch are
tracked at the same time, so each tracker holds its own run object (wandb ``reinit=
"create_new"``, an MLflow client run, a trackio `Run`), never a process-wide current run.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

from grape_evo.training.records import Sample, StepRecord
from grape_evo.training.run import StepHook

if TYPE_CHECKING:
    from grape_evo.objective import ObjectiveSpec
    from grape_evo.policy import PolicyConfig
    from grape_evo.tasks import Task
    from grape_evo.training.config import TrainConfig

_MODULES: dict[str, str] = {
    "tensorboard": "torch.utils.tensorboard",
    "wandb": "wandb",
    "mlflow": "mlflow",
    "trackio": "trackio",
}
"""The module each backend imports; its pip package has the backend's name."""
REPORT_TO: tuple[str, ...] = ("none", *_MODULES)
"""The ``--report-to`` choices."""
PROJECT = "grape-evo"
SAMPLES_TAG = "eval/samples"


class TrackingError(ValueError):
    """An unknown ``--report-to`` choice, or its package is not installed."""


class Tracker(Protocol):
    """Where a run's metrics and sample completions are sent."""

    def log_scalars(self, values: dict[str, float], step: int) -> None: ...
    def log_samples(self, samples: Sequence[Sample], step: int) -> None: ...
    def close(self) -> None: ...


def _require(backend: str) -> ModuleType:
    """Import the module of ``--report-to backend``, or explain how to install it."""
    try:
        return importlib.import_module(_MODULES[backend])
    except ImportError as err:
        raise TrackingError(
            f"--report-to {backend} needs the {backend} package, which is not installed: "
            f"pip install {backend}"
        ) from err


def check_report_to(report_to: str) -> None:
    """Raise `TrackingError` when ``report_to`` is not a ``--report-to`` choice or its
    package is not installed; starts no run."""
    if report_to == "none":
        return
    if report_to not in _MODULES:
        raise TrackingError(f"--report-to: unknown {report_to!r}; valid choices: {list(REPORT_TO)}")
    _require(report_to)


def run_settings(
    spec: ObjectiveSpec, task: Task, config: TrainConfig, policy_config: PolicyConfig
) -> dict[str, Any]:
    """A run's settings as a tracker's config: objective, task, training and policy."""
    return {
        "objective": spec.to_dict(),
        "task": task.config(),
        "train": config.to_dict(),
        "policy": policy_config.to_dict(),
    }


def step_scalars(record: StepRecord) -> dict[str, float]:
    """The finite numbers of ``record``'s metrics.jsonl line by tag (see the module
    docstring)."""
    values = {}
    for key, value in record.to_dict().items():
        if key == "step" or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value):
            tag = f"eval/{key.removeprefix('eval_')}" if key.startswith("eval_") else f"train/{key}"
            values[tag] = float(value)
    return values


def samples_markdown(samples: Sequence[Sample]) -> str:
    """A markdown table of the samples, one row each (``|`` and line breaks escaped)."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", "<br>")

    rows = [f"| {cell(s.prompt)} | {cell(s.completion)} | {s.reward:.4g} |" for s in samples]
    return "\n".join(["| prompt | completion | reward |", "|---|---|---|", *rows])


def tracking_hook(tracker: Tracker) -> StepHook:
    """The per-step hook sending each `StepRecord` to ``tracker`` (it never stops a run)."""

    def hook(record: StepRecord) -> None:
        tracker.log_scalars(step_scalars(record), record.step)
        if record.evaluation is not None and record.evaluation.samples:
            tracker.log_samples(record.evaluation.samples, record.step)

    return hook


def with_tracker(hook: StepHook | None, tracker: Tracker | None) -> StepHook | None:
    """``hook`` with each record first sent to ``tracker``: the stop reason is ``hook``'s
    alone, so a pruned run is logged up to the step that stopped it."""
    if tracker is None:
        return hook
    track = tracking_hook(tracker)
    if hook is None:
        return track

    def both(record: StepRecord) -> str | None:
        track(record)
        return hook(record)

    return both


class TensorBoardTracker:
    """Event files in ``log_dir`` (`torch.utils.tensorboard.SummaryWriter`)."""

    def __init__(self, log_dir: Path, config: dict[str, Any]) -> None:
        tensorboard = _require("tensorboard")
        self.writer = tensorboard.SummaryWriter(log_dir=str(log_dir), flush_secs=10)
        settings = json.dumps(config, indent=2, default=str)
        self.writer.add_text("config", f"```\n{settings}\n```", 0)

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def log_samples(self, samples: Sequence[Sample], step: int) -> None:
        self.writer.add_text(SAMPLES_TAG, samples_markdown(samples), step)

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """A Weights & Biases run (``wandb.init``, a new run even while others are active), its
    local files under ``out_dir``."""

    def __init__(self, out_dir: Path, name: str, config: dict[str, Any]) -> None:
        self.wandb = _require("wandb")
        project = os.environ.get("WANDB_PROJECT", PROJECT)
        self.run = self.wandb.init(
            project=project, name=name, config=config, dir=str(out_dir), reinit="create_new"
        )

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def log_samples(self, samples: Sequence[Sample], step: int) -> None:
        table = self.wandb.Table(columns=list(Sample._fields), data=[list(s) for s in samples])
        self.run.log({SAMPLES_TAG: table}, step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    """An MLflow run created by an ``MlflowClient`` (not the process-wide active run) at the
    tracking URI MLflow is configured with."""

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        mlflow = _require("mlflow")
        self.entities = importlib.import_module("mlflow.entities")
        experiment = mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", PROJECT))
        self.client = mlflow.MlflowClient()
        self.run_id = self.client.create_run(experiment.experiment_id, run_name=name).info.run_id
        params = [self.entities.Param(k, str(v)) for k, v in _flatten(config).items()]
        self.client.log_batch(self.run_id, params=params)

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        metric = self.entities.Metric
        metrics = [metric(tag, value, now, step) for tag, value in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_samples(self, samples: Sequence[Sample], step: int) -> None:
        path = f"samples/step_{step:06d}.md"
        self.client.log_text(self.run_id, samples_markdown(samples), path)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class TrackioTracker:
    """A Trackio run (the `Run` ``trackio.init`` returns), stored where Trackio stores runs."""

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        self.trackio = _require("trackio")
        self.run = self.trackio.init(project=PROJECT, name=name, config=config)

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def log_samples(self, samples: Sequence[Sample], step: int) -> None:
        import pandas as pd

        frame = pd.DataFrame([s._asdict() for s in samples])
        self.run.log({SAMPLES_TAG: self.trackio.Table(dataframe=frame)}, step=step)

    def close(self) -> None:
        self.run.finish()


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as one level of dotted keys (``objective.advantage.name``)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def make_tracker(
    report_to: str, out_dir: Path, name: str, config: dict[str, Any]
) -> Tracker | None:
    """The tracker ``report_to`` names (None for ``none``) for the run in ``out_dir`` called
    ``name`` with settings ``config``. Raises `TrackingError` for an unknown name, a missing
    package or a backend that fails to start its run."""
    builders: dict[str, Callable[[], Tracker]] = {
        "tensorboard": lambda: TensorBoardTracker(out_dir / "tensorboard", config),
        "wandb": lambda: WandbTracker(out_dir, name, config),
        "mlflow": lambda: MlflowTracker(name, config),
        "trackio": lambda: TrackioTracker(name, config),
    }
    check_report_to(report_to)
    if report_to == "none":
        return None
    try:
        return builders[report_to]()
    except TrackingError:
        raise
    except Exception as err:  # a backend's own error (no server, no login, ...)
        raise TrackingError(
            f"--report-to {report_to}: could not start the run: {type(err).__name__}: {err}"
        ) from err


@dataclass(frozen=True)
class RunTracking:
    """``--report-to`` for the many runs of a campaign: each run folder under ``root`` is one
    tracker run, named ``prefix/<the folder's path under root>``."""

    report_to: str
    root: Path
    prefix: str

    def name(self, folder: Path) -> str:
        """The tracker run name of the run in ``folder`` (a folder under ``root``)."""
        return f"{self.prefix}/{folder.relative_to(self.root).as_posix()}"


@contextmanager
def open_trackers(
    tracking: RunTracking | None, runs: Sequence[tuple[Path, dict[str, Any]]]
) -> Iterator[list[Tracker | None]]:
    """One tracker per (run folder, settings) of ``runs`` (None each without ``tracking`` or
    with ``none``), all closed when the block ends, however it ends."""
    if tracking is None:
        yield [None] * len(runs)
        return
    with ExitStack() as stack:
        trackers: list[Tracker | None] = []
        for folder, settings in runs:
            tracker = make_tracker(tracking.report_to, folder, tracking.name(folder), settings)
            if tracker is not None:
                stack.callback(tracker.close)
            trackers.append(tracker)
        yield trackers
