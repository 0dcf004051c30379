"""On-policy rollout objectives onto TRL 1.16's GRPOTrainer and RLOOTrainer (``GRPOConfig`` and
``RLOOConfig`` argument names).

What TRL computes (trl/trainer/grpo_trainer.py, ``_generate_and_score_completions`` and
``_compute_loss``):

* advantages: ``A = R - mean_G R``, divided by ``std + 1e-4`` (Bessel std) over the group
  (``scale_rewards="group"``), over the batch (``"batch"``) or not at all (``"none"``);
* surrogate by ``loss_type``: ``-min(r A, clip(r, 1 - epsilon, 1 + epsilon_high) A)`` (``grpo``,
  ``bnpo``, ``dr_grpo``, ``dapo``, ``luspo``; ``delta`` caps r from above: a dual clip),
  ``cispo`` (``-sg[min(r, epsilon_high)] A log pi``), ``sapo`` (soft gate), with
  ``importance_sampling_level="sequence"`` the ratio is GSPO's ``s_i``;
* KL: ``beta * k3`` added per token before aggregation (times r when
  ``use_bias_correction_kl``, which changes the gradient, so it is switched off here);
* aggregation by ``loss_type``: ``grpo``/``sapo`` per-sequence token mean, ``dapo``/``cispo``
  token mean over the generation batch, ``bnpo`` token mean over the micro-batch, ``dr_grpo``
  token sum / (rows * max_completion_length), ``luspo`` per-sequence token sum;
* entropy bonus: ``- entropy_coef * token-mean entropy``, whatever the loss type.

RLOOTrainer: leave-one-out ``A = R_i - mean_{j != i} R_j`` after ``R <- R - beta * sum_t k1``
(old vs reference), a clipped *sequence* ratio ``exp(sum_t log r)`` and the mean over sequences.
"""

from __future__ import annotations

from typing import Any

from grape_evo.export.common import Fit, num, regime

TRL_ADV_EPS = 1e-4
_LOSS_TYPE = {
    "token_mean": "dapo",
    "seq_mean_token_mean": "grpo",
    "seq_mean_token_sum": "luspo",
    "seq_mean_token_sum_norm": "dr_grpo",
}
_ON_POLICY_NOTE = (
    "surrogate reinforce: with one update per batch TRL's ratio is exactly 1, so its clipped "
    "loss has the REINFORCE gradient -A grad log pi (its reported loss value is -A, grape's "
    "-A log pi)"
)


def _advantage(fit: Fit, adv: dict[str, Any]) -> None:
    name = adv["name"]
    if name == "group_mean":
        fit.set("advantage group_mean: R - mean_G R -> scale_rewards='none'", scale_rewards="none")
        return
    if name in ("group_zscore", "batch_zscore"):
        scale = "group" if name == "group_zscore" else "batch"
        if adv["eps"] != TRL_ADV_EPS:
            fit.miss(
                "advantage",
                f"{name} eps {adv['eps']:g}: TRL divides by std + {TRL_ADV_EPS:g} (hard-coded); "
                f"eps {TRL_ADV_EPS:g} maps exactly to scale_rewards='{scale}'",
            )
        elif not adv.get("unbiased_std", True):
            fit.miss("advantage", "unbiased_std false: TRL's std uses Bessel's correction")
        else:
            fit.set(
                f"advantage {name}: (R - mean_G R) / (std_{scale[0].upper()} R + 1e-4) -> "
                f"scale_rewards='{scale}'",
                scale_rewards=scale,
            )
        return
    fit.miss(
        "advantage",
        f"'{name}': GRPOTrainer computes only R - mean_G R, optionally divided by the group "
        "or batch std + 1e-4",
    )


def _aggregation(fit: Fit, agg: dict[str, Any], minibatches: int, max_new_tokens: int | None):
    """The loss_type that normalises like ``agg``, or None (recorded as a miss)."""
    name = agg["name"]
    if name not in _LOSS_TYPE:
        fit.miss("aggregation", f"'{name}': no TRL loss_type sums over every token unnormalised")
        return None
    if name == "seq_mean_token_sum_norm":
        if agg["max_len"] == 0:
            fit.miss(
                "aggregation",
                "seq_mean_token_sum_norm max_len 0 divides by the batch's padded completion "
                "length (its longest completion); TRL's dr_grpo divides by "
                "max_completion_length. Set max_len to the generation budget for an exact export",
            )
            return None
        if max_new_tokens is not None and max_new_tokens != agg["max_len"]:
            fit.miss(
                "aggregation",
                f"max_len {agg['max_len']} differs from the generation budget {max_new_tokens}: "
                "TRL's dr_grpo divides by max_completion_length, the budget",
            )
            return None
        fit.set(
            f"aggregation seq_mean_token_sum_norm(max_len={agg['max_len']}) -> loss_type "
            "'dr_grpo' with max_completion_length = max_len",
            max_completion_length=agg["max_len"],
        )
        return "dr_grpo"
    if name == "token_mean" and minibatches > 1:
        fit.notes.append(
            "aggregation token_mean over each minibatch -> loss_type 'bnpo' (micro-batch token "
            "mean; keep gradient_accumulation_steps 1)"
        )
        return "bnpo"
    warning = (
        " (TRL warns that luspo is meant for sequence-level ratios; the normaliser is the same)"
        if name == "seq_mean_token_sum"
        else ""
    )
    fit.notes.append(f"aggregation {name} -> loss_type '{_LOSS_TYPE[name]}'{warning}")
    return _LOSS_TYPE[name]


def _surrogate(fit: Fit, sur: dict[str, Any], agg_name: str, loss_type: str, single: bool):
    """Set the surrogate's arguments; returns the final loss_type."""
    name = sur["name"]
    if name == "reinforce" and single:
        fit.set(_ON_POLICY_NOTE, importance_sampling_level="token", delta=None)
        return loss_type
    if name == "ppo_clip":
        dual = sur["dual_clip"]
        if dual > 0 and dual <= 1 + sur["clip_high"]:
            fit.miss(
                "surrogate",
                f"dual_clip {dual:g} <= 1 + clip_high: TRL's delta caps the ratio of every "
                "token, which equals the dual clip only when delta > 1 + epsilon_high",
            )
        fit.set(
            f"surrogate ppo_clip: epsilon {sur['clip_low']:g}, epsilon_high "
            f"{sur['clip_high']:g}" + (f", dual clip {dual:g} -> delta" if dual > 0 else ""),
            epsilon=num(sur["clip_low"]),
            epsilon_high=num(sur["clip_high"]),
            delta=num(dual) if dual > 0 else None,
            importance_sampling_level="token",
        )
        return loss_type
    if name == "gspo":
        fit.set(
            "surrogate gspo: sequence ratio s_i = exp(mean_t log r) -> "
            "importance_sampling_level='sequence'",
            epsilon=num(sur["clip_low"]),
            epsilon_high=num(sur["clip_high"]),
            delta=None,
            importance_sampling_level="sequence",
        )
        return loss_type
    if name == "cispo":
        if sur["clip_low"] < 1.0:
            fit.miss("surrogate", "cispo clip_low < 1: TRL's cispo weight has no lower bound")
        if agg_name != "token_mean" or loss_type != "dapo":
            fit.miss("aggregation", "TRL's cispo loss type takes the token mean of the whole batch")
        fit.set(
            f"surrogate cispo: weight sg[min(r, 1 + {sur['clip_high']:g})] -> loss_type "
            "'cispo', epsilon_high = 1 + clip_high (TRL's bound is on r itself)",
            epsilon_high=num(1.0 + sur["clip_high"]),
            importance_sampling_level="token",
        )
        return "cispo"
    if name == "sapo":
        if agg_name != "seq_mean_token_mean":
            fit.miss("aggregation", "TRL's sapo loss type always takes per-sequence token means")
        fit.set(
            "surrogate sapo -> loss_type 'sapo'",
            sapo_temperature_pos=num(sur["tau_pos"]),
            sapo_temperature_neg=num(sur["tau_neg"]),
            importance_sampling_level="token",
        )
        return "sapo"
    multi = " with more than one update per batch" if name == "reinforce" else ""
    fit.miss("surrogate", f"'{name}'{multi} has no TRL loss_type")
    return loss_type


def _kl(fit: Fit, kl: dict[str, Any]) -> None:
    if kl["coef"] == 0.0:
        fit.set("no reference KL -> beta 0 (no reference model)", beta=0.0)
        return
    if kl["estimator"] == "k3" and kl["placement"] == "loss":
        fit.set(
            f"kl k3 in the loss, coef {kl['coef']:g} -> beta (use_bias_correction_kl off: "
            "it multiplies the KL by r, changing its gradient)",
            beta=num(kl["coef"]),
            use_bias_correction_kl=False,
        )
        return
    fit.miss(
        "kl",
        f"{kl['estimator']} in the {kl['placement']}: GRPOTrainer adds only k3 in the loss",
    )


def grpo_fit(d: dict[str, Any], max_new_tokens: int | None) -> Fit:
    """GRPOConfig arguments reproducing the canonical spec dict ``d``, or the misses."""
    fit = Fit()
    epochs, minibatches, _ = regime(d)
    group = d["group_size"]
    if group < 2:
        fit.miss("group_size", "1: GRPOTrainer samples num_generations >= 2 per prompt")
    fit.set(f"group_size {group} -> num_generations", num_generations=group)
    _advantage(fit, d["advantage"])
    agg = d["aggregation"]
    loss_type = _aggregation(fit, agg, minibatches, max_new_tokens)
    single = epochs == 1 and minibatches == 1
    loss_type = _surrogate(fit, d["surrogate"], agg["name"], loss_type or "grpo", single)
    fit.config["loss_type"] = loss_type
    _kl(fit, d["kl"])
    entropy = d["entropy_coef"]
    if entropy > 0 and agg["name"] != "token_mean":
        fit.miss(
            "entropy_coef", "TRL's entropy bonus is a token mean, grape's uses the aggregation"
        )
    fit.set(
        f"epochs {epochs} -> num_iterations; minibatches {minibatches} -> steps_per_generation",
        entropy_coef=num(entropy),
        num_iterations=epochs,
        steps_per_generation=minibatches,
        gradient_accumulation_steps=1,
        multi_objective_aggregation="sum_then_normalize",
        mask_truncated_completions=False,
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
    )
    return fit


def rloo_fit(d: dict[str, Any]) -> Fit:
    """RLOOConfig arguments reproducing ``d`` (advantage rloo), or the misses."""
    fit = Fit()
    epochs, minibatches, _ = regime(d)
    fit.set(
        f"advantage rloo, group_size {d['group_size']} -> num_generations",
        num_generations=d["group_size"],
        normalize_advantages=False,
        reward_clip_range=None,
    )
    sur = d["surrogate"]["name"]
    if epochs != 1 or minibatches != 1:
        fit.miss("epochs", "RLOOTrainer's ratio is per sequence; exact only at one update")
    elif sur not in ("reinforce", "ppo_clip"):
        fit.miss("surrogate", f"'{sur}' has no RLOOTrainer equivalent")
    else:
        fit.notes.append(
            f"surrogate {sur}: with one update per batch RLOO's clipped sequence ratio is 1, so "
            "the gradient is -A grad log pi(y) (the reported loss value differs)"
        )
    if d["aggregation"]["name"] != "seq_mean_token_sum":
        fit.miss("aggregation", "RLOOTrainer averages sequence log-probs (seq_mean_token_sum)")
    kl = d["kl"]
    if kl["coef"] == 0.0:
        fit.set("no reference KL -> beta 0", beta=0.0)
    elif kl["estimator"] == "k1" and kl["placement"] == "reward":
        fit.set(
            f"kl k1 in the reward, coef {kl['coef']:g} -> beta (R - beta sum_t k1)",
            beta=num(kl["coef"]),
        )
    else:
        fit.miss("kl", "RLOOTrainer puts only k1 in the reward")
    if d["entropy_coef"] > 0:
        fit.miss("entropy_coef", "RLOOTrainer has no entropy bonus")
    fit.set(
        "one update per batch", num_iterations=1, steps_per_generation=1,
        gradient_accumulation_steps=1, mask_truncated_completions=False,
    )  # fmt: skip
    return fit
