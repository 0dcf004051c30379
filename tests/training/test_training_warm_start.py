"""The SFT warm start is cached by (task, policy config, budget, seed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import grape_evo.training.warm_start as warm_start
from grape_evo.policy import PolicyConfig
from grape_evo.tasks import get_task
from grape_evo.training import cache_root, warm_start_policy

CPU = torch.device("cpu")


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_second_call_loads_the_cache(tmp_path: Path, tiny: Any, monkeypatch) -> None:
    task, cfg = get_task("sort"), tiny(warm_start_steps=20)
    first, folder = warm_start_policy(task, PolicyConfig(), cfg, CPU, tmp_path)
    assert folder.is_dir() and folder.parent.parent == tmp_path
    fresh = warm_start.build_policy(PolicyConfig(), None, seed=cfg.seed)
    assert not _same_weights(first, fresh), "20 SFT steps did not change the weights"

    def no_sft(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("SFT ran again although the warm start is cached")

    monkeypatch.setattr(warm_start, "_train_sft", no_sft)  # the cache is proven by this
    second, folder2 = warm_start_policy(task, PolicyConfig(), cfg, CPU, tmp_path)
    assert folder2 == folder
    assert _same_weights(first, second)
    # The reference of a loaded policy is the warm start itself.
    with second.reference():
        assert _same_weights(second.lm, second.reference_lm)
    # A critic's value head does not change the warm start (it starts fresh from the seed).
    critic, folder3 = warm_start_policy(task, PolicyConfig(value_head=True), cfg, CPU, tmp_path)
    assert folder3 == folder and critic.has_value_head
    assert all(torch.equal(critic.state_dict()[k], v) for k, v in first.state_dict().items())


@pytest.mark.parametrize("change", ["seed", "task", "budget"])
def test_different_key_different_folder(change: str, tmp_path: Path, tiny: Any) -> None:
    task, cfg = get_task("reverse"), tiny()
    _, folder = warm_start_policy(task, PolicyConfig(), cfg, CPU, tmp_path)
    other_task, other_cfg = task, cfg
    if change == "seed":
        other_cfg = tiny(seed=1)
    elif change == "task":
        other_task = get_task("sort")
    else:
        other_cfg = tiny(warm_start_steps=6)
    other, other_folder = warm_start_policy(other_task, PolicyConfig(), other_cfg, CPU, tmp_path)
    assert other_folder != folder
    assert len(list((tmp_path / "warm_start").iterdir())) == 2
    if change == "seed":
        first, _ = warm_start_policy(task, PolicyConfig(), cfg, CPU, tmp_path)
        assert not _same_weights(first, other)


@pytest.mark.parametrize("lora_rank", [0, 2])
def test_zero_steps_train_the_built_policy_as_is(
    lora_rank: int, tmp_path: Path, tiny: Any, monkeypatch
) -> None:
    def no_sft(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("SFT ran with warm_start_steps 0")

    monkeypatch.setattr(warm_start, "_train_sft", no_sft)
    config = PolicyConfig(lora_rank=lora_rank)
    policy, folder = warm_start_policy(
        get_task("sort"), config, tiny(warm_start_steps=0), CPU, tmp_path
    )
    assert folder is None and not any(tmp_path.iterdir())  # nothing trained, nothing cached
    built = warm_start.build_policy(PolicyConfig(), None, seed=0)
    if lora_rank:  # a fresh adapter starts at B = 0: merged = base = reference = as built
        assert _same_weights(policy.lm.merge_and_unload(), built.lm)
    else:
        assert _same_weights(policy, built) and _same_weights(policy.reference_lm, built.lm)


def test_cache_root_follows_env(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("GRAPE_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("GRAPE_CACHE")
    assert cache_root() == Path.home() / ".cache" / "grape-evo"
