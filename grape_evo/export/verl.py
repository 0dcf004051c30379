"""Map an objective onto verl's PPO trainer settings (``verl/trainer/config/ppo_trainer.yaml``,
``actor/actor.yaml``; losses in ``verl/trainer/ppo/core_algos.py``).

verl reproduces an on-policy objective when each part has a setting:

* advantage -> ``algorithm.adv_estimator``: ``grpo`` ((R - mean_G) / (std_G + 1e-6), Bessel
  std; ``norm_adv_by_std_in_grpo: false`` drops the std), ``rloo``, ``reinforce_plus_plus``
  (return-to-go whitened over the batch, eps 1e-8), ``reinforce_plus_plus_baseline``, ``gae``
  (whitened; verl trains a separate critic);
* surrogate -> ``actor.policy_loss.loss_mode``: ``vanilla`` (PPO clip with ``clip_ratio_low``,
  ``clip_ratio_high`` and the dual clip ``clip_ratio_c``, always on), ``gspo``, ``sapo``
  (``tau_pos``, ``tau_neg``), ``cispo``, ``gpg`` (-A log pi, REINFORCE);
* KL in the loss -> ``actor.use_kl_loss``, ``kl_loss_coef``, ``kl_loss_type`` (``kl`` = k1,
  ``mse`` = k2, ``low_var_kl`` = k3, ``abs``); KL in the reward -> ``algorithm.use_kl_in_reward``,
  ``kl_penalty`` (same names), ``kl_ctrl`` (fixed coefficient), computed from the old policy;
* aggregation -> ``actor.loss_agg_mode`` (also applied to the KL and entropy terms);
* entropy -> ``actor.entropy_coeff``; epochs -> ``actor.ppo_epochs``; group size ->
  ``actor_rollout_ref.rollout.n``.

verl has no preference (DPO-family) or SFT objective in its PPO trainer; those are ``custom``.
"""

from __future__ import annotations

from typing import Any

from grape_evo.export.common import (
    CUSTOM,
    EXACT,
    ExportSettings,
    Fit,
    Mapping,
    canonical_dict,
    num,
    regime,
    with_settings,
)
from grape_evo.objective.spec import ObjectiveSpec

VERL_ADV_EPS = 1e-6
VERL_WHITEN_EPS = 1e-8
# verl clamps log-ratios to 20, so a dual-clip constant above e^20 never acts.
DUAL_CLIP_OFF = 1.0e9
_KL_TYPES = {"k1": "kl", "k2": "mse", "k3": "low_var_kl", "abs": "abs"}
_AGG_MODES = {
    "token_mean": "token-mean",
    "seq_mean_token_mean": "seq-mean-token-mean",
    "seq_mean_token_sum": "seq-mean-token-sum",
}
_ALGO = "algorithm"
_ACTOR = "actor_rollout_ref.actor"
_ROLLOUT = "actor_rollout_ref.rollout"


def to_verl(spec: ObjectiveSpec, settings: ExportSettings | None = None) -> Mapping:
    """The verl mapping of ``spec``: flat dotted settings (``algorithm.adv_estimator``...)."""
    settings = settings or ExportSettings()
    d = canonical_dict(with_settings(spec, settings))
    fit = Fit()
    if d["data"] != "on_policy":
        fit.miss(
            "data",
            f"{d['data']}: verl's PPO trainer learns from its own rollouts only (use verl's "
            "SFT trainer for demonstrations)",
        )
    elif d["preference"] is not None:
        fit.miss("preference", "verl's PPO trainer has no pairwise preference loss")
    else:
        _rollout(fit, d, settings)
    if not fit.exact:
        return Mapping("verl", CUSTOM, CUSTOM, {}, fit.reasons, fit.missed_fields)
    return Mapping("verl", EXACT, "verl.trainer.main_ppo", fit.config, tuple(fit.notes))


def _rollout(fit: Fit, d: dict[str, Any], settings: ExportSettings) -> None:
    fit.set(f"group_size {d['group_size']} -> rollout.n", **{f"{_ROLLOUT}.n": d["group_size"]})
    _advantage(fit, d["advantage"], d["kl"])
    agg = d["aggregation"]["name"]
    _surrogate(fit, d["surrogate"], agg)
    if agg in _AGG_MODES:
        fit.set(
            f"aggregation {agg} -> loss_agg_mode '{_AGG_MODES[agg]}'",
            **{f"{_ACTOR}.loss_agg_mode": _AGG_MODES[agg]},
        )
    elif agg == "seq_mean_token_sum_norm":
        fit.miss(
            "aggregation",
            "verl's seq-mean-token-sum-norm divides the token sum by loss_scale_factor (the "
            "response length) without dividing by the number of sequences",
        )
    else:
        fit.miss("aggregation", f"'{agg}' has no loss_agg_mode")
    _kl(fit, d["kl"])
    fit.set(
        "entropy bonus -> entropy_coeff (aggregated like the loss)",
        **{f"{_ACTOR}.entropy_coeff": num(d["entropy_coef"])},
    )
    _regime(fit, d, settings)


def _advantage(fit: Fit, adv: dict[str, Any], kl: dict[str, Any]) -> None:
    name = adv["name"]
    key = f"{_ALGO}.adv_estimator"
    if name in ("group_zscore", "group_mean"):
        if name == "group_zscore" and (adv["eps"] != VERL_ADV_EPS or not adv["unbiased_std"]):
            fit.miss(
                "advantage",
                f"group_zscore eps {adv['eps']:g} unbiased_std {adv['unbiased_std']}: verl "
                f"divides by the Bessel std + {VERL_ADV_EPS:g}",
            )
            return
        norm = name == "group_zscore"
        fit.set(
            f"advantage {name} -> adv_estimator 'grpo', norm_adv_by_std_in_grpo {norm}",
            **{key: "grpo", f"{_ALGO}.norm_adv_by_std_in_grpo": norm},
        )
    elif name == "rloo":
        fit.set("advantage rloo -> adv_estimator 'rloo'", **{key: "rloo"})
    elif name == "reinforce_pp":
        if adv["eps"] != VERL_WHITEN_EPS:
            fit.miss("advantage", f"reinforce_pp eps {adv['eps']:g}: verl whitens with 1e-8")
            return
        if adv["group_baseline"] and kl["coef"] > 0 and kl["placement"] == "reward":
            fit.miss(
                "advantage",
                "reinforce_pp with group_baseline and KL in the reward: verl centres R plus "
                "the summed KL penalty and broadcasts it, grape centres R and adds the KL "
                "return-to-go",
            )
            return
        estimator = "reinforce_plus_plus" + ("_baseline" if adv["group_baseline"] else "")
        fit.set(
            f"advantage reinforce_pp -> adv_estimator '{estimator}' (undiscounted)",
            **{key: estimator, f"{_ALGO}.gamma": 1.0},
        )
    elif name == "gae":
        if not adv["whiten"]:
            fit.miss("advantage", "gae without whitening: verl always whitens GAE")
            return
        if adv["critic"] != "separate":
            fit.miss("advantage", "a value head on the policy's trunk: verl's critic is a model")
            return
        clip = adv["value_clip"] or 1e9  # 0 is unclipped in grape; verl always clips
        fit.set(
            f"advantage gae(gamma {adv['gamma']:g}, lam {adv['lam']:g}), a separate critic "
            f"with value clip {adv['value_clip']:g} -> adv_estimator 'gae', "
            "critic.cliprange_value (grape weights the value loss by value_coef and clips the "
            "policy's and critic's gradients together; verl's critic has its own optimizer)",
            **{
                key: "gae",
                f"{_ALGO}.gamma": num(adv["gamma"]),
                f"{_ALGO}.lam": num(adv["lam"]),
                "critic.cliprange_value": num(clip),
            },
        )
    else:
        fit.miss("advantage", f"'{name}' has no verl adv_estimator")


def _surrogate(fit: Fit, sur: dict[str, Any], agg: str) -> None:
    name = sur["name"]
    mode = f"{_ACTOR}.policy_loss.loss_mode"
    if name in ("ppo_clip", "gspo", "cispo"):
        clips = {
            f"{_ACTOR}.clip_ratio": num(sur["clip_low"]),
            f"{_ACTOR}.clip_ratio_low": num(sur["clip_low"]),
            f"{_ACTOR}.clip_ratio_high": num(sur["clip_high"]),
        }
        if name == "ppo_clip":
            dual = sur["dual_clip"]
            clips[f"{_ACTOR}.clip_ratio_c"] = num(dual) if dual > 0 else DUAL_CLIP_OFF
            fit.set(
                "surrogate ppo_clip -> loss_mode 'vanilla'; "
                + (
                    f"dual clip {dual:g} -> clip_ratio_c"
                    if dual > 0
                    else "no dual clip -> clip_ratio_c 1e9 (above e^20, verl's largest ratio)"
                ),
                **{mode: "vanilla", **clips},
            )
            return
        if name == "gspo" and agg != "seq_mean_token_mean":
            fit.miss("aggregation", "verl's gspo loss always takes per-sequence token means")
        fit.set(f"surrogate {name} -> loss_mode '{name}'", **{mode: name, **clips})
    elif name == "sapo":
        if agg != "seq_mean_token_mean":
            fit.miss("aggregation", "verl's sapo loss always takes per-sequence token means")
        fit.set(
            "surrogate sapo -> loss_mode 'sapo'",
            **{
                mode: "sapo",
                f"{_ACTOR}.tau_pos": num(sur["tau_pos"]),
                f"{_ACTOR}.tau_neg": num(sur["tau_neg"]),
            },
        )
    elif name == "reinforce":
        fit.set("surrogate reinforce (-A log pi) -> loss_mode 'gpg'", **{mode: "gpg"})
    else:
        fit.miss("surrogate", f"'{name}' has no verl policy loss")


def _kl(fit: Fit, kl: dict[str, Any]) -> None:
    if kl["coef"] == 0.0:
        fit.set(
            "no reference KL",
            **{f"{_ACTOR}.use_kl_loss": False, f"{_ALGO}.use_kl_in_reward": False},
        )
        return
    kind = _KL_TYPES[kl["estimator"]]
    if kl["placement"] == "loss":
        fit.set(
            f"kl {kl['estimator']} in the loss -> use_kl_loss, kl_loss_type '{kind}'",
            **{
                f"{_ACTOR}.use_kl_loss": True,
                f"{_ACTOR}.kl_loss_coef": num(kl["coef"]),
                f"{_ACTOR}.kl_loss_type": kind,
                f"{_ALGO}.use_kl_in_reward": False,
            },
        )
        return
    fit.set(
        f"kl {kl['estimator']} in the reward -> use_kl_in_reward, kl_penalty '{kind}', fixed "
        "kl_ctrl",
        **{
            f"{_ALGO}.use_kl_in_reward": True,
            f"{_ALGO}.kl_penalty": kind,
            f"{_ALGO}.kl_ctrl.type": "fixed",
            f"{_ALGO}.kl_ctrl.kl_coef": num(kl["coef"]),
            f"{_ACTOR}.use_kl_loss": False,
        },
    )


def _regime(fit: Fit, d: dict[str, Any], settings: ExportSettings) -> None:
    epochs, minibatches, staleness = regime(d)
    if staleness > 0:
        fit.miss("staleness", "verl's PPO trainer samples with the current policy")
    fit.set(f"epochs {epochs} -> ppo_epochs", **{f"{_ACTOR}.ppo_epochs": epochs})
    mini = f"{_ACTOR}.ppo_mini_batch_size"
    if settings.batch_size is not None:
        prompts = settings.batch_size // d["group_size"]
        if settings.batch_size % d["group_size"] or prompts % minibatches:
            raise ValueError(
                f"export setting batch_size {settings.batch_size} must be a multiple of "
                f"group_size {d['group_size']} x minibatches {minibatches}"
            )
        fit.set(
            f"batch of {settings.batch_size} completions -> {prompts} prompts, "
            f"{minibatches} minibatch(es) per epoch",
            **{"data.train_batch_size": prompts, mini: prompts // minibatches},
        )
    elif minibatches == 1:
        fit.set("one update per epoch", **{mini: "${data.train_batch_size}"})
    else:
        fit.miss("minibatches", "ppo_mini_batch_size needs the batch size (--batch-size)")
    if settings.lr is not None:
        fit.set("learning rate", **{f"{_ACTOR}.optim.lr": num(settings.lr)})
    if settings.steps is not None:
        fit.set("steps", **{"trainer.total_training_steps": settings.steps})
    if settings.temperature is not None:
        fit.set("temperature", **{f"{_ROLLOUT}.temperature": num(settings.temperature)})
    if settings.max_new_tokens is not None:
        fit.set("generation budget", **{"data.max_response_length": settings.max_new_tokens})


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """``{'a.b.c': 1}`` -> ``{'a': {'b': {'c': 1}}}`` (verl's YAML layout)."""
    out: dict[str, Any] = {}
    for dotted, value in flat.items():
        *parents, leaf = dotted.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def overrides(flat: dict[str, Any]) -> list[str]:
    """Hydra command-line overrides, ``key=value`` (YAML scalars: true, false, null)."""

    def text(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        return "null" if value is None else str(value)

    return [f"{key}={text(value)}" for key, value in flat.items()]
