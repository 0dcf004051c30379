"""The held-out evaluation of a warm start, computed once and cached beside it.

Every run of a campaign on one (task, seed) starts from the same cached warm start and is first
evaluated on the same fixed evaluation set with the same random numbers (the stream
``(seed, "eval")``), so its initial evaluation is the same for every objective, member count
and learning rate. `initial_evaluation` reads it from ``WARM_START/initial_eval/<key>.json``
when an earlier run wrote it, and computes and writes it otherwise. The key hashes what the
evaluation depends on besides the warm-start weights (which the folder already identifies):
the seed, the evaluation settings, the sampling temperature, the precision, the device type and
the policy config without its value head, which evaluation does not use (a fresh LoRA adapter
does not change the initial outputs either, but runs through other kernels, so it keeps its own
entry: a cached value is the one this run would compute). Writes
are atomic (temp file, rename), so concurrent workers never read half a file. A run without a
warm-start folder (``warm_start_steps`` 0) computes its initial evaluation as before.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from grape_evo.policy import PolicyConfig
from grape_evo.training.config import TrainConfig
from grape_evo.training.records import EvalReport, Sample

FOLDER = "initial_eval"
FORMAT = 1
"""Bumped when the evaluation procedure changes, so older cached values are not read."""


def evaluation_key(config: TrainConfig, policy_config: PolicyConfig, device_type: str) -> str:
    """Hash of everything besides the warm-start weights that decides the initial evaluation
    (``policy_config`` without its value head)."""
    blob = {
        "seed": config.seed,
        "eval_prompts": config.eval_prompts,
        "eval_samples": config.eval_samples,
        "temperature": config.temperature,
        "precision": config.precision,
        "device": device_type,
        "policy": replace(policy_config, value_head=False).to_dict(),
        "format": FORMAT,
    }
    text = json.dumps(blob, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def initial_evaluation(
    warm_start: Path | None,
    key: str,
    compute: Callable[[], EvalReport],
) -> EvalReport:
    """The warm start's initial evaluation: cached under ``warm_start`` by ``key``, else
    ``compute()`` (written to the cache when there is a warm-start folder)."""
    if warm_start is None:
        return compute()
    path = warm_start / FOLDER / f"{key}.json"
    cached = _read(path)
    if cached is not None:
        return cached
    report = compute()
    _write(path, report)
    return report


def _read(path: Path) -> EvalReport | None:
    try:
        data = json.loads(path.read_text())
        report = EvalReport.from_dict(data["report"])
        samples = tuple(Sample(*s) for s in data["samples"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent or unreadable: computed again and rewritten
    return None if report is None else replace(report, samples=samples)


def _write(path: Path, report: EvalReport) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"report": report.to_dict(), "samples": [list(s) for s in report.samples]}
    handle, tmp = tempfile.mkstemp(prefix=".eval-", dir=path.parent)
    with os.fdopen(handle, "w") as f:
        json.dump(document, f, indent=2)
    os.replace(tmp, path)
