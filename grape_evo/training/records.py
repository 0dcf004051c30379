"""Typed run records and their files (**contract**, DESIGN.md section 4).

``OUT/metrics.jsonl`` holds one `StepRecord` per step, each line written and flushed as soon as
the step ends, so a run killed midway leaves a valid file up to its last step. ``OUT/summary.json``
is one `RunSummary`, written atomically (temp file, rename).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple, TextIO

STEP_KEYS = ("reward", "kl_to_ref", "entropy", "clip_fraction", "grad_norm", "loss")
"""The metrics every record lists first (null when a step has none)."""


class RunStatus(StrEnum):
    """How a run ended: ``ok``; ``diverged`` (non-finite loss or gradient, runaway KL);
    ``failed`` (an error, with its reason); ``stopped`` (its caller stopped it, e.g. pruned)."""

    OK = "ok"
    DIVERGED = "diverged"
    FAILED = "failed"
    STOPPED = "stopped"


class Sample(NamedTuple):
    """One sampled completion of an evaluation prompt and its gold reward."""

    prompt: str
    completion: str
    reward: float


@dataclass(frozen=True)
class EvalReport:
    """A held-out evaluation (see `grape_evo.training.evaluation`): ``reward``, the expected
    gold reward under sampling; ``accuracy`` and ``greedy_reward`` of greedy completions;
    ``kl_to_ref``, the sampled KL to the reference (nats per sequence). ``samples``: a few
    sampled completions, for trackers to show (not written to metrics or summaries, not
    compared)."""

    reward: float
    accuracy: float
    kl_to_ref: float
    greedy_reward: float | None = None
    samples: tuple[Sample, ...] = field(default=(), compare=False, repr=False)

    def to_dict(self) -> dict[str, float | None]:
        """The `EVAL_KEYS` (not the samples)."""
        return {key: getattr(self, key) for key in EVAL_KEYS}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> EvalReport | None:
        if data is None:
            return None
        return cls(**{key: data[key] for key in EVAL_KEYS if key in data})


EVAL_KEYS: tuple[str, ...] = tuple(f.name for f in fields(EvalReport) if f.name != "samples")
"""The numbers of an `EvalReport`, as written to metrics (``eval_<key>``) and summaries."""


@dataclass(frozen=True)
class StepRecord:
    """One ``metrics.jsonl`` line: ``step`` (1-based), the step's metrics, the evaluation after
    it (if any) and ``seconds`` since the run started."""

    step: int
    metrics: dict[str, float]
    evaluation: EvalReport | None = None
    seconds: float = 0.0

    @property
    def eval_reward(self) -> float | None:
        return None if self.evaluation is None else self.evaluation.reward

    def to_dict(self) -> dict[str, Any]:
        """`STEP_KEYS` first, then the objective's own metrics, ``eval_reward``,
        ``eval_accuracy``, ``eval_kl_to_ref`` when evaluated, then ``seconds``."""
        record: dict[str, Any] = {"step": self.step}
        record.update({k: self.metrics.get(k) for k in STEP_KEYS})
        record.update({k: v for k, v in self.metrics.items() if k not in record})
        if self.evaluation is not None:
            record.update({f"eval_{k}": v for k, v in self.evaluation.to_dict().items()})
        record["seconds"] = self.seconds
        return record

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepRecord:
        evaluation = None
        if data.get("eval_reward") is not None:
            evaluation = EvalReport.from_dict({k: data.get(f"eval_{k}") for k in EVAL_KEYS})
        skip = {"step", "seconds"} | {f"eval_{k}" for k in EVAL_KEYS}
        metrics = {k: v for k, v in data.items() if k not in skip and v is not None}
        return cls(int(data["step"]), metrics, evaluation, float(data.get("seconds", 0.0)))


@dataclass
class RunSummary:
    """A run's ``summary.json``: what was trained, how it ended and its held-out results.

    ``trained_with`` is the number of members of the lockstep batch the run was trained in
    (1 when alone); ``wall_seconds`` is that batch's. ``model`` is the folder of the saved
    trained policy (``--save-model``), empty when none was saved.
    """

    objective: dict[str, Any]
    objective_key: str
    task: dict[str, Any]
    seed: int
    train_config: dict[str, Any]
    policy: dict[str, Any]
    device: str
    trained_with: int = 1
    initial_eval: EvalReport | None = None
    final_eval: EvalReport | None = None
    kl_to_ref: float | None = None
    steps: int = 0
    status: RunStatus = RunStatus.OK
    reason: str = ""
    wall_seconds: float = 0.0
    warm_start_cache: str = ""
    model: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == RunStatus.OK

    def end(self, status: RunStatus, reason: str) -> None:
        """Record how the run ended (the first ending stands)."""
        if self.status == RunStatus.OK:
            self.status, self.reason = status, reason

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        for name in ("initial_eval", "final_eval"):
            report = data[name]
            data[name] = None if report is None else report.to_dict()
        data["status"] = str(self.status)
        return {**data, **self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSummary:
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in data.items() if k in known}
        values["initial_eval"] = EvalReport.from_dict(data.get("initial_eval"))
        values["final_eval"] = EvalReport.from_dict(data.get("final_eval"))
        values["status"] = RunStatus(data.get("status", "ok"))
        return cls(**values, extra={k: v for k, v in data.items() if k not in known})

    def write(self, path: Path) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def read(cls, path: Path) -> RunSummary:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _clean(value: Any) -> Any:
    """JSON-safe: non-finite floats become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


class MetricsLog:
    """Append-only JSON-lines writer; one call to :meth:`write` per training step."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO = path.open("w")

    def write(self, record: StepRecord) -> None:
        self._file.write(json.dumps(_clean(record.to_dict())) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_clean(data), indent=2) + "\n")
    os.replace(tmp, path)


def parse_metrics(text: str) -> tuple[list[dict[str, Any]], int]:
    """The records of a metrics file's text, and how many lines are corrupt.

    A torn last line (a run killed while writing it) is dropped without being counted; any
    other line that is not a JSON object is skipped and counted.
    """
    lines = text.splitlines()
    records: list[dict[str, Any]] = []
    corrupt = 0
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            corrupt += i < len(lines) - 1
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            corrupt += 1
    return records, corrupt


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every readable record of a metrics file (see :func:`parse_metrics`)."""
    return parse_metrics(Path(path).read_text())[0]


def divergence(metrics: dict[str, float], step: int, max_kl_to_ref: float) -> str:
    """Why a step's float metrics mean its run diverged ('' when they do not): a non-finite
    loss or gradient norm, or a KL to the reference above ``max_kl_to_ref``."""
    if not math.isfinite(metrics.get("loss", 0.0)):
        return f"non-finite loss at step {step + 1}"
    if not math.isfinite(metrics.get("grad_norm", 0.0)):
        return f"non-finite gradient norm at step {step + 1}"
    if metrics.get("kl_to_ref", 0.0) > max_kl_to_ref:
        return (
            f"KL to the reference {metrics['kl_to_ref']:.1f} nats exceeded max_kl_to_ref "
            f"{max_kl_to_ref:g} at step {step + 1}"
        )
    return ""
