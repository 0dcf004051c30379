"""The run grid: folder keys, what counts as finished, and resuming without re-running."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from grape_evo.experiment.grid import RunPlan, execute, finished_summary
from grape_evo.objective import presets
from grape_evo.training import TrainConfig

TINY = {"steps": 2, "eval_every": 2, "batch_size": 16, "eval_prompts": 8, "warm_start_steps": 3}


def plan(seed: int = 0, lr: float = 1e-4, label: str = "grpo") -> RunPlan:
    return RunPlan(label, "addition", presets.get("grpo"), TrainConfig(**TINY, seed=seed, lr=lr))


def test_folder_names_the_run_and_changes_with_any_setting(tmp_path: Path) -> None:
    a, b, c = plan(), plan(lr=3e-4), plan(seed=1)
    assert a.folder(tmp_path).parent == tmp_path / "eval" / "addition"
    assert a.folder(tmp_path).name.startswith("grpo-lr0.0001-s0-")
    assert len({a.key(), b.key(), c.key()}) == 3
    assert a.key() == plan().key()  # stable across instances


@pytest.mark.parametrize(
    ("summary", "finished"),
    [
        ({"status": "ok"}, True),
        ({"status": "diverged"}, True),
        ({"status": "failed", "reason": "ValueError: bad"}, True),
        ({"status": "failed", "reason": "interrupted"}, False),
        ({"status": "stopped"}, False),
    ],
)
def test_finished_summary(tmp_path: Path, summary: dict, finished: bool) -> None:
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert (finished_summary(tmp_path) is not None) is finished


def test_missing_or_corrupt_summary_is_not_finished(tmp_path: Path) -> None:
    assert finished_summary(tmp_path) is None
    (tmp_path / "summary.json").write_text("{half")
    assert finished_summary(tmp_path) is None


@pytest.mark.usefixtures("campaign_env")
def test_execute_resumes_only_the_missing_runs(tmp_path: Path, grape_cache: Path) -> None:
    plans = [plan(seed=0), plan(seed=1)]
    results, compute = execute(plans, tmp_path, cache_dir=grape_cache, progress=False)
    assert [r.status for r in results] == ["ok", "ok"]
    assert (compute.runs_done_now, compute.runs_reused) == (2, 0)
    curve = results[0].curve()
    assert [step for step, _ in curve] == [0, 2]  # the warm start, then the final evaluation
    # A run killed mid-way leaves no finished summary: only it runs again.
    (plans[1].folder(tmp_path) / "summary.json").unlink()
    first = (plans[0].folder(tmp_path) / "summary.json").read_text()
    _, again = execute(plans, tmp_path, cache_dir=grape_cache, progress=False)
    assert (again.runs_done_now, again.runs_reused) == (1, 1)
    assert (plans[0].folder(tmp_path) / "summary.json").read_text() == first
    assert again.run_seconds > 0


@pytest.mark.usefixtures("campaign_env")
def test_parallel_runs_match_inline_runs(tmp_path: Path, grape_cache: Path) -> None:
    plans = [plan(seed=0), plan(seed=1)]
    inline, _ = execute(plans, tmp_path / "inline", cache_dir=grape_cache, progress=False)
    parallel, compute = execute(
        plans, tmp_path / "parallel", jobs=2, cache_dir=grape_cache, progress=False
    )
    assert compute.runs_done_now == 2
    for a, b in zip(inline, parallel, strict=True):
        assert a.summary["final_eval"] == b.summary["final_eval"]  # same seed, same result


def test_a_task_variant_builds_its_arguments_and_gets_its_own_folder(tmp_path: Path) -> None:
    ref = (("max_digits", 3), ("min_digits", 3), ("name", "long_addition"))
    variant = RunPlan("grpo", "addition3", presets.get("grpo"), TrainConfig(**TINY), task_ref=ref)
    task = variant.build_task()
    assert task.config() == {"name": "long_addition", "min_digits": 3, "max_digits": 3}
    assert variant.folder(tmp_path).parent == tmp_path / "eval" / "addition3"
    same_label = RunPlan("grpo", "addition3", presets.get("grpo"), TrainConfig(**TINY))
    assert variant.key() != same_label.key()


def test_a_registered_task_keeps_the_key_it_had_before_variants() -> None:
    # The key of a plan without a variant hashes objective, task, train and policy only, so
    # the folders of runs made before task variants existed are found again.
    p = plan()
    blob = {
        "objective": p.spec.key(),
        "task": "addition",
        "train": p.train.to_dict(),
        "policy": p.policy.to_dict(),
    }
    text = json.dumps(blob, sort_keys=True, separators=(",", ":"))
    assert p.key() == hashlib.sha256(text.encode()).hexdigest()[:12]
