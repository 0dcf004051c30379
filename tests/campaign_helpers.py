"""Helpers shared by the campaign and reliability tests (importable: pytest puts tests/ on
the path, see ``pythonpath`` in pyproject.toml)."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from grape_evo.cli import app
from grape_evo.search.campaign import Campaign
from grape_evo.search.evaluator import CandidateResult, CandidateRun
from grape_evo.search.records import RunResult

TINY_BUDGET: dict[str, int] = {
    "steps": 2,
    "seeds": 2,
    "eval_every": 1,
    "eval_prompts": 8,
    "batch_size": 8,
    "warm_start_steps": 5,
    "reeval_seeds": 2,
    "top_k": 2,
}
"""A campaign budget whose trials take well under a second each (2 steps, 2 seeds)."""


def write_space(folder: Path, data: dict[str, Any], filename: str = "space.yaml") -> Path:
    """``data`` as a search-space YAML file in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def cli_env(cache: Path) -> dict[str, str]:
    """Environment of a ``grape`` subprocess: the shared warm-start cache, one thread."""
    env = dict(os.environ)
    env.update(GRAPE_CACHE=str(cache), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("PYTHONWARNINGS", None)
    return env


def invoke(*args: str) -> Any:
    """Run a grape command in this process (typer's CliRunner, stderr kept apart)."""
    return CliRunner().invoke(app, list(args), catch_exceptions=True)


def integrity(db: Path) -> str:
    """SQLite's ``PRAGMA integrity_check`` of a study file (``ok`` when intact)."""
    con = sqlite3.connect(db)
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


def db_states(db: Path) -> list[tuple[int, str, Any]]:
    """(number, state, last heartbeat or None) of every trial, read from the SQLite file."""
    if not db.exists():
        return []
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute(
                "SELECT t.number, t.state, h.heartbeat FROM trials AS t "
                "LEFT JOIN trial_heartbeats AS h ON h.trial_id = t.trial_id"
            ).fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return []


def fake_reward(spec_key: str, overrides: dict[str, Any] | None = None) -> float:
    text = spec_key + json.dumps(overrides or {}, sort_keys=True)
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def fake_result(
    spec: Any, configs: Any, out_dir: Path, status: str = "ok", reason: str = ""
) -> CandidateResult:
    """A CandidateResult shaped like run_candidates', without training."""
    runs = []
    for config in configs:
        ok = status == "ok"
        final = {"reward": fake_reward(spec.key(), {"lr": config.lr}), "accuracy": 0.0}
        final["kl_to_ref"] = 0.01
        runs.append(
            RunResult(
                task="addition",
                seed=config.seed,
                status=status,
                reason=reason,
                initial_eval={"reward": 0.0, "accuracy": 0.0, "kl_to_ref": 0.0},
                final_eval=final if ok else None,
                curve=[],
                wall_seconds=0.0,
                out_dir=str(out_dir),
            )
        )
        if not ok:
            break
    return CandidateResult(runs)


def fake_training(monkeypatch: pytest.MonkeyPatch, per_candidate: Any) -> None:
    """Replace the campaign's training (`Campaign.train_runs`) by ``per_candidate(spec,
    configs, folder)`` for each candidate of a batch."""

    def train_runs(
        campaign: Campaign, runs: list[CandidateRun], packed: bool = False
    ) -> list[CandidateResult]:
        return [
            per_candidate(r.spec, [r.configs[i] for i in r.seed_indices()], r.folder) for r in runs
        ]

    monkeypatch.setattr(Campaign, "train_runs", train_runs)
