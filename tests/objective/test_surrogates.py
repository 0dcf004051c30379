"""Tests for the policy surrogates (grape_evo.objective.surrogates).

Every expected value is computed independently of the code under test: either by hand (in a
comment) or from the published formula with plain Python ``math`` on scalars.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from grape_evo.objective.registry import SURROGATES, ObjectiveError
from grape_evo.objective.surrogates import KL_AFTER_UPDATE, old_to_new_kl

DT = torch.float64

# --------------------------------------------------------------------------------------------
# The shared 2x3 batch. Ratios r = exp(logp - old_logp) are chosen directly; position (0, 2) is
# padding (mask 0) and is given a wild ratio/advantage so that any leak would show.
# --------------------------------------------------------------------------------------------
MASK = [[1, 1, 0], [1, 1, 1]]
RATIOS = [[1.0, 1.5, 2.0], [0.5, 0.7, 1.1]]
ADV = [[2.0, 1.0, 7.0], [-1.0, -2.0, 0.5]]
OLD = [[-1.0, -0.5, -2.0], [-1.5, -0.3, -0.8]]
VALID = [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]


def _logp_list() -> list[list[float]]:
    return [[OLD[i][j] + math.log(RATIOS[i][j]) for j in range(3)] for i in range(2)]


def _batch(requires_grad: bool = True):
    logp = torch.tensor(_logp_list(), dtype=DT, requires_grad=requires_grad)
    old = torch.tensor(OLD, dtype=DT)
    adv = torch.tensor(ADV, dtype=DT)
    mask = torch.tensor(MASK, dtype=DT)
    return logp, old, adv, mask


def _run(name: str, logp, old, adv, mask, **params):
    return SURROGATES.get(name).fn(logp, old, adv, mask, **params)


def _expected_matrix(per_token) -> list[list[float]]:
    """Apply a scalar formula f(i, j) on valid tokens; 0 at padding."""
    return [[per_token(i, j) if MASK[i][j] else 0.0 for j in range(3)] for i in range(2)]


def _assert_matrix(actual, expected, tol: float = 1e-9) -> None:
    got = actual.detach().tolist()
    for i in range(len(expected)):
        for j in range(len(expected[0])):
            assert got[i][j] == pytest.approx(expected[i][j], abs=tol, rel=tol), (i, j, got)


def _grad(loss_mat, logp):
    (g,) = torch.autograd.grad(loss_mat.sum(), logp)
    return g


def _clip(x: float, lo: float, hi: float) -> float:
    return min(max(x, lo), hi)


# --------------------------------------------------------------------------------------------
# Registry-level checks
# --------------------------------------------------------------------------------------------
EXPECTED_NAMES = {"reinforce", "ppo_clip", "gspo", "cispo", "sapo", "trpo", "kl_penalty", "drift"}


def test_contract_names_registered():
    assert set(SURROGATES.names()) >= EXPECTED_NAMES


def test_every_registered_surrogate_has_a_hand_check():
    # If a surrogate is added, it must get a hand-computed test below.
    assert set(SURROGATES.names()) <= EXPECTED_NAMES


def test_unknown_surrogate_name_lists_valid_choices():
    with pytest.raises(ObjectiveError, match="ppo_clip"):
        SURROGATES.get("not_a_surrogate")


def test_clip_low_out_of_range_rejected():
    with pytest.raises(ObjectiveError, match="clip_low"):
        SURROGATES.get("ppo_clip").validate_params({"clip_low": 2.0})


def test_unknown_param_names_component():
    with pytest.raises(ObjectiveError, match="ppo_clip") as exc:
        SURROGATES.get("ppo_clip").validate_params({"beta": 0.1})
    assert "beta" in str(exc.value)


@pytest.mark.parametrize("bad", [0.5, 1.0])
def test_dual_clip_must_be_zero_or_above_one(bad):
    with pytest.raises(ObjectiveError, match="dual_clip"):
        SURROGATES.get("ppo_clip").validate_params({"dual_clip": bad})


@pytest.mark.parametrize("good", [0.0, 3.0])
def test_dual_clip_valid_values_accepted(good):
    out = SURROGATES.get("ppo_clip").validate_params({"dual_clip": good})
    assert out["dual_clip"] == good
    assert out["clip_low"] == 0.2 and out["clip_high"] == 0.2


def test_param_defaults_match_papers():
    assert SURROGATES.get("gspo").defaults() == {"clip_low": 3e-4, "clip_high": 4e-4}
    assert SURROGATES.get("cispo").defaults() == {"clip_low": 1.0, "clip_high": 0.28}
    assert SURROGATES.get("reinforce").defaults() == {}


# --------------------------------------------------------------------------------------------
# Hand-computed per-token losses
# --------------------------------------------------------------------------------------------
def test_reinforce_hand_values_and_gradient():
    logp, old, adv, mask = _batch()
    loss, _ = _run("reinforce", logp, old, adv, mask)
    lp = _logp_list()
    _assert_matrix(loss, _expected_matrix(lambda i, j: -ADV[i][j] * lp[i][j]))
    # d(-A logp)/dlogp = -A on valid tokens, 0 on padding.
    _assert_matrix(_grad(loss, logp), _expected_matrix(lambda i, j: -ADV[i][j]))


def test_ppo_clip_symmetric_hand_values():
    # clip 0.2/0.2 -> r clipped to [0.8, 1.2]
    # (r=1.0, A=2):  min(2, 2)          = 2     -> loss -2,    not clipped
    # (r=1.5, A=1):  min(1.5, 1.2)      = 1.2   -> loss -1.2,  clipped
    # (r=0.5, A=-1): min(-0.5, -0.8)    = -0.8  -> loss 0.8,   clipped
    # (r=0.7, A=-2): min(-1.4, -1.6)    = -1.6  -> loss 1.6,   clipped
    # (r=1.1, A=.5): min(0.55, 0.55)    = 0.55  -> loss -0.55, not clipped
    logp, old, adv, mask = _batch()
    loss, metrics = _run("ppo_clip", logp, old, adv, mask, clip_low=0.2, clip_high=0.2)
    _assert_matrix(loss, [[-2.0, -1.2, 0.0], [0.8, 1.6, -0.55]])
    assert metrics["clip_fraction"].item() == pytest.approx(3 / 5)


def test_drift_default_is_ppo_clip_hand_values():
    # f = relu((r - clip(r, 0.8, 1.2)) A); L = -(r A - f): the PPO values above
    # (r=1.5, A=1): f = 0.3 -> -(1.5 - 0.3) = -1.2; (r=0.5, A=-1): f = relu(0.3) -> 0.8
    # (r=0.7, A=-2): f = 0.2 -> -(-1.4 - 0.2) = 1.6; f > 0 on 3 of 5 valid tokens
    logp, old, adv, mask = _batch()
    loss, metrics = _run("drift", logp, old, adv, mask)
    _assert_matrix(loss, [[-2.0, -1.2, 0.0], [0.8, 1.6, -0.55]])
    assert metrics["clip_fraction"].item() == pytest.approx(3 / 5)
    assert metrics["drift_mean"].item() == pytest.approx((0.3 + 0.3 + 0.2) / 5)


def test_drift_kl_form_hand_values_and_gradient():
    # f = (r - 1) - log r (k3 of KL(old || new)); L = -(r A - f)
    # dL/dlogp = -(r A - (r - 1)) since d/dlogp [(r - 1) - log r] = r - 1
    logp, old, adv, mask = _batch()
    loss, _ = _run("drift", logp, old, adv, mask, expr="(r - 1) - log_r")

    def f(r: float) -> float:
        return (r - 1) - math.log(r)

    _assert_matrix(
        loss, _expected_matrix(lambda i, j: -(RATIOS[i][j] * ADV[i][j] - f(RATIOS[i][j])))
    )
    expected = _expected_matrix(lambda i, j: -(RATIOS[i][j] * ADV[i][j] - (RATIOS[i][j] - 1)))
    _assert_matrix(_grad(loss, logp), expected)


def test_ppo_clip_asymmetric_clip_higher():
    # DAPO clip-higher: clip_low 0.2, clip_high 0.28 -> [0.8, 1.28]
    # only (r=1.5, A=1) changes: min(1.5, 1.28) = 1.28 -> loss -1.28
    logp, old, adv, mask = _batch()
    loss, metrics = _run("ppo_clip", logp, old, adv, mask, clip_low=0.2, clip_high=0.28)
    _assert_matrix(loss, [[-2.0, -1.28, 0.0], [0.8, 1.6, -0.55]])
    assert metrics["clip_fraction"].item() == pytest.approx(3 / 5)


def test_ppo_clip_wide_asymmetric():
    # clip_low 0.4, clip_high 0.6 -> [0.6, 1.6]
    # (1.0, 2) -> -2; (1.5, 1) -> -1.5 (inside); (0.5, -1): min(-0.5, -0.6) -> 0.6 clipped
    # (0.7, -2): inside -> 1.4; (1.1, .5) -> -0.55.  clip fraction 1/5.
    logp, old, adv, mask = _batch()
    loss, metrics = _run("ppo_clip", logp, old, adv, mask, clip_low=0.4, clip_high=0.6)
    _assert_matrix(loss, [[-2.0, -1.5, 0.0], [0.6, 1.4, -0.55]])
    assert metrics["clip_fraction"].item() == pytest.approx(1 / 5)


def test_ppo_clip_matches_formula_on_grid():
    # The general formula with math, over many (r, A) pairs and clip settings.
    rs = [0.1, 0.5, 0.79, 0.8, 0.95, 1.0, 1.05, 1.2, 1.21, 1.5, 3.0]
    advs = [-2.0, -0.5, 0.0, 0.5, 2.0]
    pairs = [(r, a) for r in rs for a in advs]
    logp = torch.tensor([[math.log(r) for r, _ in pairs]], dtype=DT)
    old = torch.zeros_like(logp)
    adv = torch.tensor([[a for _, a in pairs]], dtype=DT)
    mask = torch.ones_like(logp)
    for cl, ch, c in [(0.2, 0.2, 0.0), (0.1, 0.3, 0.0), (0.2, 0.28, 3.0), (0.5, 1.0, 1.5)]:
        loss, _ = _run("ppo_clip", logp, old, adv, mask, clip_low=cl, clip_high=ch, dual_clip=c)
        for k, (r, a) in enumerate(pairs):
            obj = min(r * a, _clip(r, 1 - cl, 1 + ch) * a)
            if c > 0 and a < 0:
                obj = max(obj, c * a)
            assert loss[0, k].item() == pytest.approx(-obj, abs=1e-9), (r, a, cl, ch, c)


def test_ppo_dual_clip():
    # c = 3, clip 0.2/0.2.
    # (r=4, A=-1): min(-4, -1.2) = -4; max(-4, -3) = -3 -> loss 3 (no dual clip: 4); grad 0
    # (r=2, A=-1): min(-2, -1.2) = -2; max(-2, -3) = -2 -> loss 2;  grad -A*r = 2
    # (r=4, A=1):  min(4, 1.2) = 1.2 (A > 0: dual clip not applied) -> loss -1.2; grad 0
    # (r=0.5, A=-1): min(-0.5, -0.8) = -0.8; max(-0.8, -3) -> loss 0.8; grad 0
    rs, advs = [4.0, 2.0, 4.0, 0.5], [-1.0, -1.0, 1.0, -1.0]
    logp = torch.tensor([[math.log(r) for r in rs]], dtype=DT, requires_grad=True)
    old = torch.zeros(1, 4, dtype=DT)
    adv = torch.tensor([advs], dtype=DT)
    mask = torch.ones(1, 4, dtype=DT)
    loss, _ = _run("ppo_clip", logp, old, adv, mask, dual_clip=3.0)
    _assert_matrix(loss, [[3.0, 2.0, -1.2, 0.8]])
    g = _grad(loss, logp)
    assert g[0, 0].item() == 0.0
    assert g[0, 1].item() == pytest.approx(2.0)
    assert g[0, 2].item() == 0.0
    assert g[0, 3].item() == 0.0
    plain, _ = _run("ppo_clip", logp, old, adv, mask, dual_clip=0.0)
    _assert_matrix(plain, [[4.0, 2.0, -1.2, 0.8]])


@pytest.mark.parametrize(
    ("r", "a", "expected_grad"),
    [
        (3.0, 1.0, 0.0),  # far above 1 + eps with A > 0: clipped branch, no gradient
        (0.2, -1.0, 0.0),  # far below 1 - eps with A < 0: clipped branch, no gradient
        (3.0, -1.0, 3.0),  # "wrong side": min picks r A, gradient -A r = 3
        (0.2, 1.0, -0.2),  # "wrong side": gradient -A r = -0.2
        (1.1, 1.0, -1.1),  # inside the range: -A r
        (0.9, -2.0, 1.8),  # inside the range: -A r
    ],
)
def test_ppo_gradient_zero_exactly_where_clipped(r, a, expected_grad):
    logp = torch.tensor([[math.log(r)]], dtype=DT, requires_grad=True)
    old = torch.zeros(1, 1, dtype=DT)
    loss, _ = _run("ppo_clip", logp, old, torch.tensor([[a]], dtype=DT), torch.ones(1, 1, dtype=DT))
    g = _grad(loss, logp).item()
    if expected_grad == 0.0:
        assert g == 0.0  # exactly
    else:
        assert g == pytest.approx(expected_grad, rel=1e-12)


def test_ppo_clip_fraction_counts_only_valid_tokens():
    # Padding at (0, 2) has r = 2, A = 7: would be clipped but must not be counted.
    logp, old, adv, mask = _batch()
    _, metrics = _run("ppo_clip", logp, old, adv, mask, clip_low=0.4, clip_high=0.6)
    assert metrics["clip_fraction"].item() == pytest.approx(1 / 5)


def _seq_ratio(i: int) -> float:
    logs = [math.log(RATIOS[i][j]) for j in range(3) if MASK[i][j]]
    return math.exp(sum(logs) / len(logs))


def test_gspo_sequence_ratio_paper_defaults():
    # s_0 = exp(mean(log 1, log 1.5)) = sqrt(1.5) = 1.2247 (padding ratio 2.0 excluded)
    # s_1 = (0.5 * 0.7 * 1.1)^(1/3) = 0.385^(1/3) = 0.7275
    assert _seq_ratio(0) == pytest.approx(math.sqrt(1.5))
    assert _seq_ratio(1) == pytest.approx(0.385 ** (1 / 3))
    # Paper defaults clip_low 3e-4, clip_high 4e-4 -> [0.9997, 1.0004]
    # row 0 (A > 0, s > 1.0004): obj = 1.0004 A  -> losses -2.0008, -1.0004
    # row 1, A=-1: min(-0.7275, -0.9997) = -0.9997 -> 0.9997; A=-2 -> 1.9994
    # row 1, A=0.5: min(0.36377, 0.49985) = 0.5 * s_1 -> -0.5 * s_1
    logp, old, adv, mask = _batch()
    loss, metrics = _run("gspo", logp, old, adv, mask)
    s1 = 0.385 ** (1 / 3)
    _assert_matrix(loss, [[-2.0008, -1.0004, 0.0], [0.9997, 1.9994, -0.5 * s1]])
    # clipped branch active on 4 of 5 valid tokens
    assert metrics["clip_fraction"].item() == pytest.approx(4 / 5)
    # all clipped tokens have exactly zero gradient; the last one has -A * s_1
    g = _grad(loss, logp)
    _assert_matrix(g, [[0.0, 0.0, 0.0], [0.0, 0.0, -0.5 * s1]])


def test_gspo_wide_clips_unclipped():
    # clip 0.5/0.5 -> [0.5, 1.5]: both s_i inside, loss = -s_i A (broadcast over the row)
    logp, old, adv, mask = _batch()
    loss, metrics = _run("gspo", logp, old, adv, mask, clip_low=0.5, clip_high=0.5)
    _assert_matrix(loss, _expected_matrix(lambda i, j: -_seq_ratio(i) * ADV[i][j]))
    assert metrics["clip_fraction"].item() == 0.0
    # GSPO-token: d/dlogp_t of -sg[s] * exp(logp_t - sg(logp_t)) * A = -s A
    _assert_matrix(_grad(loss, logp), _expected_matrix(lambda i, j: -_seq_ratio(i) * ADV[i][j]))


def test_gspo_gradient_equals_sequence_level_gspo():
    # For a sequence-level advantage A_i and per-sequence token mean, the GSPO-token gradient
    # equals the gradient of GSPO's -mean_i s_i A_i with s_i = exp(mean_t log r_t).
    logp, old, _, mask = _batch()
    adv_seq = torch.tensor([[1.5, 1.5, 1.5], [-0.7, -0.7, -0.7]], dtype=DT)
    loss, _ = _run("gspo", logp, old, adv_seq, mask, clip_low=0.9, clip_high=9.0)
    lengths = mask.sum(-1)
    per_seq = (loss * mask).sum(-1) / lengths
    (g_token,) = torch.autograd.grad(per_seq.mean(), logp)
    # Hand: d(-s_i A_i / B)/dlogp_t = -A_i s_i / (|o_i| B)
    expected = _expected_matrix(lambda i, j: -[1.5, -0.7][i] * _seq_ratio(i) / (sum(MASK[i]) * 2))
    _assert_matrix(g_token, expected)


def test_cispo_hand_values_and_detached_weight():
    # defaults clip_low 1.0 (no lower bound), clip_high 0.28 -> weight = min(r, 1.28)
    # weights: 1.0, 1.28, 0.5, 0.7, 1.1; loss = -w A logp; d/dlogp = -w A (weight detached)
    logp, old, adv, mask = _batch()
    loss, metrics = _run("cispo", logp, old, adv, mask)
    lp = _logp_list()

    def w(i, j):
        return _clip(RATIOS[i][j], 0.0, 1.28)

    _assert_matrix(loss, _expected_matrix(lambda i, j: -w(i, j) * ADV[i][j] * lp[i][j]))
    _assert_matrix(_grad(loss, logp), _expected_matrix(lambda i, j: -w(i, j) * ADV[i][j]))
    assert metrics["clip_fraction"].item() == pytest.approx(1 / 5)


def test_cispo_clipped_token_keeps_gradient():
    # r = 3, A = 1: PPO would give zero gradient; CISPO gives -clip(3, 0, 1.28) * 1 = -1.28
    logp = torch.tensor([[math.log(3.0)]], dtype=DT, requires_grad=True)
    loss, _ = _run(
        "cispo",
        logp,
        torch.zeros(1, 1, dtype=DT),
        torch.ones(1, 1, dtype=DT),
        torch.ones(1, 1, dtype=DT),
    )
    assert _grad(loss, logp).item() == pytest.approx(-1.28)
    assert loss.item() == pytest.approx(-1.28 * math.log(3.0))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@pytest.mark.parametrize(("tau_pos", "tau_neg"), [(1.0, 1.05), (2.0, 0.5)])
def test_sapo_hand_values(tau_pos, tau_neg):
    logp, old, adv, mask = _batch()
    loss, _ = _run("sapo", logp, old, adv, mask, tau_pos=tau_pos, tau_neg=tau_neg)

    def f(i, j):
        a, r = ADV[i][j], RATIOS[i][j]
        tau = tau_pos if a > 0 else tau_neg
        return -(4.0 / tau) * _sigmoid(tau * (r - 1.0)) * a

    _assert_matrix(loss, _expected_matrix(f))
    # at r = 1 (token (0, 0)): -(4/tau) * 0.5 * A = -2 A / tau
    assert loss[0, 0].item() == pytest.approx(-2.0 * 2.0 / tau_pos)


def test_sapo_zero_advantage_uses_tau_neg():
    # A = 0 gives a zero loss whatever tau; "tau_neg otherwise" matters only through A <= 0.
    # Check the A < 0 branch uses tau_neg: r = 2, A = -1, tau_neg = 0.5
    # loss = -(4/0.5) * sigmoid(0.5) * (-1) = 8 * 0.62246 = 4.9797
    logp = torch.tensor([[math.log(2.0), 0.0]], dtype=DT)
    adv = torch.tensor([[-1.0, 0.0]], dtype=DT)
    loss, _ = _run(
        "sapo",
        logp,
        torch.zeros(1, 2, dtype=DT),
        adv,
        torch.ones(1, 2, dtype=DT),
        tau_pos=3.0,
        tau_neg=0.5,
    )
    assert loss[0, 0].item() == pytest.approx(8.0 * _sigmoid(0.5))
    assert loss[0, 1].item() == 0.0


@pytest.mark.parametrize(("tau_pos", "tau_neg"), [(1.0, 1.05), (0.3, 7.0)])
def test_sapo_gradient_is_minus_a_at_ratio_one(tau_pos, tau_neg):
    # d/dlogp [-(4/tau) sigmoid(tau (r - 1)) A] = -(4/tau) * tau * s(1-s) * r * A
    # at r = 1: s = 1/2 -> -4 * 1/4 * A = -A, independently of tau.
    advs = [1.5, -2.0, 0.25]
    logp = torch.tensor([[-0.3, -1.2, -2.0]], dtype=DT, requires_grad=True)
    old = logp.detach().clone()
    loss, _ = _run(
        "sapo",
        logp,
        old,
        torch.tensor([advs], dtype=DT),
        torch.ones(1, 3, dtype=DT),
        tau_pos=tau_pos,
        tau_neg=tau_neg,
    )
    g = _grad(loss, logp)[0].tolist()
    for k, a in enumerate(advs):
        assert g[k] == pytest.approx(-a, rel=1e-12)


def test_sapo_gradient_off_policy_matches_formula():
    # r = 2, A = 1, tau = 1: grad = -4 s (1 - s) r A with s = sigmoid(1)
    s = _sigmoid(1.0)
    logp = torch.tensor([[math.log(2.0)]], dtype=DT, requires_grad=True)
    loss, _ = _run(
        "sapo",
        logp,
        torch.zeros(1, 1, dtype=DT),
        torch.ones(1, 1, dtype=DT),
        torch.ones(1, 1, dtype=DT),
        tau_pos=1.0,
    )
    assert _grad(loss, logp).item() == pytest.approx(-4.0 * s * (1 - s) * 2.0)


def test_trpo_hand_values_and_gradient():
    logp, old, adv, mask = _batch()
    loss, _ = _run("trpo", logp, old, adv, mask)
    expected = _expected_matrix(lambda i, j: -RATIOS[i][j] * ADV[i][j])
    _assert_matrix(loss, expected)
    # d(-rA)/dlogp = -rA
    _assert_matrix(_grad(loss, logp), expected)


@pytest.mark.parametrize("beta", [1.0, 0.1])
def test_kl_penalty_hand_values(beta):
    logp, old, adv, mask = _batch()
    loss, metrics = _run("kl_penalty", logp, old, adv, mask, beta=beta)

    def f(i, j):
        r, a = RATIOS[i][j], ADV[i][j]
        return -r * a + beta * ((r - 1.0) - math.log(r))

    _assert_matrix(loss, _expected_matrix(f))
    assert float(metrics["kl_beta"]) == pytest.approx(beta)
    # d/dlogp: -rA + beta (r - 1)
    _assert_matrix(
        _grad(loss, logp),
        _expected_matrix(lambda i, j: -RATIOS[i][j] * ADV[i][j] + beta * (RATIOS[i][j] - 1)),
    )


def test_kl_penalty_state_overrides_initial_beta():
    # state kl_beta = 0.25 replaces beta = 1.0
    logp, old, adv, mask = _batch()
    loss, metrics = _run("kl_penalty", logp, old, adv, mask, beta=1.0, kl_beta=0.25)

    def f(i, j):
        r, a = RATIOS[i][j], ADV[i][j]
        return -r * a + 0.25 * ((r - 1.0) - math.log(r))

    _assert_matrix(loss, _expected_matrix(f))
    assert float(metrics["kl_beta"]) == pytest.approx(0.25)


def test_kl_penalty_declares_state():
    comp = SURROGATES.get("kl_penalty")
    assert "kl_beta" in comp.state
    assert "kl_beta" not in comp.params
    assert comp.update_state is not None


@pytest.mark.parametrize(
    ("kl", "adaptive", "start", "expected"),
    [
        (0.005, True, None, 0.5),  # 0.005 < 0.01/1.5 = 0.00667 -> halve beta = 1.0
        (0.02, True, None, 2.0),  # 0.02 > 0.015 -> double
        (0.01, True, None, 1.0),  # in band -> unchanged
        (0.0067, True, None, 1.0),  # just above target/1.5 -> unchanged
        (0.0149, True, None, 1.0),  # just below 1.5 target -> unchanged
        (0.005, True, 0.25, 0.125),  # carried state is halved, not the initial beta
        (0.02, True, 0.25, 0.5),
        (0.005, False, None, 1.0),  # not adaptive -> unchanged
        (0.02, False, 0.25, 0.25),
    ],
)
def test_kl_penalty_adaptive_beta_rule(kl, adaptive, start, expected):
    comp = SURROGATES.get("kl_penalty")
    state = {**comp.state, "kl_beta": start}
    new = comp.update_state(
        state,
        {KL_AFTER_UPDATE: torch.tensor(kl, dtype=DT)},
        beta=1.0,
        target_kl=0.01,
        adaptive=adaptive,
    )
    assert float(new["kl_beta"]) == pytest.approx(expected)


@pytest.mark.parametrize("start", [None, 0.25])
def test_kl_penalty_beta_ignores_pre_update_kl(start):
    # PPO paper sec. 4: d is KL[pi_old, pi] after the update epochs. approx_kl is measured
    # before each update (exactly 0 at one epoch): it must not halve beta. No d -> no change.
    comp = SURROGATES.get("kl_penalty")
    state = {**comp.state, "kl_beta": start}
    metrics = {"approx_kl": torch.tensor(0.0, dtype=DT), "reward_mean": 1.0}
    new = comp.update_state(state, metrics, beta=1.0, target_kl=0.01, adaptive=True)
    assert float(new["kl_beta"]) == pytest.approx(1.0 if start is None else start)


def test_kl_after_update_metric_name():
    assert KL_AFTER_UPDATE == "kl_after_update"


def test_old_to_new_kl_hand_value():
    # ratios 1, 1.5, 0.5, 0.7, 1.1 on the valid tokens (the wild ratio 2.0 at padding is left
    # out): mean of (r - 1) - ln r
    # = [0 + (0.5 - 0.405465) + (-0.5 + 0.693147) + (-0.3 + 0.356675) + (0.1 - 0.095310)] / 5
    # = (0.094535 + 0.193147 + 0.056675 + 0.004690) / 5 = 0.0698094
    logp, old, _, mask = _batch()
    kl = old_to_new_kl(logp, old, mask)
    assert kl.item() == pytest.approx(0.0698094, abs=1e-6)
    assert not kl.requires_grad


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
def test_ratio_metrics_hand_values(name):
    # approx_kl = mean over valid tokens of (r - 1) - log r (k3 of KL(old || new)); >= 0
    # ratio_mean = (1 + 1.5 + 0.5 + 0.7 + 1.1) / 5 = 0.96
    logp, old, adv, mask = _batch()
    _, metrics = _run(name, logp, old, adv, mask)
    rs = [RATIOS[i][j] for i, j in VALID]
    kl = sum((r - 1) - math.log(r) for r in rs) / len(rs)
    assert metrics["approx_kl"].item() == pytest.approx(kl)
    assert metrics["approx_kl"].item() >= 0.0
    assert metrics["ratio_mean"].item() == pytest.approx(0.96)
    for v in metrics.values():
        assert isinstance(v, torch.Tensor)
        assert not v.requires_grad


# --------------------------------------------------------------------------------------------
# Property: padding has no effect; outputs finite
# --------------------------------------------------------------------------------------------
PARAM_SETS = [(n, {}) for n in sorted(EXPECTED_NAMES)] + [
    ("ppo_clip", {"clip_low": 0.1, "clip_high": 0.5, "dual_clip": 3.0}),
    ("gspo", {"clip_low": 0.2, "clip_high": 0.2}),
    ("kl_penalty", {"beta": 0.3, "kl_beta": 2.0}),
    ("drift", {"expr": "where(A > 0, (r - 1)**2, abs(log_r)) * sigmoid(A)"}),
]


@st.composite
def _masked_inputs(draw):
    b = draw(st.integers(1, 3))
    t = draw(st.integers(1, 5))
    n = b * t
    fl = st.floats
    mask = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    log_ratio = draw(st.lists(fl(-3, 3), min_size=n, max_size=n))
    old = draw(st.lists(fl(-8, 0), min_size=n, max_size=n))
    adv = draw(st.lists(fl(-3, 3), min_size=n, max_size=n))
    # alternative values used only at masked positions
    log_ratio2 = draw(st.lists(fl(-3, 3), min_size=n, max_size=n))
    old2 = draw(st.lists(fl(-8, 0), min_size=n, max_size=n))
    adv2 = draw(st.lists(fl(-3, 3), min_size=n, max_size=n))

    def t_(xs):
        return torch.tensor(xs, dtype=DT).reshape(b, t)

    m = t_([1.0 if x else 0.0 for x in mask])
    lr, o, a = t_(log_ratio), t_(old), t_(adv)
    lr2 = torch.where(m > 0, lr, t_(log_ratio2))
    o2 = torch.where(m > 0, o, t_(old2))
    a2 = torch.where(m > 0, a, t_(adv2))
    return m, (o + lr, o, a), (o2 + lr2, o2, a2)


@pytest.mark.parametrize(("name", "params"), PARAM_SETS)
@settings(max_examples=40, deadline=None)
@given(data=_masked_inputs())
def test_masked_tokens_have_no_effect(name, params, data):
    mask, first, second = data
    results = []
    for logp_v, old, adv in (first, second):
        logp = logp_v.clone().requires_grad_(True)
        loss, metrics = _run(name, logp, old, adv, mask, **params)
        grad = _grad(loss, logp)
        assert loss.shape == mask.shape
        assert torch.isfinite(loss).all()
        assert torch.isfinite(grad).all()
        for v in metrics.values():
            assert torch.isfinite(v).all()
        # zero at padding, for the loss and its gradient
        assert (loss.detach()[mask == 0] == 0).all()
        assert (grad[mask == 0] == 0).all()
        results.append((loss.detach(), grad, metrics))
    (l1, g1, m1), (l2, g2, m2) = results
    torch.testing.assert_close(l1, l2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-12)
    assert m1.keys() == m2.keys()
    for k in m1:
        torch.testing.assert_close(m1[k], m2[k], rtol=1e-12, atol=1e-12)
    if "approx_kl" in m1:
        assert m1["approx_kl"].item() >= -1e-12
