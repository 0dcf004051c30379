"""The engine's weight bank changes no number.

Every preset in one population (TRPO's step, PPO's critic and 16 updates beside one-update
members, offline and online pairs, SFT), and a member stopped after the first step (so later
calls take a subset of the bank's rows), trains bit for bit (`torch.equal` on every weight,
metrics equal) as when each call stacks the weight sets' own leaves, the per-set path that
the bank replaced.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from grape_evo.objective import presets
from grape_evo.policy import PolicyConfig
from grape_evo.policy.weight_bank import WeightBank
from grape_evo.tasks import get_task
from grape_evo.training import Engine, Member, warm_start_policy
from grape_evo.training.batches import sample_offline_pairs
from grape_evo.training.records import RunStatus

STEPS = 3
STOPPED = 1


def _train(per_set: bool, setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    """Metrics per step, every member's weights and the final evaluation, with the bank or
    (``per_set``) with each call stacking the sets' own leaves."""
    with monkeypatch.context() as patch:
        if per_set:
            patch.setattr(WeightBank, "rows", lambda bank, sets: [bank.sets[k] for k in sets])
        engine = Engine(**setup)
        metrics = []
        for step in range(STEPS):
            metrics.append(engine.step(step))
            if step == 0:
                engine.stop(STOPPED, RunStatus.STOPPED, "test")
        states = [engine.member_state(i) for i in range(len(setup["members"]))]
        critics = [
            None if c is None else {n: p.detach().clone() for n, p in c.items()}
            for c in engine.critic_weights
        ]
        return metrics, states, critics, engine.evaluate()


def test_every_preset_trains_bit_for_bit_as_with_per_set_leaves(
    tiny: Callable[..., Any], cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = get_task("addition")
    config = tiny(batch_size=16, seed=4)
    policy, _ = warm_start_policy(
        task, PolicyConfig(value_head=True), config, torch.device("cpu"), cache_dir
    )
    members = [Member(presets.get(name), 1e-3) for name in presets.names()]
    setup = {
        "members": members,
        "task": task,
        "config": config,
        "policy": policy,
        "offline_pairs": sample_offline_pairs(policy, task, config),
    }
    banked, per_set = _train(False, setup, monkeypatch), _train(True, setup, monkeypatch)
    assert banked[0] == per_set[0]  # every metric of every member at every step
    assert any(c is not None for c in banked[2])  # PPO's separate critic is in the bank too
    for ours, theirs in zip(banked[1] + banked[2], per_set[1] + per_set[2], strict=True):
        if ours is None or theirs is None:
            assert ours is None and theirs is None
            continue
        for name, value in theirs.items():
            assert torch.equal(ours[name], value), name
    assert [r and r.reward for r in banked[3]] == [r and r.reward for r in per_set[3]]
    assert banked[3][STOPPED] is None  # a stopped member is no longer evaluated
