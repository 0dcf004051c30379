"""``grape train --precision``: a bf16 run on CPU finishes with finite metrics near fp32's."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cli_helpers import TINY_TRAIN, CliRun


def test_bf16_run_on_cpu(grape: Callable[..., CliRun], tmp_path: Path, read_jsonl: Any) -> None:
    records, summaries = {}, {}
    for precision in ("bf16", "auto"):  # auto is fp32 on CPU
        out = tmp_path / precision
        args = ["train", "--objective", "ppo", "--steps", "2", "--out", str(out), *TINY_TRAIN]
        run = grape(*args, "--precision", precision)
        assert run.exit_code == 0, run.text
        records[precision] = read_jsonl(out / "metrics.jsonl")
        summaries[precision] = json.loads((out / "summary.json").read_text())
    assert summaries["bf16"]["train_config"]["precision"] == "bf16"
    assert summaries["auto"]["train_config"]["precision"] == "fp32"
    assert summaries["bf16"]["status"] == "ok"
    bf16, fp32 = records["bf16"], records["auto"]
    assert [r["step"] for r in bf16] == [1, 2]
    for key in ("reward", "loss", "grad_norm", "entropy", "eval_reward", "eval_accuracy"):
        assert bf16[-1][key] is not None and math.isfinite(bf16[-1][key]), key
    # The same random numbers, values a few bf16 roundings apart: entropy within 1%, not equal.
    first, reference = bf16[0]["entropy"], fp32[0]["entropy"]
    assert first != reference and abs(first - reference) < 0.01 * reference


def test_unknown_precision_exits_2(grape: Callable[..., CliRun], tmp_path: Path) -> None:
    args = ["train", "--objective", "grpo", "--out", str(tmp_path / "r"), *TINY_TRAIN]
    run = grape(*args, "--precision", "fp16")
    assert run.exit_code == 2, run.text
    assert "precision: unknown 'fp16'" in run.text and "Traceback" not in run.text
