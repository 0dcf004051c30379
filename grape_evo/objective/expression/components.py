"""The three expression components, registered like every other component.

* ``advantage: {name: expression, expr}``: A_i = expr(R, mean_G, std_G, min_G, max_G, rank_G,
  p_G, G), broadcast over the sequence's completion tokens (0 on padding). An expression that
  reads any input besides ``R`` compares completions of a prompt: it is tagged
  ``group_relative`` (so needs group_size >= 2), decided from the names the formula reads.
* ``surrogate: {name: drift, expr}``: LPO's drift form (Lu et al. 2022, arXiv:2210.05639),
  L_t = -(r A - f(r, A)) with f = expr(r, log_r, A). ``relu((r - clip(r, 0.8, 1.2))*A)`` is
  PPO-clip at 0.2; f = 0 is the plain importance-sampled surrogate.
* ``preference: {name: expression, expr, beta}``: the pair loss expr(rho, chosen_logratio,
  rejected_logratio, beta); ``-logsigmoid(rho)`` is DPO. Pairing is set by PreferenceSpec.

All three carry the tag ``expression`` (their ``expr`` is a formula, searched through its own
axis rather than by component name). ``expr`` is validated when the spec is loaded (every
refusal an ObjectiveError naming the field and the reason), compiled once per formula text,
and enters the spec's key as its sympy canonical key (``canonical()`` keeps the written text,
the function that trains). Inputs are defined in ``inputs``; protections in ``torch_form``;
a formula that overflows gives a non-finite loss, which the trainer reports as diverged.
"""

from __future__ import annotations

from collections.abc import Callable

import sympy as sp
import torch
from torch import Tensor

from grape_evo.objective.advantages import broadcast
from grape_evo.objective.aggregation import masked_mean
from grape_evo.objective.batch import PreferenceBatch, RolloutBatch
from grape_evo.objective.expression.inputs import (
    advantage_inputs,
    drift_inputs,
    preference_inputs,
)
from grape_evo.objective.expression.nodes import ExpressionError, variables
from grape_evo.objective.expression.parser import parse
from grape_evo.objective.expression.sympy_form import canonical_key, to_sympy
from grape_evo.objective.expression.torch_form import compiled
from grape_evo.objective.registry import ADVANTAGES, PREFERENCE_LOSSES, SURROGATES
from grape_evo.objective.surrogates import Metrics, ratio_metrics
from grape_evo.objective.symbolic import Symbols as S
from grape_evo.objective.symbolic import num

DEFAULT_ADVANTAGE = "(R - mean_G)/(std_G + 1e-6)"
DEFAULT_DRIFT = "relu((r - clip(r, 0.8, 1.2))*A)"
DEFAULT_PREFERENCE = "-logsigmoid(rho)"


def _checker(kind: str) -> Callable[[str], str | None]:
    def check(expr: str) -> str | None:
        try:
            parse(expr, kind)
        except ExpressionError as err:
            return str(err)
        return None

    return check


def _advantage_tags(expr: str) -> frozenset[str]:
    reads_group = variables(parse(expr, "advantage")) - {"R"}
    return frozenset({"group_relative"}) if reads_group else frozenset()


@ADVANTAGES.register(
    "expression",
    symbolic=lambda expr: to_sympy(parse(expr, "advantage"), "advantage"),
    param_checks={"expr": _checker("advantage")},
    tags=("expression",),
    param_tags=_advantage_tags,
    key_params=lambda expr: {"expr": canonical_key("advantage", expr)},
    reference="a formula over group statistics; default: GRPO's z-score with the ddof-0 std",
)
def expression_advantage(batch: RolloutBatch, expr: str = DEFAULT_ADVANTAGE) -> Tensor:
    """A_i = expr(R, mean_G, std_G, min_G, max_G, rank_G, p_G, G), broadcast over tokens."""
    inputs = advantage_inputs(batch.rewards.to(torch.float32), batch.group_ids)
    return broadcast(compiled("advantage", expr)(inputs), batch.mask)


def _drift_symbolic(A: sp.Expr, expr: str) -> sp.Expr:
    f = to_sympy(parse(expr, "drift"), "drift", {"A": A})
    return -(S.ratio * A - f)


@SURROGATES.register(
    "drift",
    symbolic=_drift_symbolic,
    tags=("expression",),
    param_checks={"expr": _checker("drift")},
    key_params=lambda expr: {"expr": canonical_key("drift", expr)},
    reference="Lu et al. 2022 (LPO, arXiv:2210.05639); default: PPO-clip 0.2 as a drift",
)
def drift(
    logp: Tensor, old_logp: Tensor, adv: Tensor, mask: Tensor, expr: str = DEFAULT_DRIFT
) -> tuple[Tensor, Metrics]:
    """L = -(r A - f(r, A)), f = expr(r, log_r, A): LPO's drift form of the surrogate.

    Metrics: the ratio metrics of every surrogate, ``drift_mean`` (token mean of f) and
    ``clip_fraction``, the fraction of valid tokens with f > 0; for PPO's drift f > 0 exactly
    where PPO's clipped branch is the smaller, so it equals ``ppo_clip``'s clip fraction.
    """
    inputs = drift_inputs(logp, old_logp, adv)
    f = compiled("drift", expr)(inputs)
    m = mask.to(logp.dtype)
    metrics = ratio_metrics(inputs["r"], mask)
    metrics["drift_mean"] = masked_mean(f.detach(), mask)
    metrics["clip_fraction"] = masked_mean((f.detach() > 0).to(logp.dtype), mask)
    return -(inputs["r"] * inputs["A"] - f) * m, metrics


def _preference_symbolic(beta: float, expr: str) -> sp.Expr:
    b = num(beta)
    inputs = {"beta": b, "rho": b * (S.delta_w - S.delta_l)}
    return to_sympy(parse(expr, "preference"), "preference", inputs)


@PREFERENCE_LOSSES.register(
    "expression",
    symbolic=_preference_symbolic,
    tags=("expression",),
    bounds={"beta": (1e-4, 100.0)},
    log=("beta",),
    param_checks={"expr": _checker("preference")},
    key_params=lambda beta, expr: {"beta": beta, "expr": canonical_key("preference", expr)},
    reference="a formula over the pair's log-ratios; default: DPO (Rafailov et al. 2023)",
)
def expression_preference(
    pairs: PreferenceBatch, beta: float = 0.1, expr: str = DEFAULT_PREFERENCE
) -> Tensor:
    """Per-pair loss expr(rho, chosen_logratio, rejected_logratio, beta), rho = beta (a - b)."""
    return compiled("preference", expr)(preference_inputs(pairs, beta))
