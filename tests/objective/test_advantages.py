"""Tests for the advantage estimators in ``grape_evo.objective.advantages``.

Every expected value is derived independently: by hand (worked in comments) or from the
formula with plain Python floats and loops (the ``ref_*`` helpers below), never by reading
back the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import grape_evo.objective.advantages  # noqa: F401  (registers the estimators)
from grape_evo.objective.advantages import gae_advantages_and_returns
from grape_evo.objective.batch import RolloutBatch
from grape_evo.objective.registry import ADVANTAGES

ALL_NAMES = ADVANTAGES.names()
EXPECTED_NAMES = {
    "none",
    "reward",
    "ema_baseline",
    "group_mean",
    "group_zscore",
    "batch_zscore",
    "rloo",
    "reinforce_pp",
    "best_of_group",
    "rank",
    "gae",
}
GROUP_RELATIVE = ["group_mean", "group_zscore", "batch_zscore", "rloo", "best_of_group", "rank"]

# (name, params) pairs covering every registered estimator and its boolean switches.
VARIANTS = [
    ("none", {}),
    ("reward", {}),
    ("ema_baseline", {}),
    ("group_mean", {}),
    ("group_zscore", {}),
    ("group_zscore", {"unbiased_std": False}),
    ("batch_zscore", {}),
    ("batch_zscore", {"std_of": "centred"}),
    ("rloo", {}),
    ("reinforce_pp", {}),
    ("reinforce_pp", {"group_baseline": False}),
    ("reinforce_pp", {"baseline_of": "return"}),
    ("reinforce_pp", {"group_baseline": False, "baseline_of": "return"}),
    ("best_of_group", {}),
    ("best_of_group", {"scale": "sft"}),
    ("rank", {}),
    ("gae", {}),
    ("gae", {"whiten": False}),
    ("gae", {"gamma": 0.9, "lam": 0.5, "whiten": False}),
    ("expression", {}),
    ("expression", {"expr": "(R - min_G)/(max_G - min_G + 0.1) + rank_G*p_G - G/8"}),
]
VARIANT_IDS = [n + "".join(f"-{k}={v}" for k, v in p.items()) for n, p in VARIANTS]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def make_batch(
    rewards,
    mask,
    group_ids=None,
    values=None,
    token_rewards=None,
    logp=None,
    old_logp=None,
    ref_logp=None,
    entropy=None,
) -> RolloutBatch:
    mask_t = torch.tensor(mask, dtype=torch.float32)
    b, t = mask_t.shape
    if group_ids is None:
        group_ids = [0] * b

    def mat(x, fill):
        if x is None:
            return torch.full((b, t), fill, dtype=torch.float32)
        return torch.tensor(x, dtype=torch.float32)

    return RolloutBatch(
        logp=mat(logp, -1.0),
        old_logp=mat(old_logp, -1.1),
        ref_logp=mat(ref_logp, -1.2),
        mask=mask_t,
        rewards=torch.tensor(rewards, dtype=torch.float32),
        group_ids=torch.tensor(group_ids, dtype=torch.long),
        values=None if values is None else torch.tensor(values, dtype=torch.float32),
        token_rewards=None
        if token_rewards is None
        else torch.tensor(token_rewards, dtype=torch.float32),
        entropy=None if entropy is None else torch.tensor(entropy, dtype=torch.float32),
    )


def adv(name: str, batch: RolloutBatch, **params) -> torch.Tensor:
    return ADVANTAGES.get(name).fn(batch, **params)


def batch_and_state(name: str, data: dict) -> tuple[RolloutBatch, dict]:
    """A batch from generated data, and the carried state the component takes as keywords."""
    fields = {k: v for k, v in data.items() if k != "baseline"}
    state = {"baseline": data["baseline"]} if name == "ema_baseline" else {}
    return make_batch(**fields), state


def broadcast(per_seq, mask):
    """Plain-Python [B] -> [B, T] broadcast, 0 on padding."""
    return [[a * m for m in row] for a, row in zip(per_seq, mask, strict=True)]


def assert_matrix(actual: torch.Tensor, expected, atol=1e-6, rtol=1e-5):
    exp = torch.tensor(expected, dtype=torch.float64)
    assert actual.shape == exp.shape
    assert torch.isfinite(actual).all()
    torch.testing.assert_close(actual.to(torch.float64), exp, atol=atol, rtol=rtol)


def assert_zero_on_padding(actual: torch.Tensor, mask):
    for i, row in enumerate(mask):
        for j, m in enumerate(row):
            if m == 0:
                assert actual[i, j].item() == 0.0, (i, j, actual)


def mean(xs):
    return sum(xs) / len(xs)


def groups_of(group_ids):
    out: dict[int, list[int]] = {}
    for i, g in enumerate(group_ids):
        out.setdefault(g, []).append(i)
    return out


def std(xs, unbiased=True):
    n = len(xs)
    if n < 2:
        return 0.0
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / ((n - 1) if unbiased else n))


def whiten_list(xs, eps):
    """Standardise a flat list with the unbiased variance: (x - mean) / sqrt(var + eps)."""
    n = len(xs)
    if n == 0:
        return []
    m = mean(xs)
    var = sum((x - m) ** 2 for x in xs) / max(n - 1, 1)
    return [(x - m) / math.sqrt(var + eps) for x in xs]


# ---- plain-Python references -----------------------------------------------------------------
def ref_expression(expr, r, members):
    """The expression advantages of VARIANTS from their written formulas, in plain Python."""
    g = len(members)
    less = sum(1 for x in members if x < r)
    equal = sum(1 for x in members if x == r)
    rank = 0.5 if g == 1 else (less + (equal - 1) / 2) / (g - 1)
    p = sum(1 for x in members if x > 0) / g
    lo, hi = min(members), max(members)
    if expr == "(R - mean_G)/(std_G + 1e-6)":  # the default
        return (r - mean(members)) / (std(members, unbiased=False) + 1e-6)
    assert expr == "(R - min_G)/(max_G - min_G + 0.1) + rank_G*p_G - G/8"
    return (r - lo) / (hi - lo + 0.1) + rank * p - g / 8


def ref_per_sequence(
    name,
    rewards,
    group_ids,
    baseline=None,
    eps=1e-6,
    unbiased_std=True,
    std_of="raw",
    scale="group",
    lengths=None,
    expr=None,
):
    """Per-sequence advantage for the outcome estimators, straight from the formulas.

    ``lengths`` (valid tokens per sequence) is needed only by best_of_group with scale "sft".
    """
    grp = groups_of(group_ids)
    centred = [r - mean([rewards[j] for j in grp[group_ids[i]]]) for i, r in enumerate(rewards)]
    out = []
    for i, r in enumerate(rewards):
        members = [rewards[j] for j in grp[group_ids[i]]]
        g = len(members)
        mu = mean(members)
        if name == "none":
            out.append(1.0)
        elif name == "reward":
            out.append(r)
        elif name == "ema_baseline":
            b = mean(rewards) if baseline is None else baseline
            out.append(r - b)
        elif name == "group_mean":
            out.append(r - mu)
        elif name == "group_zscore":
            out.append(0.0 if g == 1 else (r - mu) / (std(members, unbiased_std) + eps))
        elif name == "batch_zscore":
            out.append((r - mu) / (std(rewards if std_of == "raw" else centred, True) + eps))
        elif name == "rloo":
            others = [rewards[j] for j in grp[group_ids[i]] if j != i]
            out.append(0.0 if g == 1 else r - mean(others))
        elif name == "best_of_group":
            top = max(members)
            n_top = sum(1 for x in members if x == top)
            out.append(1.0 / n_top if r == top and g > 1 else 0.0)
        elif name == "expression":
            out.append(ref_expression(expr or "(R - mean_G)/(std_G + 1e-6)", r, members))
        elif name == "rank":
            if g == 1:
                out.append(0.0)
            else:
                less = sum(1 for x in members if x < r)
                equal = sum(1 for x in members if x == r)  # includes r itself
                avg_rank = less + (equal - 1) / 2  # average of 0-based ranks less..less+equal-1
                out.append((avg_rank - (g - 1) / 2) / (g - 1))
        else:
            raise AssertionError(name)
    if name == "best_of_group" and scale == "sft":
        selected = sum(w * n for w, n in zip(out, lengths, strict=True))
        out = [w * sum(lengths) / selected if selected > 0 else 0.0 for w in out]
    return out


def ref_reinforce_pp(
    rewards, mask, group_ids, token_rewards, eps=1e-8, group_baseline=True, baseline_of="reward"
):
    grp = groups_of(group_ids)
    if group_baseline and baseline_of == "return":
        # verl: Q_i = R_i + sum of the sequence's token rewards, minus the group mean of Q
        tokens = token_rewards or [[0.0] * len(row) for row in mask]
        q = [
            r + sum(k * m for k, m in zip(tr, row, strict=True))
            for r, tr, row in zip(rewards, tokens, mask, strict=True)
        ]
        rows = [
            [q[i] - mean([q[j] for j in grp[group_ids[i]]]) if m else None for m in row]
            for i, row in enumerate(mask)
        ]
        return whiten_matrix(rows, eps)
    returns = []
    for i, row in enumerate(mask):
        members = [rewards[j] for j in grp[group_ids[i]]]
        outcome = rewards[i] - mean(members) if group_baseline else rewards[i]
        r_row = []
        for t in range(len(row)):
            if row[t] == 0:
                r_row.append(None)
                continue
            togo = 0.0
            if token_rewards is not None:
                togo = sum(token_rewards[i][s] for s in range(t, len(row)) if row[s] == 1)
            r_row.append(outcome + togo)
        returns.append(r_row)
    return whiten_matrix(returns, eps)


def whiten_matrix(rows, eps):
    """Whiten the non-None entries of a ragged matrix jointly; None -> 0."""
    flat = [x for row in rows for x in row if x is not None]
    white = iter(whiten_list(flat, eps))
    return [[0.0 if x is None else next(white) for x in row] for row in rows]


def ref_gae(rewards, mask, values, token_rewards, gamma, lam):
    """GAE per right-padded row: returns (advantages, returns) as lists, 0 on padding."""
    advs, rets = [], []
    for i, row in enumerate(mask):
        t_len = len(row)
        length = int(sum(row))
        r = [0.0] * length
        for t in range(length):
            if token_rewards is not None:
                r[t] += token_rewards[i][t]
        if length:
            r[length - 1] += rewards[i]
        v = [values[i][t] for t in range(length)] + [0.0]  # V = 0 after the last token
        a = [0.0] * (length + 1)
        for t in range(length - 1, -1, -1):
            delta = r[t] + gamma * v[t + 1] - v[t]
            a[t] = delta + gamma * lam * a[t + 1]
        advs.append(a[:length] + [0.0] * (t_len - length))
        rets.append([a[t] + v[t] for t in range(length)] + [0.0] * (t_len - length))
    return advs, rets


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------
def test_every_contract_name_is_registered():
    assert set(ALL_NAMES) >= EXPECTED_NAMES


def test_variants_cover_every_registered_name():
    assert {n for n, _ in VARIANTS} == set(ALL_NAMES)


# --------------------------------------------------------------------------------------------
# 1. hand-computed values
# --------------------------------------------------------------------------------------------
MASK2 = [[1, 1, 0], [1, 1, 1]]
R2 = [1.0, 0.0]  # one group of 2

MASK4 = [[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]]
R4 = [1.0, 0.0, 0.5, 2.0]
G4 = [0, 0, 1, 1]  # two groups of 2: means 0.5 and 1.25


def test_none_is_one_on_mask():
    for mask, r, g in [(MASK2, R2, None), (MASK4, R4, G4)]:
        out = adv("none", make_batch(r, mask, g))
        assert out.dtype == torch.float32
        assert_matrix(out, mask, atol=0, rtol=0)


def test_reward_is_broadcast_reward():
    assert_matrix(adv("reward", make_batch(R2, MASK2)), [[1, 1, 0], [0, 0, 0]])
    out = adv("reward", make_batch(R4, MASK4, G4))
    assert_matrix(out, [[1, 1, 0], [0, 0, 0], [0.5, 0, 0], [2, 2, 2]])


def test_ema_baseline_without_baseline_uses_batch_mean():
    # mean(R2) = 0.5 -> A = [0.5, -0.5]
    out = adv("ema_baseline", make_batch(R2, MASK2))
    assert_matrix(out, [[0.5, 0.5, 0], [-0.5, -0.5, -0.5]])
    # mean(R4) = 3.5 / 4 = 0.875 (the group ids play no role)
    out = adv("ema_baseline", make_batch(R4, MASK4, G4), decay=0.5)
    assert_matrix(out, broadcast([0.125, -0.875, -0.375, 1.125], MASK4))


def test_ema_baseline_with_carried_baseline():
    # b = 0.2 -> A = R - 0.2 = [0.8, -0.2]; the decay does not enter the advantage itself
    for decay in (0.0, 0.9):
        out = adv("ema_baseline", make_batch(R2, MASK2), decay=decay, baseline=0.2)
        assert_matrix(out, [[0.8, 0.8, 0], [-0.2, -0.2, -0.2]])
    out = adv("ema_baseline", make_batch(R4, MASK4, G4), baseline=1.5)
    assert_matrix(out, broadcast([-0.5, -1.5, -1.0, 0.5], MASK4))


def test_ema_update_state_rule():
    comp = ADVANTAGES.get("ema_baseline")
    assert comp.update_state is not None
    assert comp.params["decay"].default == 0.9
    # first batch: no baseline yet -> b = the batch mean
    s = comp.update_state({"baseline": None}, {"reward_mean": 0.5}, decay=0.9)
    assert s["baseline"] == pytest.approx(0.5)
    # b <- decay * b + (1 - decay) * mean = 0.9 * 1.0 + 0.1 * 0.5 = 0.95
    s = comp.update_state({"baseline": 1.0}, {"reward_mean": 0.5}, decay=0.9)
    assert s["baseline"] == pytest.approx(0.95)
    # 0.25 * 0.95 + 0.75 * (-1.0) = 0.2375 - 0.75 = -0.5125
    s = comp.update_state({"baseline": 0.95}, {"reward_mean": -1.0}, decay=0.25)
    assert s["baseline"] == pytest.approx(-0.5125)


def test_ema_update_state_from_the_declared_initial_state():
    """The built objective starts from ``dict(component.state)`` and calls
    ``update_state(state, metrics, **params)`` after the first batch; that must give b = mean."""
    comp = ADVANTAGES.get("ema_baseline")
    state = dict(comp.state)
    state = comp.update_state(state, {"reward_mean": 0.5}, **comp.defaults())
    assert state["baseline"] == pytest.approx(0.5)
    state = comp.update_state(state, {"reward_mean": 1.5}, **comp.defaults())
    assert state["baseline"] == pytest.approx(0.9 * 0.5 + 0.1 * 1.5)


def test_group_mean():
    assert_matrix(adv("group_mean", make_batch(R2, MASK2)), [[0.5, 0.5, 0], [-0.5, -0.5, -0.5]])
    # group 0: mean 0.5 -> [0.5, -0.5]; group 1: mean 1.25 -> [-0.75, 0.75]
    out = adv("group_mean", make_batch(R4, MASK4, G4))
    assert_matrix(out, broadcast([0.5, -0.5, -0.75, 0.75], MASK4))


def test_group_mean_equal_rewards_example():
    # rewards [1, 0 | 0.5, 0.5]: the second group is all equal -> 0
    out = adv("group_mean", make_batch([1.0, 0.0, 0.5, 0.5], MASK4, G4))
    assert_matrix(out, broadcast([0.5, -0.5, 0.0, 0.0], MASK4), atol=0, rtol=0)


def test_group_zscore_unbiased_default():
    # group {1, 0}: deviations +-0.5, unbiased var = (0.25 + 0.25) / 1 = 0.5, std = sqrt(0.5)
    s0 = math.sqrt(0.5)
    # group {0.5, 2}: deviations -+0.75, unbiased var = 1.125, std = sqrt(1.125)
    s1 = math.sqrt(1.125)
    eps = 1e-6
    out = adv("group_zscore", make_batch(R4, MASK4, G4))  # default eps 1e-6, unbiased
    exp = [0.5 / (s0 + eps), -0.5 / (s0 + eps), -0.75 / (s1 + eps), 0.75 / (s1 + eps)]
    assert_matrix(out, broadcast(exp, MASK4))
    # a large eps makes its placement visible: 0.5 / (0.70711 + 0.1) = 0.61950
    out = adv("group_zscore", make_batch(R2, MASK2), eps=0.1)
    a = 0.5 / (s0 + 0.1)
    assert a == pytest.approx(0.61950, abs=1e-5)
    assert_matrix(out, broadcast([a, -a], MASK2))


def test_group_zscore_biased():
    # biased std: group {1, 0} -> sqrt(0.5 / 2) = 0.5; group {0.5, 2} -> sqrt(1.125/2) = 0.75
    eps = 1e-6
    out = adv("group_zscore", make_batch(R4, MASK4, G4), unbiased_std=False)
    exp = [0.5 / (0.5 + eps), -0.5 / (0.5 + eps), -0.75 / (0.75 + eps), 0.75 / (0.75 + eps)]
    assert_matrix(out, broadcast(exp, MASK4))
    # group of 3 {3, 0, 0}: mean 1, devs 2,-1,-1, ss = 6; biased std sqrt(2), unbiased sqrt(3)
    mask = [[1, 1]] * 3
    for unbiased, s in [(True, math.sqrt(3.0)), (False, math.sqrt(2.0))]:
        out = adv(
            "group_zscore", make_batch([3.0, 0.0, 0.0], mask), eps=0.01, unbiased_std=unbiased
        )
        exp = [2 / (s + 0.01), -1 / (s + 0.01), -1 / (s + 0.01)]
        assert_matrix(out, broadcast(exp, mask))


def test_batch_zscore():
    # batch mean 0.875; deviations 0.125, -0.875, -0.375, 1.125;
    # squares 0.015625 + 0.765625 + 0.140625 + 1.265625 = 2.1875; unbiased var 2.1875/3
    s = math.sqrt(2.1875 / 3)
    assert s == pytest.approx(0.853913, abs=1e-6)
    eps = 1e-6
    out = adv("batch_zscore", make_batch(R4, MASK4, G4))
    exp = [x / (s + eps) for x in [0.5, -0.5, -0.75, 0.75]]  # numerators: R - group mean
    assert_matrix(out, broadcast(exp, MASK4))
    out = adv("batch_zscore", make_batch(R4, MASK4, G4), eps=0.5)
    assert_matrix(out, broadcast([x / (s + 0.5) for x in [0.5, -0.5, -0.75, 0.75]], MASK4))


def test_batch_zscore_std_of_raw_and_centred():
    # R = [1, 0, 3, 1], groups {1, 0} and {3, 1}: group means 0.5 and 2, numerators
    # R - mean_G = [0.5, -0.5, 1, -1].
    # raw (TRL scale_rewards="batch"): std of R = [1, 0, 3, 1]; mean 1.25, squared deviations
    #   0.0625 + 1.5625 + 3.0625 + 0.0625 = 4.75; unbiased var 4.75 / 3; std 1.2583057
    # centred (REINFORCE++-baseline): std of [0.5, -0.5, 1, -1]; mean 0, squares
    #   0.25 + 0.25 + 1 + 1 = 2.5; unbiased var 2.5 / 3; std 0.9128709
    mask = [[1, 1], [1, 0], [1, 1], [1, 1]]
    batch = make_batch([1.0, 0.0, 3.0, 1.0], mask, [0, 0, 1, 1])
    raw, centred = 1.2583057, 0.9128709
    assert raw == pytest.approx(math.sqrt(4.75 / 3), abs=1e-7)
    assert centred == pytest.approx(math.sqrt(2.5 / 3), abs=1e-7)
    numerators = [0.5, -0.5, 1.0, -1.0]
    out = adv("batch_zscore", batch, eps=0.0)
    assert_matrix(out, broadcast([x / raw for x in numerators], mask))
    assert_matrix(
        adv("batch_zscore", batch, eps=0.0, std_of="raw"),
        broadcast([x / raw for x in numerators], mask),
    )
    out = adv("batch_zscore", batch, eps=0.0, std_of="centred")
    # 0.5 / 0.9128709 = 0.5477226, 1 / 0.9128709 = 1.0954451
    assert_matrix(out, broadcast([0.5477226, -0.5477226, 1.0954451, -1.0954451], mask))
    out = adv("batch_zscore", batch, eps=0.1, std_of="centred")
    assert_matrix(out, broadcast([x / (centred + 0.1) for x in numerators], mask))


def test_rloo():
    # G = 2: R_i - R_other
    assert_matrix(adv("rloo", make_batch(R2, MASK2)), [[1, 1, 0], [-1, -1, -1]])
    out = adv("rloo", make_batch(R4, MASK4, G4))
    assert_matrix(out, broadcast([1.0, -1.0, -1.5, 1.5], MASK4))
    # G = 3 {3, 0, 0}: 3 - 0 = 3; 0 - (3 + 0)/2 = -1.5 (twice)
    mask = [[1], [1], [1]]
    assert_matrix(adv("rloo", make_batch([3.0, 0.0, 0.0], mask)), [[3.0], [-1.5], [-1.5]])


def test_reinforce_pp_group_baseline_with_token_rewards():
    tr = [[0.1, -0.2, 5.0], [0.0, 0.3, -0.1]]  # 5.0 sits on padding: must be ignored
    batch = make_batch(R2, MASK2, token_rewards=tr)
    # outcome R - mean_G = [0.5, -0.5]; returns-to-go over valid tokens:
    # row 0: t0 0.5 + (0.1 - 0.2) = 0.4, t1 0.5 - 0.2 = 0.3
    # row 1: t0 -0.5 + (0 + 0.3 - 0.1) = -0.3, t1 -0.5 + 0.2 = -0.3, t2 -0.5 - 0.1 = -0.6
    # mean -0.1; deviations .5 .4 -.2 -.2 -.5; ss 0.74; unbiased var 0.74 / 4 = 0.185
    d = math.sqrt(0.185 + 1e-8)
    exp = [[0.5 / d, 0.4 / d, 0.0], [-0.2 / d, -0.2 / d, -0.5 / d]]
    assert_matrix(adv("reinforce_pp", batch), exp, atol=1e-5)
    # with group_baseline=False the outcome is R = [1, 0]; a uniform shift of +0.5 -> same output
    assert_matrix(adv("reinforce_pp", batch, group_baseline=False), exp, atol=1e-5)


def test_reinforce_pp_on_two_groups():
    batch = make_batch(R4, MASK4, G4)
    # group_baseline: token returns = centred rewards [0.5, -0.5, -0.75, 0.75] on each token
    returns = [[0.5, 0.5, None], [-0.5] * 3, [-0.75, None, None], [0.75] * 3]
    assert_matrix(adv("reinforce_pp", batch), whiten_matrix(returns, 1e-8), atol=1e-5)
    # plain REINFORCE++: the raw rewards
    returns = [[1.0, 1.0, None], [0.0] * 3, [0.5, None, None], [2.0] * 3]
    out = adv("reinforce_pp", batch, group_baseline=False, eps=0.01)
    assert_matrix(out, whiten_matrix(returns, 0.01), atol=1e-5)
    # sanity of the reference on this input: 9 valid tokens, mean 8.5 / 9
    assert mean([x for row in returns for x in row if x is not None]) == pytest.approx(8.5 / 9)


# two groups of 2; lengths 2, 1 | 1, 2; R = [1, 0 | 0, 1]; per-token rewards (a KL penalty):
# row 0 [-0.1, -0.2], row 1 [-0.3], row 2 [0], row 3 [-0.2, -0.2] (9.0 on padding: ignored)
PP_MASK = [[1, 1], [1, 0], [1, 0], [1, 1]]
PP_R = [1.0, 0.0, 0.0, 1.0]
PP_K = [[-0.1, -0.2], [-0.3, 9.0], [0.0, 9.0], [-0.2, -0.2]]


def test_reinforce_pp_baseline_of_return_is_verl():
    # verl: Q = R + sum_t k_t = [0.7, -0.3, 0.0, 0.6]; group means 0.2 and 0.3;
    # Q - mean_G Q = [0.5, -0.5, -0.3, 0.3] on every token of the row.
    # tokens: 0.5, 0.5 | -0.5 | -0.3 | 0.3, 0.3: mean 0.8 / 6; whitened (unbiased var, eps 1e-8)
    batch = make_batch(PP_R, PP_MASK, [0, 0, 1, 1], token_rewards=PP_K)
    tokens = [0.5, 0.5, -0.5, -0.3, 0.3, 0.3]
    m = sum(tokens) / 6
    assert m == pytest.approx(0.8 / 6)
    d = math.sqrt(sum((x - m) ** 2 for x in tokens) / 5 + 1e-8)
    exp = [[(0.5 - m) / d] * 2, [(-0.5 - m) / d, 0.0], [(-0.3 - m) / d, 0.0], [(0.3 - m) / d] * 2]
    assert_matrix(adv("reinforce_pp", batch, baseline_of="return"), exp, atol=1e-5)


def test_reinforce_pp_baseline_of_reward_is_openrlhf():
    # OpenRLHF (default): R - mean_G R = [0.5, -0.5, -0.5, 0.5], plus the return-to-go of k:
    # row 0: 0.5 + (-0.1 - 0.2) = 0.2, 0.5 - 0.2 = 0.3 | row 1: -0.5 - 0.3 = -0.8
    # row 2: -0.5 + 0 = -0.5 | row 3: 0.5 - 0.4 = 0.1, 0.5 - 0.2 = 0.3
    batch = make_batch(PP_R, PP_MASK, [0, 0, 1, 1], token_rewards=PP_K)
    tokens = [0.2, 0.3, -0.8, -0.5, 0.1, 0.3]
    m = sum(tokens) / 6
    assert m == pytest.approx(-0.4 / 6)
    d = math.sqrt(sum((x - m) ** 2 for x in tokens) / 5 + 1e-8)
    w = [(x - m) / d for x in tokens]
    exp = [[w[0], w[1]], [w[2], 0.0], [w[3], 0.0], [w[4], w[5]]]
    assert_matrix(adv("reinforce_pp", batch), exp, atol=1e-5)
    assert_matrix(adv("reinforce_pp", batch, baseline_of="reward"), exp, atol=1e-5)


def test_reinforce_pp_baseline_of_agrees_without_token_rewards_or_baseline():
    # no per-token rewards: Q = R, both centre R; no group baseline: baseline_of plays no role
    batch = make_batch(PP_R, PP_MASK, [0, 0, 1, 1])
    torch.testing.assert_close(
        adv("reinforce_pp", batch, baseline_of="return"), adv("reinforce_pp", batch)
    )
    batch = make_batch(PP_R, PP_MASK, [0, 0, 1, 1], token_rewards=PP_K)
    torch.testing.assert_close(
        adv("reinforce_pp", batch, group_baseline=False, baseline_of="return"),
        adv("reinforce_pp", batch, group_baseline=False),
    )


def test_best_of_group_sft_scale():
    # group 0: R = [1, 1, 0] (two tied maxima, 1/2 each), lengths 2, 4, 3;
    # group 1: R = [0, 2], lengths 1, 3 (row 4 selected, weight 1).
    # N = 2 + 4 + 3 + 1 + 3 = 13 valid tokens; selected weight x length = 0.5*2 + 0.5*4 + 3 = 6
    # scale "sft": w * 13 / 6 -> [13/12, 13/12, 0, 0, 13/6]
    mask = [[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 0]]
    batch = make_batch([1.0, 1.0, 0.0, 0.0, 2.0], mask, [0, 0, 0, 1, 1])
    assert_matrix(adv("best_of_group", batch), broadcast([0.5, 0.5, 0, 0, 1], mask))
    out = adv("best_of_group", batch, scale="sft")
    assert_matrix(out, broadcast([13 / 12, 13 / 12, 0, 0, 13 / 6], mask))
    # the weighted token count of the selected rows then equals N: sum_i A_i |o_i| = 13
    assert (out * torch.tensor(mask)).sum().item() == pytest.approx(13.0)


def test_best_of_group():
    assert_matrix(adv("best_of_group", make_batch(R2, MASK2)), [[1, 1, 0], [0, 0, 0]])
    out = adv("best_of_group", make_batch(R4, MASK4, G4))
    assert_matrix(out, broadcast([1, 0, 0, 1], MASK4))
    # ties: group {1, 1, 0} -> 1/2 each for the two maxima; group {0.5, 0.5} -> 1/2 each
    mask = [[1, 1]] * 5
    out = adv("best_of_group", make_batch([1.0, 1.0, 0.0, 0.5, 0.5], mask, [4, 4, 4, 9, 9]))
    assert_matrix(out, broadcast([0.5, 0.5, 0.0, 0.5, 0.5], mask))


def test_rank():
    # G = 2: 0-based ranks [1, 0] -> (rank - 0.5) / 1
    assert_matrix(adv("rank", make_batch(R2, MASK2)), [[0.5, 0.5, 0], [-0.5, -0.5, -0.5]])
    out = adv("rank", make_batch(R4, MASK4, G4))
    assert_matrix(out, broadcast([0.5, -0.5, -0.5, 0.5], MASK4))
    # G = 4 {3, 1, 1, 0}: ranks 3, avg(1, 2) = 1.5, 1.5, 0; centred by (G-1)/2 = 1.5 -> 1.5, 0, 0,
    # -1.5; divided by G - 1 = 3 -> 0.5, 0, 0, -0.5
    mask = [[1]] * 4
    out = adv("rank", make_batch([3.0, 1.0, 1.0, 0.0], mask))
    assert_matrix(out, [[0.5], [0.0], [0.0], [-0.5]])
    # G = 3 {2, 5, -1}: ranks 1, 2, 0 -> (r - 1) / 2 = 0, 0.5, -0.5
    mask = [[1, 0]] * 3
    out = adv("rank", make_batch([2.0, 5.0, -1.0], mask))
    assert_matrix(out, [[0.0, 0.0], [0.5, 0.0], [-0.5, 0.0]])


# ---- GAE -------------------------------------------------------------------------------------
GAE_V = [[0.5, 0.2, 0.8]]
# gamma = 1, lam = 0.95, R = 1 on the last token, V after the last token = 0:
# r = [0, 0, 1];  delta = [0 + 0.2 - 0.5, 0 + 0.8 - 0.2, 1 + 0 - 0.8] = [-0.3, 0.6, 0.2]
# A2 = 0.2;  A1 = 0.6 + 0.95 * 0.2 = 0.79;  A0 = -0.3 + 0.95 * 0.79 = 0.4505
GAE_A = [0.4505, 0.79, 0.2]
GAE_RET = [0.4505 + 0.5, 0.79 + 0.2, 0.2 + 0.8]  # [0.9505, 0.99, 1.0]


def test_gae_raw_hand_computed():
    batch = make_batch([1.0], [[1, 1, 1]], values=GAE_V)
    out = adv("gae", batch, gamma=1.0, lam=0.95, whiten=False)
    assert_matrix(out, [GAE_A])
    a, ret = gae_advantages_and_returns(batch, 1.0, 0.95)
    assert_matrix(a, [GAE_A])
    assert_matrix(ret, [GAE_RET])


def test_gae_whitened_hand_computed():
    batch = make_batch([1.0], [[1, 1, 1]], values=GAE_V)
    # mean = 1.4405 / 3 = 0.480166..; unbiased var over the 3 tokens; eps 1e-8
    m = (0.4505 + 0.79 + 0.2) / 3
    var = sum((x - m) ** 2 for x in GAE_A) / 2
    exp = [(x - m) / math.sqrt(var + 1e-8) for x in GAE_A]
    assert_matrix(adv("gae", batch, gamma=1.0, lam=0.95, whiten=True), [exp], atol=1e-5)
    assert_matrix(adv("gae", batch), [exp], atol=1e-5)  # defaults: gamma 1, lam 0.95, whiten


def test_gae_padding_token_rewards_and_discount():
    # row 0: 2 valid tokens, V = [0.5, 0.2] (9.0 on padding ignored), token rewards [0.1, 0]
    # (7.0 on padding ignored), R = 1, gamma 0.9, lam 0.5:
    # r = [0.1, 0 + 1];  delta0 = 0.1 + 0.9 * 0.2 - 0.5 = -0.22;  delta1 = 1 + 0.9 * 0 - 0.2 = 0.8
    # A1 = 0.8;  A0 = -0.22 + 0.45 * 0.8 = 0.14;  returns = [0.64, 1.0]
    # row 1: fully masked -> zeros
    batch = make_batch(
        [1.0, 5.0],
        [[1, 1, 0], [0, 0, 0]],
        values=[[0.5, 0.2, 9.0], [1.0, 2.0, 3.0]],
        token_rewards=[[0.1, 0.0, 7.0], [1.0, 1.0, 1.0]],
    )
    out = adv("gae", batch, gamma=0.9, lam=0.5, whiten=False)
    assert_matrix(out, [[0.14, 0.8, 0.0], [0.0, 0.0, 0.0]])
    a, ret = gae_advantages_and_returns(batch, 0.9, 0.5)
    assert_matrix(a, [[0.14, 0.8, 0.0], [0.0, 0.0, 0.0]])
    assert_matrix(ret, [[0.64, 1.0, 0.0], [0.0, 0.0, 0.0]])
    # whitened over the 2 valid tokens: mean 0.47, devs -+0.33, unbiased var 0.2178
    d = math.sqrt(0.2178 + 1e-8)
    out = adv("gae", batch, gamma=0.9, lam=0.5, whiten=True)
    assert_matrix(out, [[-0.33 / d, 0.33 / d, 0.0], [0.0, 0.0, 0.0]], atol=1e-5)


def test_gae_lam_zero_and_one():
    # lam = 0: A_t = delta_t = [-0.3, 0.6, 0.2];  lam = 1, gamma = 1: A_t = R - V_t (Monte Carlo)
    batch = make_batch([1.0], [[1, 1, 1]], values=GAE_V)
    assert_matrix(adv("gae", batch, gamma=1.0, lam=0.0, whiten=False), [[-0.3, 0.6, 0.2]])
    assert_matrix(adv("gae", batch, gamma=1.0, lam=1.0, whiten=False), [[0.5, 0.8, 0.2]])


def test_gae_without_values_raises():
    with pytest.raises(ValueError, match="critic"):
        adv("gae", make_batch(R2, MASK2))


# --------------------------------------------------------------------------------------------
# 2. edge cases
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["group_zscore", "group_mean", "rloo", "rank", "batch_zscore"])
def test_all_equal_group_gives_zero(name):
    # group 0 all equal (0.5); group 1 varies so that batch_zscore has a non-zero batch std
    mask = [[1, 1], [1, 0], [1, 1], [1, 1]]
    out = adv(name, make_batch([0.5, 0.5, 0.0, 1.0], mask, [0, 0, 1, 1]))
    assert torch.isfinite(out).all()
    assert out[:2].abs().max().item() == 0.0


@pytest.mark.parametrize("name", ["group_zscore", "group_mean", "rloo", "rank", "batch_zscore"])
@pytest.mark.parametrize("value", [0.1, 0.9, 2.7])
@pytest.mark.parametrize("size", [3, 7])
def test_all_equal_batch_gives_zero_for_non_dyadic_rewards(name, value, size):
    """R - mean(R, ..., R) is exactly 0, whatever the float; the z-scores must not turn a
    rounding residue of the mean into a sizeable advantage (|A| <= 1e-6 demanded)."""
    mask = [[1, 1]] * size
    out = adv(name, make_batch([value] * size, mask))
    assert torch.isfinite(out).all()
    assert out.abs().max().item() <= 1e-6, out


def test_all_equal_rewards_reinforce_pp_is_zero():
    mask = [[1, 1, 0], [1, 1, 1], [1, 0, 0]]
    # group_baseline=True: R - mean_G = 0 exactly -> whitening a zero vector -> 0.
    # group_baseline=False: every return is 0.9, so x - mean = 0 on every token and
    # (x - mean) / sqrt(0 + eps) = 0; a rounding residue of the mean must not be amplified.
    for gb in (True, False):
        out = adv("reinforce_pp", make_batch([0.9] * 3, mask, [0, 0, 1]), group_baseline=gb)
        assert torch.isfinite(out).all()
        assert out.abs().max().item() <= 1e-6, (gb, out)


@pytest.mark.parametrize("name", GROUP_RELATIVE)
def test_singleton_group_is_zero(name):
    """Module contract: a group of size 1 has no relative signal -> A = 0, never NaN."""
    mask = [[1, 1, 0], [1, 1, 1], [1, 1, 1], [1, 0, 0]]
    # groups: {0: [3.0]} singleton, {1: [1.0, 0.0]}, {2: [0.25]} singleton
    out = adv(name, make_batch([3.0, 1.0, 0.0, 0.25], mask, [0, 1, 1, 2]))
    assert torch.isfinite(out).all()
    assert out[0].abs().max().item() == 0.0
    assert out[3].abs().max().item() == 0.0


@pytest.mark.parametrize("name", GROUP_RELATIVE)
def test_all_singletons_is_zero(name):
    mask = [[1, 1], [1, 0], [1, 1]]
    out = adv(name, make_batch([1.0, -2.0, 0.5], mask, [0, 1, 2]))
    assert torch.isfinite(out).all()
    assert out.abs().max().item() == 0.0


@pytest.mark.parametrize("name", ["group_zscore", "batch_zscore"])
def test_singleton_group_is_zero_even_with_eps_zero(name):
    """eps = 0 is inside the registered bounds; the singleton must still give 0, not 0/0."""
    lo = ADVANTAGES.get(name).params["eps"].low
    assert lo == 0.0
    mask = [[1, 1], [1, 1], [1, 1]]
    out = adv(name, make_batch([3.0, 1.0, 0.0], mask, [0, 1, 1]), eps=0.0)
    assert torch.isfinite(out).all(), out
    assert out[0].abs().max().item() == 0.0


def test_reinforce_pp_singleton_groups_baseline():
    # group_baseline with singletons: R - R = 0 for every sequence; no token rewards -> all zeros
    mask = [[1, 1], [1, 0]]
    out = adv("reinforce_pp", make_batch([1.0, -2.0], mask, [0, 1]))
    assert torch.isfinite(out).all()
    assert out.abs().max().item() == 0.0


def _random_full_inputs(b, t):
    g = torch.Generator().manual_seed(b * 10 + t)
    return dict(
        values=torch.randn(b, t, generator=g).tolist(),
        token_rewards=torch.randn(b, t, generator=g).tolist(),
        logp=torch.randn(b, t, generator=g).tolist(),
    )


@pytest.mark.parametrize(("name", "params"), VARIANTS, ids=VARIANT_IDS)
def test_fully_masked_rows_are_zero(name, params):
    mask = [[1, 1, 0], [0, 0, 0], [1, 1, 1], [0, 0, 0]]
    batch = make_batch([1.0, 7.0, 0.0, -3.0], mask, [0, 0, 1, 1], **_random_full_inputs(4, 3))
    out = adv(name, batch, **params)
    assert torch.isfinite(out).all()
    assert out[1].abs().max().item() == 0.0
    assert out[3].abs().max().item() == 0.0
    assert_zero_on_padding(out, mask)


@pytest.mark.parametrize(("name", "params"), VARIANTS, ids=VARIANT_IDS)
def test_fully_masked_batch_is_zero(name, params):
    mask = [[0, 0, 0], [0, 0, 0]]
    batch = make_batch([1.0, 0.0], mask, [0, 0], **_random_full_inputs(2, 3))
    out = adv(name, batch, **params)
    assert torch.isfinite(out).all()
    assert out.abs().max().item() == 0.0


@pytest.mark.parametrize(("name", "params"), VARIANTS, ids=VARIANT_IDS)
def test_non_contiguous_group_ids(name, params):
    mask = [[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]]
    rewards = [1.0, 0.5, 0.0, 2.0]
    extra = _random_full_inputs(4, 3)
    a = adv(name, make_batch(rewards, mask, [7, 3, 7, 3], **extra), **params)
    b = adv(name, make_batch(rewards, mask, [0, 1, 0, 1], **extra), **params)
    c = adv(name, make_batch(rewards, mask, [-5, 100, -5, 100], **extra), **params)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(a, c, atol=1e-6, rtol=1e-6)


def test_non_contiguous_group_ids_values():
    # groups {7: [1.0, 0.0]} at rows 0, 2 and {3: [0.5, 2.0]} at rows 1, 3
    mask = [[1, 1]] * 4
    batch = make_batch([1.0, 0.5, 0.0, 2.0], mask, [7, 3, 7, 3])
    assert_matrix(adv("group_mean", batch), broadcast([0.5, -0.75, -0.5, 0.75], mask))
    assert_matrix(adv("rloo", batch), broadcast([1.0, -1.5, -1.0, 1.5], mask))
    assert_matrix(adv("best_of_group", batch), broadcast([1, 0, 0, 1], mask))
    assert_matrix(adv("rank", batch), broadcast([0.5, -0.5, -0.5, 0.5], mask))


# --------------------------------------------------------------------------------------------
# 3. identities
# --------------------------------------------------------------------------------------------
ID_MASK = [[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]]
ID_R = [1.0, 0.25, -0.5, 2.0, 0.0, 1.5, -1.0]
ID_G = [0, 0, 1, 1, 1, 2, 2]  # sizes 2, 3, 2


@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("eps", [1e-6, 0.3])
def test_dr_grpo_equals_grpo_times_group_std(unbiased, eps):
    batch = make_batch(ID_R, ID_MASK, ID_G)
    z = adv("group_zscore", batch, eps=eps, unbiased_std=unbiased)
    dm = adv("group_mean", batch)
    grp = groups_of(ID_G)
    scale = [std([ID_R[j] for j in grp[g]], unbiased) + eps for g in ID_G]
    scale_t = torch.tensor(scale, dtype=torch.float32).unsqueeze(-1)
    torch.testing.assert_close(z * scale_t, dm, atol=1e-6, rtol=1e-5)


def test_rloo_is_scaled_group_mean():
    batch = make_batch(ID_R, ID_MASK, ID_G)
    sizes = [len(groups_of(ID_G)[g]) for g in ID_G]
    factor = torch.tensor([n / (n - 1) for n in sizes]).unsqueeze(-1)
    torch.testing.assert_close(
        adv("rloo", batch), factor * adv("group_mean", batch), atol=1e-6, rtol=1e-5
    )


# --------------------------------------------------------------------------------------------
# 4. property tests
# --------------------------------------------------------------------------------------------
REWARD_GRID = [k / 4 for k in range(-8, 9)]  # dyadic: group means of equal rewards are exact
VALUE_GRID = [k / 8 for k in range(-16, 17)]


@st.composite
def batches(draw):
    sizes: list[int] = []
    target = draw(st.integers(2, 8))
    while sum(sizes) < target:
        sizes.append(draw(st.integers(1, min(4, target - sum(sizes)))))
    b = sum(sizes)
    t = draw(st.integers(1, 6))
    ids = draw(
        st.lists(st.integers(-50, 50), min_size=len(sizes), max_size=len(sizes), unique=True)
    )
    group_ids = [gid for gid, n in zip(ids, sizes, strict=True) for _ in range(n)]
    order = draw(st.permutations(list(range(b))))
    group_ids = [group_ids[i] for i in order]  # interleave the groups
    lengths = draw(st.lists(st.integers(0, t), min_size=b, max_size=b))
    mask = [[1 if j < n else 0 for j in range(t)] for n in lengths]
    rewards = draw(st.lists(st.sampled_from(REWARD_GRID), min_size=b, max_size=b))
    mat = st.lists(
        st.lists(st.sampled_from(VALUE_GRID), min_size=t, max_size=t), min_size=b, max_size=b
    )
    values = draw(mat)
    token_rewards = draw(st.one_of(st.none(), mat))
    baseline = draw(st.one_of(st.none(), st.sampled_from(REWARD_GRID)))
    return dict(
        rewards=rewards,
        mask=mask,
        group_ids=group_ids,
        values=values,
        token_rewards=token_rewards,
        baseline=baseline,
        logp=draw(mat),
    )


variant_st = st.sampled_from(VARIANTS)


@settings(max_examples=40, deadline=None)
@given(data=batches(), variant=variant_st)
def test_finite_and_zero_on_padding(data, variant):
    name, params = variant
    batch, state = batch_and_state(name, data)
    out = adv(name, batch, **params, **state)
    b, t = len(data["mask"]), len(data["mask"][0])
    assert out.shape == (b, t)
    assert torch.isfinite(out).all()
    assert_zero_on_padding(out, data["mask"])


@settings(max_examples=40, deadline=None)
@given(data=batches(), variant=variant_st, junk=st.floats(-100, 100))
def test_masked_tokens_have_no_effect(data, variant, junk):
    name, params = variant
    base, state = batch_and_state(name, data)
    params = {**params, **state}
    pad = base.mask == 0
    changed = base
    changed = changed.with_(
        logp=torch.where(pad, torch.full_like(base.logp, junk), base.logp),
        old_logp=torch.where(pad, torch.full_like(base.logp, -junk), base.old_logp),
        ref_logp=torch.where(pad, torch.full_like(base.logp, junk + 1), base.ref_logp),
        values=torch.where(pad, torch.full_like(base.logp, junk * 2), base.values),
        token_rewards=None
        if base.token_rewards is None
        else torch.where(pad, torch.full_like(base.logp, -junk), base.token_rewards),
        entropy=torch.where(pad, torch.full_like(base.logp, junk), torch.ones_like(base.logp)),
    )
    base = base.with_(entropy=torch.ones_like(base.logp))
    torch.testing.assert_close(adv(name, changed, **params), adv(name, base, **params))


@settings(max_examples=40, deadline=None)
@given(data=batches(), variant=variant_st, rnd=st.randoms(use_true_random=False))
def test_permutation_within_groups_is_equivariant(data, variant, rnd):
    name, params = variant
    gids = data["group_ids"]
    perm = list(range(len(gids)))
    for members in groups_of(gids).values():
        shuffled = members[:]
        rnd.shuffle(shuffled)
        for dst, src in zip(members, shuffled, strict=True):
            perm[dst] = src
    permuted = {k: ([v[i] for i in perm] if isinstance(v, list) else v) for k, v in data.items()}
    assert permuted["group_ids"] == gids  # the permutation stays inside each group
    batch, state = batch_and_state(name, data)
    batch_p, _ = batch_and_state(name, permuted)
    out = adv(name, batch, **params, **state)
    out_p = adv(name, batch_p, **params, **state)
    torch.testing.assert_close(out_p, out[perm], atol=1e-4, rtol=1e-4)


@settings(max_examples=40, deadline=None)
@given(data=batches(), variant=variant_st)
def test_matches_plain_python_reference(data, variant):
    name, params = variant
    batch, state = batch_and_state(name, data)
    out = adv(name, batch, **params, **state)
    mask, rewards, gids = data["mask"], data["rewards"], data["group_ids"]
    if name == "gae":
        gamma, lam = params.get("gamma", 1.0), params.get("lam", 0.95)
        a, _ = ref_gae(rewards, mask, data["values"], data["token_rewards"], gamma, lam)
        if params.get("whiten", True):
            rows = [
                [x if m else None for x, m in zip(ra, rm, strict=True)]
                for ra, rm in zip(a, mask, strict=True)
            ]
            flat = [x for row in rows for x in row if x is not None]
            if len(flat) >= 2 and std(flat) ** 2 < 1e-3:
                return  # near-constant: float32 rounding dominates the whitened value
            a = whiten_matrix(rows, 1e-8)
        expected = a
    elif name == "reinforce_pp":
        expected = ref_reinforce_pp(rewards, mask, gids, data["token_rewards"], **params)
    else:
        lengths = [sum(row) for row in mask]
        per_seq = ref_per_sequence(
            name, rewards, gids, baseline=data["baseline"], lengths=lengths, **params
        )
        expected = broadcast(per_seq, mask)
        if name == "best_of_group":  # singleton groups are covered by test_singleton_group_is_zero
            sizes = groups_of(gids)
            keep = torch.tensor([len(sizes[g]) > 1 for g in gids]).unsqueeze(-1)
            out = out * keep
            expected = [
                row if k else [0.0] * len(row)
                for row, k in zip(expected, keep.flatten().tolist(), strict=True)
            ]
    assert_matrix(out, expected, atol=1e-5, rtol=1e-4)


@settings(max_examples=40, deadline=None)
@given(data=batches(), eps=st.sampled_from([1e-6, 0.1]), unbiased=st.booleans())
def test_identities_on_random_batches(data, eps, unbiased):
    batch, _ = batch_and_state("group_mean", data)
    gids, rewards = data["group_ids"], data["rewards"]
    grp = groups_of(gids)
    scale = [std([rewards[j] for j in grp[g]], unbiased) + eps for g in gids]
    z = adv("group_zscore", batch, eps=eps, unbiased_std=unbiased)
    dm = adv("group_mean", batch)
    torch.testing.assert_close(z * torch.tensor(scale).unsqueeze(-1), dm, atol=1e-5, rtol=1e-4)
    sizes = [len(grp[g]) for g in gids]
    factor = torch.tensor([n / (n - 1) if n > 1 else 0.0 for n in sizes]).unsqueeze(-1)
    torch.testing.assert_close(adv("rloo", batch), factor * dm, atol=1e-5, rtol=1e-4)
