"""build_objective(spec)(batch) -> (loss, metrics): identities worked out from the formulas."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from grape_evo.objective import (
    KL_AFTER_UPDATE,
    ObjectiveSpec,
    PreferenceBatch,
    RolloutBatch,
    build_objective,
    presets,
)
from grape_evo.objective.presets import PRESETS

B, T, G = 8, 5, 4
# two groups of four; sequence lengths 1..5 (right padded)
_LENGTHS = [5, 3, 4, 1, 2, 5, 4, 3]
_REWARDS = [1.0, 0.0, 0.5, 2.0, -1.0, 0.3, 0.3, 1.5]
_GROUPS = [0, 0, 0, 0, 7, 7, 7, 7]


def _mask(lengths=_LENGTHS, t=T):
    return torch.tensor([[1.0 if j < n else 0.0 for j in range(t)] for n in lengths])


def _rollouts(seed=0, values=False, entropy=False, rewards=_REWARDS) -> RolloutBatch:
    g = torch.Generator().manual_seed(seed)
    mask = _mask()
    logp = (-torch.rand(B, T, generator=g) * 2.0).requires_grad_(True)
    old_logp = logp.detach() + 0.3 * torch.randn(B, T, generator=g)
    ref_logp = logp.detach() + 0.3 * torch.randn(B, T, generator=g)
    return RolloutBatch(
        logp=logp,
        old_logp=old_logp,
        ref_logp=ref_logp,
        mask=mask,
        rewards=torch.tensor(rewards),
        group_ids=torch.tensor(_GROUPS),
        values=torch.randn(B, T, generator=g) if values else None,
        entropy=torch.rand(B, T, generator=g) * 3.0 if entropy else None,
    )


def _pairs(requires_grad=True) -> PreferenceBatch:
    chosen = torch.tensor([-3.0, -10.0, -2.0], requires_grad=requires_grad)
    rejected = torch.tensor([-5.0, -8.0, -7.0], requires_grad=requires_grad)
    return PreferenceBatch(
        chosen,
        rejected,
        torch.tensor([-4.0, -9.0, -2.0]),
        torch.tensor([-4.5, -9.0, -7.0]),
        torch.tensor([3.0, 4.0, 1.0]),
        torch.tensor([5.0, 2.0, 6.0]),
    )


def _group_stats():
    """Per-sequence group mean and Bessel-corrected std, by hand with ``statistics``."""
    mean, std = [], []
    for gid in _GROUPS:
        members = [r for r, g in zip(_REWARDS, _GROUPS, strict=True) if g == gid]
        mean.append(statistics.fmean(members))
        std.append(statistics.stdev(members))
    return mean, std


# ---- GRPO ---------------------------------------------------------------------------------


def test_grpo_token_mean_equals_hand_formula():
    spec = ObjectiveSpec.from_dict(
        {**PRESETS["grpo"].spec, "group_size": G, "aggregation": "token_mean"}
    )
    batch = _rollouts(seed=1)
    loss, metrics = build_objective(spec)(batch)

    mean, std = _group_stats()
    # A_i = (R_i - mu_G) / (sigma_G + 1e-6)
    adv = torch.tensor([(r - m) / (s + 1e-6) for r, m, s in zip(_REWARDS, mean, std, strict=True)])
    adv = adv.unsqueeze(-1).expand(B, T)
    lp = batch.logp.detach()
    r = torch.exp(lp - batch.old_logp)
    # PPO-clip per token: -min(r A, clip(r, 0.8, 1.2) A)
    surrogate = -torch.minimum(r * adv, torch.clamp(r, 0.8, 1.2) * adv)
    d = lp - batch.ref_logp
    k3 = torch.exp(-d) + d - 1.0
    per_token = (surrogate + 0.04 * k3) * batch.mask
    expected = per_token.sum() / batch.mask.sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)
    assert metrics["loss"].item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)


def test_grpo_seq_mean_token_mean_equals_hand_formula():
    spec = ObjectiveSpec.from_dict({**PRESETS["grpo"].spec, "group_size": G})
    batch = _rollouts(seed=2)
    loss, _ = build_objective(spec)(batch)
    mean, std = _group_stats()
    total = 0.0
    for i in range(B):
        a = (_REWARDS[i] - mean[i]) / (std[i] + 1e-6)
        seq = 0.0
        for t in range(_LENGTHS[i]):
            lp = batch.logp[i, t].item()
            r = math.exp(lp - batch.old_logp[i, t].item())
            d = lp - batch.ref_logp[i, t].item()
            seq += -min(r * a, min(max(r, 0.8), 1.2) * a) + 0.04 * (math.exp(-d) + d - 1.0)
        total += seq / _LENGTHS[i]
    assert loss.item() == pytest.approx(total / B, rel=1e-5, abs=1e-7)


def test_dr_grpo_advantage_is_grpo_times_std():
    grpo = build_objective(ObjectiveSpec.from_dict({**PRESETS["grpo"].spec, "group_size": G}))
    dr = build_objective(ObjectiveSpec.from_dict({**PRESETS["dr_grpo"].spec, "group_size": G}))
    batch = _rollouts()
    _, std = _group_stats()
    scale = torch.tensor([s + 1e-6 for s in std]).unsqueeze(-1)
    a_grpo, a_dr = grpo.advantages(batch), dr.advantages(batch)
    assert torch.allclose(a_dr, a_grpo * scale, atol=1e-5)
    # and Dr. GRPO's advantage is R - mean_G by hand
    mean, _ = _group_stats()
    hand = torch.tensor([r - m for r, m in zip(_REWARDS, mean, strict=True)]).unsqueeze(-1)
    assert torch.allclose(a_dr, hand * batch.mask, atol=1e-6)
    assert torch.all(a_dr[batch.mask == 0] == 0)


# ---- Dr. GRPO's constant normaliser: the generation budget ---------------------------------

# one group of 2, R = [1, 0] -> group_mean A = [0.5, -0.5]; logp row 0 = [-1, -2, -3] (3 tokens),
# row 1 = [-0.5, -1.5] (2 tokens). Per-token REINFORCE loss -A logp:
# row 0: 0.5, 1.0, 1.5 (sum 3);  row 1: -0.25, -0.75 (sum -1);  total 2.
_BUDGET_LOGP = [[-1.0, -2.0, -3.0], [-0.5, -1.5, -7.0]]  # -7.0 at padding: must not count
_BUDGET_LENGTHS = [3, 2]


def _budget_batch(t: int, budget: int) -> RolloutBatch:
    """The same tokens right-padded to width t (sampling stopped after t steps)."""
    logp = torch.full((2, t), -9.0)
    logp[:, :3] = torch.tensor(_BUDGET_LOGP)
    return RolloutBatch(
        logp=logp.requires_grad_(True),
        old_logp=logp.detach().clone(),
        ref_logp=logp.detach().clone(),
        mask=_mask(_BUDGET_LENGTHS, t),
        rewards=torch.tensor([1.0, 0.0]),
        group_ids=torch.tensor([0, 0]),
        generation_budget=budget,
    )


def _dr_grpo_like(aggregation) -> ObjectiveSpec:
    return ObjectiveSpec.from_dict(
        {"group_size": 2, "advantage": "group_mean", "aggregation": aggregation}
    )


def test_seq_mean_token_sum_norm_divides_by_generation_budget():
    obj = build_objective(_dr_grpo_like("seq_mean_token_sum_norm"))
    # budget 16: 2 / (B * 16) = 2 / 32 = 0.0625 whatever the batch's own width T
    for t in (5, 9, 16):
        batch = _budget_batch(t, budget=16)
        loss, _ = obj(batch)
        assert loss.item() == pytest.approx(0.0625, rel=1e-6), t
        # d loss / d logp_{i,t} = -A_i / 32 on valid tokens: -0.015625 (row 0), 0.015625 (row 1)
        (grad,) = torch.autograd.grad(loss, batch.logp)
        expected = torch.zeros(2, t)
        expected[0, :3] = -0.5 / 32
        expected[1, :2] = 0.5 / 32
        torch.testing.assert_close(grad, expected)
    # without a known budget the width T is used: 2 / (2 * 5) = 0.2 and 2 / (2 * 9) = 0.1111
    assert obj(_budget_batch(5, budget=0))[0].item() == pytest.approx(0.2, rel=1e-6)
    assert obj(_budget_batch(9, budget=0))[0].item() == pytest.approx(2 / 18, rel=1e-6)
    # a budget below T (not a real sampler's) never truncates: T = 9 is used
    assert obj(_budget_batch(9, budget=4))[0].item() == pytest.approx(2 / 18, rel=1e-6)
    # an explicit max_len wins over the budget: 2 / (2 * 10) = 0.1
    explicit = build_objective(_dr_grpo_like({"name": "seq_mean_token_sum_norm", "max_len": 10}))
    assert explicit(_budget_batch(5, budget=16))[0].item() == pytest.approx(0.1, rel=1e-6)


@pytest.mark.parametrize(
    ("aggregation", "expected"),
    [
        # token_mean: 2 / 5 tokens; seq_mean_token_mean: (3/3 + -1/2) / 2 = 0.25;
        # seq_mean_token_sum: 2 / 2 = 1; token_sum: 2
        ("token_mean", 0.4),
        ("seq_mean_token_mean", 0.25),
        ("seq_mean_token_sum", 1.0),
        ("token_sum", 2.0),
    ],
)
def test_other_aggregations_ignore_the_budget(aggregation, expected):
    obj = build_objective(_dr_grpo_like(aggregation))
    for t, budget in ((5, 0), (5, 16), (9, 16)):
        assert obj(_budget_batch(t, budget))[0].item() == pytest.approx(expected, rel=1e-6)


# ---- rejection sampling is SFT on the selected completions --------------------------------


def test_rejection_sampling_equals_sft_on_the_best_rows():
    spec = presets.get("rejection_sampling")
    assert spec.advantage.get("scale") == "sft"
    batch = _rollouts(seed=6)  # two groups of 4, distinct rewards: best rows 3 (R=2) and 7 (1.5)
    best = [3, 7]
    loss, _ = build_objective(spec)(batch)
    (grad,) = torch.autograd.grad(loss, batch.logp)
    # SFT on the selected completions: token mean of -log pi over their 1 + 3 = 4 tokens
    lp = batch.logp.detach()
    nll = [-lp[i, t].item() for i in best for t in range(_LENGTHS[i])]
    assert len(nll) == 4
    assert loss.item() == pytest.approx(sum(nll) / 4, rel=1e-6)
    expected = torch.zeros(B, T)
    for i in best:
        expected[i, : _LENGTHS[i]] = -1.0 / 4
    torch.testing.assert_close(grad, expected)
    # and the sft preset on just those rows gives the same loss and gradient
    logp = batch.logp.detach().clone().requires_grad_(True)
    subset = RolloutBatch(
        logp=logp[best],
        old_logp=batch.old_logp[best],
        ref_logp=batch.ref_logp[best],
        mask=batch.mask[best],
        rewards=batch.rewards[best],
        group_ids=torch.tensor([0, 1]),
    )
    sft_loss, _ = build_objective(presets.get("sft"))(subset)
    (sft_grad,) = torch.autograd.grad(sft_loss, logp)
    assert sft_loss.item() == pytest.approx(loss.item(), rel=1e-6)
    torch.testing.assert_close(sft_grad, grad)


def test_best_of_group_default_scale_is_one_over_all_tokens():
    # the earlier behaviour, kept as scale "group": the selected NLL over all 27 valid tokens
    spec = ObjectiveSpec.from_dict(
        {"group_size": G, "advantage": "best_of_group", "aggregation": "token_mean"}
    )
    batch = _rollouts(seed=6)
    loss, _ = build_objective(spec)(batch)
    lp = batch.logp.detach()
    nll = sum(-lp[i, t].item() for i in (3, 7) for t in range(_LENGTHS[i]))
    assert sum(_LENGTHS) == 27
    assert loss.item() == pytest.approx(nll / 27, rel=1e-6)


# ---- preference objectives ----------------------------------------------------------------


def test_dpo_objective_at_reference_is_log2():
    obj = build_objective(presets.get("dpo"))
    pairs = PreferenceBatch(
        torch.tensor([-1.0, -3.0], requires_grad=True),
        torch.tensor([-2.0, -0.5], requires_grad=True),
        torch.tensor([-1.0, -3.0]),
        torch.tensor([-2.0, -0.5]),
        torch.tensor([2.0, 3.0]),
        torch.tensor([2.0, 1.0]),
    )
    loss, metrics = obj(pairs)
    assert loss.item() == pytest.approx(math.log(2.0), rel=1e-6)
    assert metrics["loss"].item() == pytest.approx(math.log(2.0), rel=1e-6)


def test_dpo_objective_mean_over_pairs():
    obj = build_objective(presets.get("dpo"))
    loss, _ = obj(_pairs())
    # a = (1, -1, 0), b = (-0.5, 1, 0) -> h = (1.5, -2, 0); DPO pair loss log(1 + exp(-0.1 h))
    hs = [1.5, -2.0, 0.0]
    expected = statistics.fmean(math.log1p(math.exp(-0.1 * h)) for h in hs)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_batch_kind_mismatch_raises_type_error():
    with pytest.raises(TypeError):
        build_objective(presets.get("grpo"))(_pairs())
    with pytest.raises(TypeError):
        build_objective(presets.get("dpo"))(_rollouts())
    with pytest.raises(TypeError):
        build_objective(presets.get("online_dpo"))(_rollouts())


# ---- KL in the reward ---------------------------------------------------------------------


def test_kl_in_reward_k1_shapes_outcome_reward():
    coef = 0.1
    spec = ObjectiveSpec.from_dict(
        {"advantage": "reward", "kl": {"estimator": "k1", "placement": "reward", "coef": coef}}
    )
    batch = _rollouts(seed=3)
    adv = build_objective(spec).advantages(batch)
    for i in range(B):
        # R' = R - coef * sum_t (old_logp - ref_logp) over valid tokens
        kl_sum = sum(
            batch.old_logp[i, t].item() - batch.ref_logp[i, t].item() for t in range(_LENGTHS[i])
        )
        shaped = _REWARDS[i] - coef * kl_sum
        for t in range(T):
            want = shaped if t < _LENGTHS[i] else 0.0
            assert adv[i, t].item() == pytest.approx(want, abs=1e-5)
    # KL in the reward does not add a loss term: the loss is the plain REINFORCE loss on R'
    loss, _ = build_objective(spec)(batch)
    expected = -(adv * batch.logp.detach() * batch.mask).sum() / batch.mask.sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_kl_coef_zero_means_no_shaping():
    spec = ObjectiveSpec.from_dict(
        {"advantage": "reward", "kl": {"estimator": "k1", "placement": "reward", "coef": 0.0}}
    )
    batch = _rollouts()
    adv = build_objective(spec).advantages(batch)
    hand = torch.tensor(_REWARDS).unsqueeze(-1) * batch.mask
    assert torch.allclose(adv, hand)


# ---- entropy bonus ------------------------------------------------------------------------


def test_entropy_bonus_subtracts_coef_times_mean_entropy():
    base = {"advantage": "reward", "aggregation": "token_mean"}
    batch = _rollouts(seed=4, entropy=True)
    l0, _ = build_objective(ObjectiveSpec.from_dict(base))(batch)
    l1, metrics = build_objective(ObjectiveSpec.from_dict({**base, "entropy_coef": 0.05}))(batch)
    valid = [batch.entropy[i, t].item() for i in range(B) for t in range(_LENGTHS[i])]
    mean_entropy = statistics.fmean(valid)
    assert (l0 - l1).item() == pytest.approx(0.05 * mean_entropy, rel=1e-5)
    assert metrics["entropy"].item() == pytest.approx(mean_entropy, rel=1e-5)


def test_entropy_bonus_needs_entropy():
    obj = build_objective(ObjectiveSpec.from_dict({"entropy_coef": 0.01}))
    with pytest.raises(ValueError, match="entropy"):
        obj(_rollouts(entropy=False))


# ---- state --------------------------------------------------------------------------------


def test_ema_baseline_first_batch_mean_then_carried_baseline():
    decay = 0.9
    obj = build_objective(
        ObjectiveSpec.from_dict({"advantage": {"name": "ema_baseline", "decay": decay}})
    )
    batch = _rollouts()
    mean_r = statistics.fmean(_REWARDS)  # 4.6 / 8 = 0.575
    first = obj.advantages(batch)
    hand = torch.tensor([r - mean_r for r in _REWARDS]).unsqueeze(-1) * batch.mask
    assert torch.allclose(first, hand, atol=1e-6)

    # after one step the baseline is the reported reward mean (no earlier baseline)
    obj.end_step({"reward_mean": 2.0})
    second = obj.advantages(batch)
    hand = torch.tensor([r - 2.0 for r in _REWARDS]).unsqueeze(-1) * batch.mask
    assert torch.allclose(second, hand, atol=1e-6)

    # then b <- decay * b + (1 - decay) * m = 0.9 * 2 + 0.1 * (-1) = 1.7
    obj.end_step({"reward_mean": -1.0})
    third = obj.advantages(batch)
    hand = torch.tensor([r - 1.7 for r in _REWARDS]).unsqueeze(-1) * batch.mask
    assert torch.allclose(third, hand, atol=1e-6)
    loss, _ = obj(batch)
    assert torch.isfinite(loss)


def _kl_penalty_loss_by_hand(batch: RolloutBatch, beta: float) -> float:
    # token_mean of -r A + beta * ((r - 1) - log r), A = R (advantage 'reward')
    total, n = 0.0, 0
    for i in range(B):
        for t in range(_LENGTHS[i]):
            r = math.exp(batch.logp[i, t].item() - batch.old_logp[i, t].item())
            total += -r * _REWARDS[i] + beta * ((r - 1.0) - math.log(r))
            n += 1
    return total / n


def test_kl_penalty_adaptive_beta():
    spec = ObjectiveSpec.from_dict(
        {"surrogate": {"name": "kl_penalty", "beta": 1.0, "target_kl": 0.01}}
    )
    obj = build_objective(spec)
    batch = _rollouts(seed=5)
    loss, _ = obj(batch)
    assert loss.item() == pytest.approx(_kl_penalty_loss_by_hand(batch, 1.0), rel=1e-5)
    # KL far above 1.5 * target -> beta doubles
    obj.end_step({KL_AFTER_UPDATE: 1.0})
    loss, metrics = obj(batch)
    assert loss.item() == pytest.approx(_kl_penalty_loss_by_hand(batch, 2.0), rel=1e-5)
    assert metrics["kl_beta"].item() == pytest.approx(2.0)
    # KL far below target / 1.5 -> beta halves (back to 1.0, then 0.5)
    obj.end_step({KL_AFTER_UPDATE: 0.0})
    obj.end_step({KL_AFTER_UPDATE: 0.0})
    loss, _ = obj(batch)
    assert loss.item() == pytest.approx(_kl_penalty_loss_by_hand(batch, 0.5), rel=1e-5)
    # within [target / 1.5, 1.5 target] beta stays
    obj.end_step({KL_AFTER_UPDATE: 0.01})
    loss, _ = obj(batch)
    assert loss.item() == pytest.approx(_kl_penalty_loss_by_hand(batch, 0.5), rel=1e-5)
    # the pre-update approx_kl is not the PPO paper's d: without kl_after_update beta stays
    obj.end_step({"approx_kl": 0.0, "reward_mean": 0.5})
    loss, _ = obj(batch)
    assert loss.item() == pytest.approx(_kl_penalty_loss_by_hand(batch, 0.5), rel=1e-5)


def test_kl_penalty_non_adaptive_keeps_beta():
    spec = ObjectiveSpec.from_dict(
        {"surrogate": {"name": "kl_penalty", "beta": 1.0, "adaptive": False}}
    )
    obj = build_objective(spec)
    batch = _rollouts(seed=5)
    obj.end_step({KL_AFTER_UPDATE: 10.0})
    loss, _ = obj(batch)
    assert loss.item() == pytest.approx(_kl_penalty_loss_by_hand(batch, 1.0), rel=1e-5)


def test_separate_objectives_do_not_share_state():
    spec = ObjectiveSpec.from_dict({"surrogate": {"name": "kl_penalty", "beta": 1.0}})
    a, b = build_objective(spec), build_objective(spec)
    a.end_step({KL_AFTER_UPDATE: 1.0})
    batch = _rollouts(seed=5)
    loss_b, _ = b(batch)
    assert loss_b.item() == pytest.approx(_kl_penalty_loss_by_hand(batch, 1.0), rel=1e-5)


# ---- masking property for every rollout preset --------------------------------------------

_ROLLOUT_PRESETS = [n for n in presets.names() if presets.get(n).preference is None]


def _preset_batch(spec: ObjectiveSpec, data: st.DataObject) -> tuple[RolloutBatch, torch.Tensor]:
    g_size = max(spec.group_size, 2)
    n_groups = data.draw(st.integers(1, 2))
    b = g_size * n_groups
    t = data.draw(st.integers(1, 6))
    seed = data.draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    lengths = [data.draw(st.integers(1, t)) for _ in range(b)]
    mask = torch.tensor([[1.0 if j < n else 0.0 for j in range(t)] for n in lengths])
    logp = -torch.rand(b, t, generator=gen) * 5.0
    old_logp = logp + 0.5 * torch.randn(b, t, generator=gen) * data.draw(st.sampled_from([0, 1]))
    ref_logp = logp + 0.5 * torch.randn(b, t, generator=gen)
    rewards = torch.tensor(
        [data.draw(st.floats(-2.0, 2.0, allow_nan=False, width=32)) for _ in range(b)]
    )
    batch = RolloutBatch(
        logp=logp,
        old_logp=old_logp,
        ref_logp=ref_logp,
        mask=mask,
        rewards=rewards,
        group_ids=torch.arange(n_groups).repeat_interleave(g_size),
        values=torch.randn(b, t, generator=gen),
        entropy=torch.rand(b, t, generator=gen),
    )
    garbage = -torch.rand(b, t, generator=gen) * 40.0  # other log-probs at padded positions
    return batch, garbage


def _loss_and_grad(obj, batch: RolloutBatch, logp: torch.Tensor):
    logp = logp.clone().requires_grad_(True)
    loss, _ = obj(batch.with_(logp=logp))
    loss.backward()
    return loss.detach(), logp.grad


@pytest.mark.parametrize("name", _ROLLOUT_PRESETS)
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_masked_logp_has_no_effect(name, data):
    spec = presets.get(name)
    batch, garbage = _preset_batch(spec, data)
    obj = build_objective(spec)
    loss1, grad1 = _loss_and_grad(obj, batch, batch.logp)
    assert torch.isfinite(loss1)
    assert torch.isfinite(grad1).all()
    pad = batch.mask == 0
    other = torch.where(pad, garbage, batch.logp)
    loss2, grad2 = _loss_and_grad(obj, batch, other)
    assert torch.allclose(loss1, loss2, rtol=1e-5, atol=1e-6)
    assert torch.allclose(grad1, grad2, rtol=1e-5, atol=1e-7)
    assert torch.all(grad1[pad] == 0)
