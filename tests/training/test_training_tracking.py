"""``grape train --report-to``: TensorBoard gets the metrics.jsonl numbers and eval samples;
a missing tracker package or a tracker that cannot start exits 2 with the reason. wandb, MLflow
and Trackio (not installed here: stand-ins with their documented calls) keep a run object per
tracker, so the members of a lockstep batch each log to their own run."""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import TINY_TRAIN, CliRun

from grape_evo.tasks import get_task
from grape_evo.training.tracking import make_tracker

Grape = Callable[..., CliRun]


def _train(grape: Grape, out: Path, report_to: str) -> CliRun:
    args = ["train", "--objective", "grpo", "--steps", "2", "--out", str(out), *TINY_TRAIN]
    return grape(*args, "--report-to", report_to)


def test_tensorboard_scalars_match_metrics(grape: Grape, tmp_path: Path, read_jsonl: Any) -> None:
    reader = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    run = _train(grape, tmp_path / "run", "tensorboard")
    assert run.exit_code == 0, run.text
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    expected: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        for key, value in record.items():
            if key != "step" and value is not None:
                tag = "eval/" + key[5:] if key.startswith("eval_") else "train/" + key
                expected.setdefault(tag, []).append((record["step"], value))
    assert {"train/reward", "train/loss", "eval/reward", "eval/accuracy"} <= set(expected)
    events = reader.EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == set(expected)
    for tag, points in expected.items():
        logged = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in logged] == [s for s, _ in points], tag
        # TensorBoard stores float32: 24 bits of mantissa
        assert [v for _, v in logged] == pytest.approx([v for _, v in points], rel=1e-6), tag
    # The last step evaluates; its samples are completions of the first held-out prompts.
    [text] = events.Tensors("eval/samples/text_summary")
    table = text.tensor_proto.string_val[0].decode()
    assert text.step == 2 and table.startswith("| prompt | completion | reward |")
    for prompt in get_task("addition").eval_set(1024)[:4]:
        assert f"| {prompt} |" in table


@pytest.mark.parametrize(
    ("report_to", "module"),
    [
        ("wandb", "wandb"),
        ("mlflow", "mlflow"),
        ("trackio", "trackio"),
        ("tensorboard", "torch.utils.tensorboard"),
    ],
)
def test_missing_tracker_package_exits_2_with_pip_command(
    grape: Grape, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, report_to: str, module: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    run = _train(grape, tmp_path / "run", report_to)
    assert run.exit_code == 2, run.text
    assert f"--report-to {report_to} needs the {report_to} package" in run.text
    assert f"pip install {report_to}" in run.text and "Traceback" not in run.text
    assert not (tmp_path / "run" / "summary.json").exists()


def test_tracker_that_cannot_start_exits_2(
    grape: Grape, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def init(**kwargs: Any) -> None:
        raise RuntimeError("no API key")

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    run = _train(grape, tmp_path / "run", "wandb")
    assert run.exit_code == 2, run.text
    assert "--report-to wandb: could not start the run: RuntimeError: no API key" in run.text


def test_unknown_tracker_exits_2(grape: Grape, tmp_path: Path) -> None:
    run = _train(grape, tmp_path / "run", "neptune")
    assert run.exit_code == 2, run.text
    assert "unknown 'neptune'" in run.text
    assert all(name in run.text for name in ("tensorboard", "wandb", "mlflow", "trackio"))


class FakeRun:
    """What a stand-in tracker run received: (step, values) logged, and whether it ended."""

    def __init__(self, name: str, **settings: Any) -> None:
        self.name, self.settings = name, settings
        self.logged: list[tuple[int, dict[str, float]]] = []
        self.finished = False

    def log(self, values: dict[str, float], step: int) -> None:
        self.logged.append((step, values))

    def finish(self) -> None:
        self.finished = True


def _stand_in(backend: str, runs: dict[str, FakeRun], monkeypatch: pytest.MonkeyPatch) -> None:
    """Install a stand-in for ``backend``'s package whose runs are recorded in ``runs``."""

    def start(name: str, **settings: Any) -> FakeRun:
        runs[name] = FakeRun(name, **settings)
        return runs[name]

    if backend in ("wandb", "trackio"):
        module = types.SimpleNamespace(init=lambda name, **kw: start(name, **kw))
        monkeypatch.setitem(sys.modules, backend, module)
        return

    class Client:  # MlflowClient: runs by id (here, the run name)
        def create_run(self, experiment_id: str, run_name: str) -> Any:
            start(run_name, experiment_id=experiment_id)
            return types.SimpleNamespace(info=types.SimpleNamespace(run_id=run_name))

        def log_batch(self, run_id: str, metrics: Any = (), params: Any = ()) -> None:
            if metrics:
                runs[run_id].log({m.key: m.value for m in metrics}, metrics[0].step)

        def set_terminated(self, run_id: str) -> None:
            runs[run_id].finish()

    def metric(key: str, value: float, timestamp: int, step: int) -> Any:
        return types.SimpleNamespace(key=key, value=value, step=step)

    experiment = types.SimpleNamespace(experiment_id="7")
    module = types.SimpleNamespace(set_experiment=lambda name: experiment, MlflowClient=Client)
    entities = types.SimpleNamespace(Metric=metric, Param=lambda key, value: (key, value))
    monkeypatch.setitem(sys.modules, "mlflow", module)
    monkeypatch.setitem(sys.modules, "mlflow.entities", entities)


@pytest.mark.parametrize("backend", ["wandb", "mlflow", "trackio"])
def test_concurrent_trackers_log_to_their_own_runs(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: dict[str, FakeRun] = {}
    _stand_in(backend, runs, monkeypatch)
    first = make_tracker(backend, tmp_path / "a", "study/a", {"seed": 0})
    second = make_tracker(backend, tmp_path / "b", "study/b", {"seed": 1})
    assert first is not None and second is not None
    for step in (1, 2):
        first.log_scalars({"train/reward": 0.5 * step}, step)
        second.log_scalars({"train/reward": -1.0 * step}, step)
    first.close()
    assert runs["study/a"].finished and not runs["study/b"].finished
    second.close()
    assert runs["study/a"].logged == [(1, {"train/reward": 0.5}), (2, {"train/reward": 1.0})]
    assert runs["study/b"].logged == [(1, {"train/reward": -1.0}), (2, {"train/reward": -2.0})]
    if backend == "wandb":  # a new run while another is active, not the active one returned
        assert runs["study/a"].settings["reinit"] == "create_new"
