"""Behaviour probes find objectives that train identically, and only those."""

from __future__ import annotations

from typing import Any

import pytest

from grape_evo.objective import ObjectiveSpec, presets
from grape_evo.objective.behaviour import behaviour, same_behaviour


def spec(name: str, **changes: Any) -> ObjectiveSpec:
    return ObjectiveSpec.from_dict({**presets.describe(name).spec, **changes})


@pytest.mark.parametrize("surrogate", ["sapo", "reinforce", "cispo"])
def test_ratio_surrogates_coincide_at_one_update(surrogate: str) -> None:
    """On fresh samples with one update r = 1 exactly, and d/dlog pi of PPO-clip's -r A,
    SAPO's -gate(r) A, CISPO's -sg(clip r) A log pi and REINFORCE's -A log pi are all -A."""
    grpo = behaviour(presets.get("grpo"))
    assert same_behaviour(grpo, behaviour(spec("grpo", surrogate={"name": surrogate})))


@pytest.mark.parametrize("surrogate", ["sapo", "reinforce", "cispo"])
def test_they_differ_once_the_ratio_moves(surrogate: str) -> None:
    for regime in ({"epochs": 2}, {"staleness": 1}, {"minibatches": 2, "epochs": 2}):
        grpo = behaviour(spec("grpo", **regime))
        other = behaviour(spec("grpo", surrogate={"name": surrogate}, **regime))
        assert not same_behaviour(grpo, other), (surrogate, regime)


def test_dapo_and_cispo_coincide_only_at_one_update() -> None:
    assert same_behaviour(behaviour(presets.get("dapo")), behaviour(presets.get("cispo")))
    assert not same_behaviour(behaviour(spec("dapo", epochs=4)), behaviour(spec("cispo", epochs=4)))


@pytest.mark.parametrize(
    "changes",
    [
        {"kl": {"estimator": "k3", "placement": "loss", "coef": 0.05}},  # another KL weight
        {"advantage": {"name": "group_mean"}},  # no std division
        {"aggregation": {"name": "token_mean"}},
        {"entropy_coef": 0.01},
        {"group_size": 4},  # outside the loss: the sampling
        {"minibatches": 2},  # outside the loss: the regime
    ],
)
def test_a_real_difference_is_seen(changes: dict[str, Any]) -> None:
    assert not same_behaviour(behaviour(presets.get("grpo")), behaviour(spec("grpo", **changes)))


def test_state_is_probed_over_steps() -> None:
    """The EMA baseline's decay acts from the second batch on: three probe steps see it."""
    slow = behaviour(spec("reinforce_baseline", advantage={"name": "ema_baseline", "decay": 0.9}))
    fast = behaviour(spec("reinforce_baseline", advantage={"name": "ema_baseline", "decay": 0.5}))
    assert not same_behaviour(slow, fast)


def test_preference_losses() -> None:
    dpo = behaviour(presets.get("dpo"))
    assert same_behaviour(dpo, behaviour(presets.get("dpo").with_name("renamed")))
    assert not same_behaviour(
        dpo, behaviour(spec("dpo", preference={"name": "sigmoid", "beta": 0.2}))
    )
    assert not same_behaviour(dpo, behaviour(presets.get("ipo")))
    online = behaviour(presets.get("online_dpo"))
    all_pairs = spec(
        "online_dpo", preference={"name": "sigmoid", "beta": 0.1, "pairing": "all_pairs"}
    )
    assert not same_behaviour(online, behaviour(all_pairs))  # pairing acts outside the loss


@pytest.mark.parametrize(
    ("surrogate", "a", "b"),
    [
        ("ppo_clip", {"clip_high": 0.263}, {"clip_high": 0.264}),  # a token clip, 1e-3 apart
        ("ppo_clip", {"clip_low": 0.2}, {"clip_low": 0.201}),
        ("gspo", {"clip_high": 4e-4}, {"clip_high": 4.5e-4}),  # a sequence clip, 12% apart
        ("gspo", {"clip_low": 3e-4}, {"clip_low": 3.4e-4}),
    ],
)
def test_nearby_clips_differ_once_the_ratio_moves(surrogate: str, a: dict, b: dict) -> None:
    """Clips that differ a little act on a few tokens (or sequences) of a real batch: the
    probe's dense grids of log-ratios hold such tokens, so the two are not merged."""

    def record(params: dict) -> dict:
        return behaviour(spec("grpo", epochs=2, surrogate={"name": surrogate, **params}))

    assert not same_behaviour(record(a), record(b))
    assert same_behaviour(record(a), record(dict(a)))
