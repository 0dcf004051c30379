"""Experiment trackers (``grape train --report-to``): the step metrics every step and a few
sampled completions at each evaluation, sent to TensorBoard, Weights & Biases, MLflow or
Trackio.

A `Tracker` has three methods: ``log_scalars(values, step)``, ``log_samples(samples, step)``
and ``close()``. `make_tracker` builds the one a ``--report-to`` name asks for, importing its
package only then (the packages are optional: ``pip install 'grape-evo[tracking]'`` for
TensorBoard); a missing package is a `TrackingError` naming the ``pip install`` command.
`tracking_hook` turns a tracker into the training loop's per-step hook (`StepHook`), so the
loop itself knows nothing of trackers.

What is logged, at the 1-based ``step`` of `StepRecord`:

* scalars: every number of the step's ``metrics.jsonl`` record except ``step`` (missing and
  non-finite values skipped), named ``train/<key>``, or ``eval/<key>`` for its ``eval_<key>``
  values;
* at each evaluation, ``eval/samples``: the evaluation's sampled completions (prompt,
  completion, gold reward), as a table (wandb, trackio) or a markdown table (TensorBoard text,
  an MLflow text artifact ``samples/step_NNNNNN.md``).

Where runs go: TensorBoard writes ``OUT/tensorboard``; wandb (files under OUT) and trackio log
to project ``grape-evo`` and MLflow to experiment ``grape-evo`` (``WANDB_PROJECT`` and
``MLFLOW_EXPERIMENT_NAME`` override), each run named after the run folder, with the run's
settings as its config.
"""

from __future__ import annotations

import importlib
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from grape_evo.training.records import Sample, StepRecord
from grape_evo.training.run import StepHook

REPORT_TO: tuple[str, ...] = ("none", "tensorboard", "wandb", "mlflow", "trackio")
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


def _require(module: str, backend: str, package: str) -> ModuleType:
    """Import ``module`` for ``--report-to backend``, or explain how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise TrackingError(
            f"--report-to {backend} needs the {package} package, which is not installed: "
            f"pip install {package}"
        ) from err


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


class TensorBoardTracker:
    """Event files in ``log_dir`` (`torch.utils.tensorboard.SummaryWriter`)."""

    def __init__(self, log_dir: Path, config: dict[str, Any]) -> None:
        tensorboard = _require("torch.utils.tensorboard", "tensorboard", "tensorboard")
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
    """A Weights & Biases run (``wandb.init``), its local files under ``out_dir``."""

    def __init__(self, out_dir: Path, name: str, config: dict[str, Any]) -> None:
        self.wandb = _require("wandb", "wandb", "wandb")
        project = os.environ.get("WANDB_PROJECT", PROJECT)
        self.run = self.wandb.init(project=project, name=name, config=config, dir=str(out_dir))

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def log_samples(self, samples: Sequence[Sample], step: int) -> None:
        table = self.wandb.Table(columns=list(Sample._fields), data=[list(s) for s in samples])
        self.run.log({SAMPLES_TAG: table}, step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    """An MLflow run (``mlflow.start_run``) at the tracking URI MLflow is configured with."""

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        self.mlflow = _require("mlflow", "mlflow", "mlflow")
        self.mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", PROJECT))
        self.mlflow.start_run(run_name=name)
        self.mlflow.log_params(_flatten(config))

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics(values, step=step)

    def log_samples(self, samples: Sequence[Sample], step: int) -> None:
        self.mlflow.log_text(samples_markdown(samples), f"samples/step_{step:06d}.md")

    def close(self) -> None:
        self.mlflow.end_run()


class TrackioTracker:
    """A Trackio run (``trackio.init``), stored where Trackio stores runs."""

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        self.trackio = _require("trackio", "trackio", "trackio")
        self.trackio.init(project=PROJECT, name=name, config=config)

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        self.trackio.log(values, step=step)

    def log_samples(self, samples: Sequence[Sample], step: int) -> None:
        import pandas as pd

        frame = pd.DataFrame([s._asdict() for s in samples])
        self.trackio.log({SAMPLES_TAG: self.trackio.Table(dataframe=frame)}, step=step)

    def close(self) -> None:
        self.trackio.finish()


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
    if report_to == "none":
        return None
    if report_to not in builders:
        raise TrackingError(f"--report-to: unknown {report_to!r}; valid choices: {list(REPORT_TO)}")
    try:
        return builders[report_to]()
    except TrackingError:
        raise
    except Exception as err:  # a backend's own error (no server, no login, ...)
        raise TrackingError(
            f"--report-to {report_to}: could not start the run: {type(err).__name__}: {err}"
        ) from err
