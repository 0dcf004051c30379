"""``grape train``: outputs, user errors exit 2 without a traceback, kill safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from cli_helpers import cli_text as _output
from typer.testing import CliRunner

from grape_evo.cli import app
from grape_evo.objective import presets

TINY = ["--warm-start-steps", "5", "--batch-size", "8"]


def test_train_writes_run_folder(runner: CliRunner, tmp_path: Path, read_jsonl: Any) -> None:
    out = tmp_path / "run"
    args = ["train", "--objective", "grpo", "--task", "addition", "--steps", "2", "--out"]
    result = runner.invoke(app, [*args, str(out), *TINY, "--device", "cpu"])
    assert result.exit_code == 0, _output(result)
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok"
    assert summary["objective_key"] == presets.get("grpo").key()
    assert summary["train_config"]["batch_size"] == 8
    assert summary["train_config"]["warm_start_steps"] == 5


def test_unknown_objective_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    args = ["train", "--objective", "nope", "--out", str(tmp_path / "r"), *TINY]
    result = runner.invoke(app, args)
    text = _output(result)
    assert result.exit_code == 2, text
    assert "nope" in text
    for name in ("grpo", "ppo", "dpo", "sft"):
        assert name in text
    assert "Traceback" not in text
    assert not (tmp_path / "r" / "summary.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_cpu_machine_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    args = ["train", "--objective", "grpo", "--out", str(tmp_path / "r"), "--device", "cuda"]
    result = runner.invoke(app, [*args, *TINY])
    text = _output(result)
    assert result.exit_code == 2, text
    assert "cuda" in text.lower() and "not available" in text.lower()
    assert "Traceback" not in text


def test_unwritable_out_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    args = ["train", "--objective", "grpo", "--out", str(blocker / "run"), "--device", "cpu"]
    result = runner.invoke(app, [*args, *TINY])
    text = _output(result)
    assert result.exit_code == 2, text
    assert "Traceback" not in text


def test_killed_midway_leaves_valid_metrics(cache_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "GRAPE_CACHE": str(cache_dir), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "grape_evo.cli", "train", "--objective", "grpo",
        "--task", "addition", "--steps", "200", "--out", str(out), "--device", "cpu",
        "--eval-every", "50", *TINY,
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = out / "metrics.jsonl"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if metrics.exists() and metrics.read_text().count("\n") >= 3:
                break
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            time.sleep(0.05)
        else:
            pytest.fail("no 3 metrics lines within 60 s")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it was killed"
    lines = metrics.read_text().splitlines()
    assert len(lines) >= 3
    steps = [json.loads(line)["step"] for line in lines]  # every line is complete JSON
    assert steps == list(range(1, len(steps) + 1))
