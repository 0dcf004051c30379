"""Presets: the contract names exist, build, train and match their papers' settings."""

from __future__ import annotations

import pytest
import torch

from grape_evo.objective import (
    ObjectiveError,
    ObjectiveSpec,
    PreferenceBatch,
    RolloutBatch,
    build_objective,
    presets,
)

CONTRACT = [
    "sft",
    "rejection_sampling",
    "reinforce",
    "reinforce_baseline",
    "rloo",
    "trpo",
    "ppo",
    "grpo",
    "dr_grpo",
    "dapo",
    "gspo",
    "cispo",
    "reinforce_pp",
    "dpo",
    "online_dpo",
    "ipo",
    "slic",
    "simpo",
    "discopop",
]


def _rollouts(spec: ObjectiveSpec, seed: int = 0) -> RolloutBatch:
    g = torch.Generator().manual_seed(seed)
    group = max(spec.group_size, 2)
    b, t = 2 * group, 6
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    lengths[0] = t
    mask = (torch.arange(t).unsqueeze(0) < lengths.unsqueeze(-1)).float()
    logp = (-torch.rand(b, t, generator=g) * 3.0).requires_grad_(True)
    uses_critic = spec.advantage.name == "gae"
    return RolloutBatch(
        logp=logp,
        # first epoch: old policy == current policy (otherwise GSPO's 3e-4 clip zeroes grads)
        old_logp=logp.detach().clone(),
        ref_logp=logp.detach() + 0.2 * torch.randn(b, t, generator=g),
        mask=mask,
        # distinct rewards so every group has a best member and nonzero spread
        rewards=torch.randperm(b, generator=g).float() / b,
        group_ids=torch.arange(2).repeat_interleave(group),
        values=torch.randn(b, t, generator=g) if uses_critic else None,
    )


def _pairs(seed: int = 0) -> PreferenceBatch:
    g = torch.Generator().manual_seed(seed)
    n = 4
    chosen = (-torch.rand(n, generator=g) * 20.0).requires_grad_(True)
    rejected = (-torch.rand(n, generator=g) * 20.0).requires_grad_(True)
    return PreferenceBatch(
        chosen,
        rejected,
        chosen.detach() + torch.randn(n, generator=g),
        rejected.detach() + torch.randn(n, generator=g),
        torch.randint(1, 20, (n,), generator=g).float(),
        torch.randint(1, 20, (n,), generator=g).float(),
    )


def test_contract_names_present():
    assert set(CONTRACT) <= set(presets.names())
    for name in CONTRACT:
        spec = presets.get(name)
        assert isinstance(spec, ObjectiveSpec)
        assert spec.name == name


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ObjectiveError) as info:
        presets.get("nope")
    msg = str(info.value)
    assert "nope" in msg
    for name in CONTRACT:
        assert name in msg


@pytest.mark.parametrize("name", CONTRACT)
def test_preset_forward_backward(name):
    spec = presets.get(name)
    obj = build_objective(spec)
    if spec.preference is not None:
        pairs = _pairs()
        loss, metrics = obj(pairs)
        loss.backward()
        grads = [pairs.chosen_logp.grad, pairs.rejected_logp.grad]
    else:
        batch = _rollouts(spec)
        loss, metrics = obj(batch)
        loss.backward()
        grads = [batch.logp.grad]
    assert loss.ndim == 0
    assert torch.isfinite(loss)
    assert torch.isfinite(metrics["loss"])
    for grad in grads:
        assert grad is not None
        assert torch.isfinite(grad).all()
    assert any(torch.count_nonzero(g) > 0 for g in grads)
    if spec.preference is None:
        assert torch.all(grads[0][batch.mask == 0] == 0)


@pytest.mark.parametrize("name", CONTRACT)
def test_preset_yaml_round_trip(name, tmp_path):
    spec = presets.get(name)
    path = tmp_path / f"{name}.yaml"
    path.write_text(spec.to_yaml())
    assert ObjectiveSpec.from_yaml(path) == spec
    assert ObjectiveSpec.from_yaml(path).key() == spec.key()


def test_preset_keys_distinct():
    keys = {presets.get(n).key(): n for n in presets.names()}
    assert len(keys) == len(presets.names())


# Keys computed at commit 480763a, before the fidelity parameters (batch_zscore.std_of,
# reinforce_pp.baseline_of, best_of_group.scale, gae's critic settings, the k3_clamped
# estimator) and the regime fields (minibatches, staleness) existed: a spec that does not use
# them must keep its key. rejection_sampling (scale "sft") and ppo (a separate value model,
# value clipping, 4 minibatches) changed on purpose.
KEYS_BEFORE = {
    "sft": "5090c8b2b06ae6bc",
    "reinforce": "9be54df3cd55a3b9",
    "reinforce_baseline": "ba7d2ef1f8c3dfae",
    "rloo": "16a53f51f43de20b",
    "trpo": "34425a92f5e9ae63",
    "grpo": "16baef25218e5c87",
    "dr_grpo": "50a572ca1f83911c",
    "dapo": "cde9cef703d6aec9",
    "gspo": "5fea2772f12e37a1",
    "cispo": "4cd2b639bde62759",
    "reinforce_pp": "bc9783b236c71c71",
    "dpo": "6b3dff358ce8e9ad",
    "online_dpo": "bbbc38f809b82b4b",
    "ipo": "47a2536e05ec42e4",
    "slic": "6c710c9f4c3661c2",
    "simpo": "99a5aa9633d2672b",
    "discopop": "7355d20b1d450c3f",
}
REJECTION_SAMPLING_KEY_BEFORE = "bfbff4319c827ae9"
PPO_KEY_BEFORE = "145f41ee3801f1c8"


@pytest.mark.parametrize("name", sorted(KEYS_BEFORE))
def test_preset_keys_unchanged(name):
    assert presets.get(name).key() == KEYS_BEFORE[name]


def test_rejection_sampling_key_changed_with_its_scale():
    spec = presets.get("rejection_sampling")
    assert spec.key() != REJECTION_SAMPLING_KEY_BEFORE
    group_scaled = ObjectiveSpec.from_dict(
        {**presets.PRESETS["rejection_sampling"].spec, "advantage": "best_of_group"}
    )
    assert group_scaled.key() == REJECTION_SAMPLING_KEY_BEFORE


def test_ppo_key_changed_with_its_critic_and_minibatches():
    assert presets.get("ppo").key() != PPO_KEY_BEFORE
    raw = dict(presets.PRESETS["ppo"].spec)
    before = {**raw, "advantage": {"name": "gae", "gamma": 1.0, "lam": 0.95}, "minibatches": 1}
    assert ObjectiveSpec.from_dict(before).key() == PPO_KEY_BEFORE


def test_describe_cites_a_paper():
    for name in CONTRACT:
        entry = presets.describe(name)
        assert entry.paper


def _params(component) -> dict:
    return dict(component.params)


def test_grpo_settings():
    s = presets.get("grpo")
    assert s.data == "on_policy"
    assert s.group_size >= 2
    assert s.advantage.name == "group_zscore"
    assert s.surrogate.name == "ppo_clip"
    assert _params(s.surrogate)["clip_low"] == 0.2
    assert _params(s.surrogate)["clip_high"] == 0.2
    assert s.kl.estimator == "k3" and s.kl.placement == "loss" and s.kl.coef == 0.04
    assert s.aggregation.name == "seq_mean_token_mean"
    assert s.preference is None


def test_dapo_settings():
    s = presets.get("dapo")
    assert s.advantage.name == "group_zscore"
    assert s.surrogate.name == "ppo_clip"
    assert _params(s.surrogate)["clip_low"] == 0.2
    assert _params(s.surrogate)["clip_high"] == 0.28
    assert s.aggregation.name == "token_mean"
    assert not s.kl.active


def test_dr_grpo_settings():
    s = presets.get("dr_grpo")
    assert s.advantage.name == "group_mean"
    assert s.aggregation.name == "seq_mean_token_sum_norm"
    assert s.surrogate.name == "ppo_clip"
    assert not s.kl.active


def test_gspo_settings():
    s = presets.get("gspo")
    assert s.surrogate.name == "gspo"
    assert _params(s.surrogate)["clip_low"] == pytest.approx(3e-4)
    assert _params(s.surrogate)["clip_high"] == pytest.approx(4e-4)
    assert s.advantage.name == "group_zscore"


def test_other_preset_settings():
    assert presets.get("sft").data == "demonstrations"
    rs = presets.get("rejection_sampling").advantage
    assert rs.name == "best_of_group" and rs.get("scale") == "sft"
    assert presets.get("reinforce").advantage.name == "reward"
    assert presets.get("reinforce").surrogate.name == "reinforce"
    assert presets.get("reinforce_baseline").advantage.name == "ema_baseline"
    assert presets.get("rloo").advantage.name == "rloo"
    assert presets.get("trpo").surrogate.name == "trpo"
    assert presets.get("trpo").advantage.name == "gae"
    ppo = presets.get("ppo")
    assert ppo.surrogate.name == "ppo_clip" and ppo.advantage.name == "gae"
    assert _params(ppo.surrogate)["clip_low"] == 0.2 == _params(ppo.surrogate)["clip_high"]
    assert presets.get("cispo").surrogate.name == "cispo"
    assert presets.get("reinforce_pp").advantage.name == "reinforce_pp"
    dpo = presets.get("dpo")
    assert dpo.data == "preference_pairs" and dpo.preference.name == "sigmoid"
    assert _params(dpo.preference.loss)["beta"] == 0.1
    online = presets.get("online_dpo")
    assert online.data == "on_policy" and online.group_size >= 2
    assert online.preference.name == "sigmoid"
    assert presets.get("ipo").preference.name == "ipo"
    assert presets.get("slic").preference.name == "hinge"
    assert presets.get("simpo").preference.name == "simpo"
    assert presets.get("discopop").preference.name == "discopop"


def test_presets_are_fresh_values():
    a, b = presets.get("grpo"), presets.get("grpo")
    assert a == b
    assert a.key() == b.key()
