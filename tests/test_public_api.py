"""The documented Python API (``grape_evo/__init__.py`` and README's "Python API"): every public
name resolves to the object of its module, and the documented flow runs end to end."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml
from campaign_helpers import TINY_BUDGET

import grape_evo as ge
from grape_evo.search.records import TrialRecord


def test_every_public_name_is_its_modules_object() -> None:
    assert ge.__all__ == sorted(ge._PUBLIC)
    for name, module in ge._PUBLIC.items():
        assert getattr(ge, name) is getattr(importlib.import_module(module), name), name
    with pytest.raises(AttributeError, match="no attribute 'Trainer'"):
        _ = ge.Trainer


def test_the_documented_flow_runs(tmp_path: Path, campaign_env: None) -> None:
    """The README example with a tiny budget: train one objective, train two in lockstep, run
    a campaign with a population, re-evaluate, write the report."""
    config = ge.TrainConfig(steps=2, batch_size=8, eval_prompts=8, warm_start_steps=5)
    task = ge.get_task("addition")
    one = ge.train(ge.presets.get("grpo"), task, config, out_dir=tmp_path / "x", progress=False)
    assert one.ok and one.trained_with == 1
    assert (tmp_path / "x" / "summary.json").is_file()
    members = [ge.Member(ge.presets.get("grpo"), 1e-4), ge.Member(ge.presets.get("ppo"), 1e-4)]
    both = ge.train_members(members, task, config, progress=False)
    assert [s.ok for s in both] == [True, True] and both[1].trained_with == 2

    space_file = tmp_path / "space.yaml"
    space_file.write_text(
        yaml.safe_dump(
            {
                "name": "api",
                "tasks": ["addition"],
                "budget": dict(TINY_BUDGET),
                "base": "grpo",
                "axes": {"advantage.name": {"choices": ["group_zscore", "group_mean"]}},
                "baselines": ["grpo"],
                "search": {"sampler": "random", "trials": 2, "pruner": "none"},
            }
        )
    )
    space = ge.load_space(space_file)
    campaign = ge.Campaign(space, tmp_path / "run", population=3)
    study = campaign.open(create=True)
    campaign.optimize(study, budget=space.search.trials + len(space.baselines))
    # The baseline trains its two seeds together; the two candidates one engine per seed.
    assert [TrialRecord.of(t).trained_with for t in study.get_trials()] == [2, 2, 2]
    rows = campaign.reevaluate(study)
    assert {r["label"] for r in rows} >= {"grpo"}
    report = ge.write_report(tmp_path / "run")
    assert report.is_file() and "grpo" in report.read_text()
