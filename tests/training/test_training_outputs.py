"""Run outputs (DESIGN.md section 4 contract), failure handling and determinism of train()."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from grape_evo.objective import presets
from grape_evo.objective.builder import Objective
from grape_evo.tasks import get_task
from grape_evo.tasks.addition import AdditionTask
from grape_evo.training import train

STEP_KEYS = {"step", "reward", "kl_to_ref", "entropy", "clip_fraction", "grad_norm", "seconds"}
EVAL_KEYS = {"eval_reward", "eval_accuracy"}


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _check_eval(report: Any) -> None:
    assert isinstance(report, dict)
    for key in ("reward", "accuracy"):
        assert _is_number(report[key]), report
        assert 0.0 <= report[key] <= 1.0, report


# ---------------------------------------------------------------------------- contract


def test_run_outputs_contract(tmp_path: Path, cache_dir: Path, tiny: Any, read_jsonl: Any) -> None:
    spec, task = presets.get("grpo"), get_task("addition")
    out = tmp_path / "run"
    returned = train(spec, task, tiny(), out_dir=out, progress=False, cache_dir=cache_dir)

    records = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        assert set(r) >= STEP_KEYS, sorted(STEP_KEYS - set(r))
        assert set(r) >= EVAL_KEYS, "eval_every=1: every step is an eval step"
        for key in STEP_KEYS | EVAL_KEYS:
            assert _is_number(r[key]), (key, r[key])
        assert 0.0 <= r["reward"] <= 1.0
        assert 0.0 <= r["eval_reward"] <= 1.0
        assert 0.0 <= r["eval_accuracy"] <= 1.0
        assert 0.0 <= r["clip_fraction"] <= 1.0
        assert r["kl_to_ref"] >= -1e-6  # k3 estimates are non-negative
        assert r["entropy"] >= 0.0 and r["grad_norm"] >= 0.0 and r["seconds"] > 0.0
    assert records[0]["seconds"] <= records[1]["seconds"]

    summary = json.loads((out / "summary.json").read_text())
    assert summary == json.loads(json.dumps(returned.to_dict()))  # the file is train()'s summary
    assert summary["status"] == "ok", summary["reason"]
    assert summary["objective"] == spec.to_dict()
    assert summary["objective_key"] == spec.key()
    assert summary["task"] == task.config() == {"name": "addition", **summary["task"]}
    assert summary["seed"] == 0
    assert summary["steps"] == 2
    _check_eval(summary["initial_eval"])
    _check_eval(summary["final_eval"])
    assert _is_number(summary["kl_to_ref"]) and summary["kl_to_ref"] >= -1e-6
    assert _is_number(summary["wall_seconds"]) and summary["wall_seconds"] > 0
    assert summary["wall_seconds"] >= records[-1]["seconds"]
    # The final eval is the last step's eval.
    assert summary["final_eval"]["reward"] == pytest.approx(records[-1]["eval_reward"])
    assert summary["final_eval"]["accuracy"] == pytest.approx(records[-1]["eval_accuracy"])


def test_eval_keys_only_on_eval_steps(tmp_path: Path, cache_dir: Path, tiny: Any, read_jsonl: Any):
    cfg = tiny(steps=3, eval_every=2)
    summary = train(
        presets.get("grpo"),
        get_task("addition"),
        cfg,
        out_dir=tmp_path,
        progress=False,
        cache_dir=cache_dir,
    )
    assert summary.status == "ok", summary.reason
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    assert not EVAL_KEYS & set(records[0])
    assert set(records[1]) >= EVAL_KEYS  # step 2: every 2 steps
    assert set(records[2]) >= EVAL_KEYS  # step 3: the last step is always evaluated


def test_no_out_dir_writes_nothing_and_returns_summary(tmp_path: Path, cache_dir: Path, tiny: Any):
    summary = train(
        presets.get("sft"), get_task("reverse"), tiny(), progress=False, cache_dir=cache_dir
    )
    assert summary.status == "ok" and summary.steps == 2
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------- failures


class NaNRewardAddition(AdditionTask):
    def reward(self, prompts, completions):  # type: ignore[override]
        return [float("nan")] * len(completions)


class RaisingRewardAddition(AdditionTask):
    def reward(self, prompts, completions):  # type: ignore[override]
        raise RuntimeError("reward server unreachable (boom-1234)")


def _run_expecting(
    task: Any,
    tmp_path: Path,
    cache_dir: Path,
    tiny: Any,
    read_jsonl: Any,
    spec: str = "grpo",
    **cfg: Any,
) -> Any:
    out = tmp_path / "run"
    summary = train(  # must not raise
        presets.get(spec), task, tiny(**cfg), out_dir=out, progress=False, cache_dir=cache_dir
    )
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["status"] == summary.status
    assert on_disk["reason"] == summary.reason
    records = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, len(records) + 1))
    assert summary.steps == len(records)
    assert isinstance(summary.reason, str) and summary.reason
    assert _is_number(on_disk["wall_seconds"])
    return summary


def test_nan_reward_fails_with_reason(tmp_path, cache_dir, tiny, read_jsonl) -> None:
    summary = _run_expecting(NaNRewardAddition(), tmp_path, cache_dir, tiny, read_jsonl)
    assert summary.status == "failed"
    assert "non-finite" in summary.reason


def test_raising_reward_fails_with_message(tmp_path, cache_dir, tiny, read_jsonl) -> None:
    summary = _run_expecting(RaisingRewardAddition(), tmp_path, cache_dir, tiny, read_jsonl)
    assert summary.status == "failed"
    assert "reward server unreachable (boom-1234)" in summary.reason


def test_nan_loss_diverges(tmp_path, cache_dir, tiny, read_jsonl, monkeypatch) -> None:
    original = Objective.__call__

    def nan_loss(self: Objective, batch: Any) -> Any:
        loss, metrics = original(self, batch)
        loss = loss * float("nan")
        metrics["loss"] = loss.detach()
        return loss, metrics

    monkeypatch.setattr(Objective, "__call__", nan_loss)
    summary = _run_expecting(get_task("addition"), tmp_path, cache_dir, tiny, read_jsonl)
    assert summary.status == "diverged"
    assert "non-finite" in summary.reason


def test_nan_gradient_with_finite_loss_never_raises(
    tmp_path, cache_dir, tiny, read_jsonl, monkeypatch
) -> None:
    """A loss whose value is finite but whose gradient is NaN poisons the weights."""
    original = Objective.__call__

    class NaNGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
            return x.clone()

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
            return torch.full_like(grad, float("nan"))

    def nan_grad(self: Objective, batch: Any) -> Any:
        loss, metrics = original(self, batch)
        loss = NaNGrad.apply(loss)
        assert torch.isfinite(loss)
        return loss, metrics

    monkeypatch.setattr(Objective, "__call__", nan_grad)
    summary = _run_expecting(get_task("addition"), tmp_path, cache_dir, tiny, read_jsonl, steps=3)
    assert summary.status in {"diverged", "failed"}


def test_model_that_outputs_nan_fails(tmp_path, cache_dir, tiny, read_jsonl, monkeypatch) -> None:
    import grape_evo.training.run as run_module

    real = run_module.warm_start_policy

    def nan_policy(*args: Any, **kwargs: Any) -> Any:
        policy, folder = real(*args, **kwargs)
        with torch.no_grad():
            for p in policy.parameters():
                p.fill_(float("nan"))
        return policy, folder

    monkeypatch.setattr(run_module, "warm_start_policy", nan_policy)
    summary = _run_expecting(get_task("addition"), tmp_path, cache_dir, tiny, read_jsonl)
    assert summary.status in {"diverged", "failed"}


def test_huge_lr_never_raises(tmp_path, cache_dir, tiny, read_jsonl) -> None:
    out = tmp_path / "run"
    summary = train(
        presets.get("reinforce"),
        get_task("addition"),
        tiny(steps=4, lr=1e6, max_grad_norm=0.0),
        out_dir=out,
        progress=False,
        cache_dir=cache_dir,
    )
    assert summary.status in {"ok", "diverged", "failed"}
    if summary.status != "ok":
        assert summary.reason
    assert json.loads((out / "summary.json").read_text())["status"] == summary.status
    read_jsonl(out / "metrics.jsonl")


# ---------------------------------------------------------------------------- determinism


def _records(tmp: Path, name: str, seed: int, cache_dir: Path, tiny: Any, read_jsonl: Any):
    out = tmp / name
    summary = train(
        presets.get("grpo"),
        get_task("addition"),
        tiny(steps=3, seed=seed),
        out_dir=out,
        progress=False,
        cache_dir=cache_dir,
    )
    assert summary.status == "ok", summary.reason
    records = [
        {k: v for k, v in r.items() if k != "seconds"} for r in read_jsonl(out / "metrics.jsonl")
    ]
    assert len(records) == 3
    drop = {"wall_seconds", "warm_start_cache"}
    return records, {k: v for k, v in summary.to_dict().items() if k not in drop}


def test_same_seed_same_metrics(tmp_path, cache_dir, tiny, read_jsonl) -> None:
    a, sa = _records(tmp_path, "a", 0, cache_dir, tiny, read_jsonl)
    b, sb = _records(tmp_path, "b", 0, cache_dir, tiny, read_jsonl)
    assert a == b
    assert sa == sb


def test_different_seed_different_metrics(tmp_path, cache_dir, tiny, read_jsonl) -> None:
    a, _ = _records(tmp_path, "a", 0, cache_dir, tiny, read_jsonl)
    c, _ = _records(tmp_path, "c", 1, cache_dir, tiny, read_jsonl)
    assert a != c
