"""Map an objective onto TRL 1.16: a stock trainer and its exact config, a custom GRPOTrainer
subclass computing grape's loss, or unsupported.

Dispatch on the spec's data: demonstrations -> ``SFTTrainer``; offline preference pairs ->
``DPOTrainer`` (``CPOTrainer`` for SimPO); on-policy rollouts -> ``RLOOTrainer`` (advantage
``rloo``) or ``GRPOTrainer`` (see :mod:`grape_evo.export.trl_rollout`). An on-policy spec that
no stock trainer reproduces is exported as ``custom``: :class:`GrapeGRPOTrainer
<grape_evo.export.trl_trainer.GrapeGRPOTrainer>` runs TRL's sampling and grape's loss, which
covers every on-policy objective without a critic (GAE), a trust-region step (TRPO) or stale
rollouts. Online preference objectives are always custom: TRL's OnlineDPOTrainer samples two
completions per prompt and keeps tied pairs (the first sample wins), grape pairs inside groups
and skips groups whose rewards are all equal.
"""

from __future__ import annotations

from typing import Any

from grape_evo.export.common import (
    CUSTOM,
    EXACT,
    UNSUPPORTED,
    ExportSettings,
    Fit,
    Mapping,
    canonical_dict,
    num,
    regime,
    with_settings,
)
from grape_evo.export.trl_rollout import grpo_fit, rloo_fit
from grape_evo.objective.registry import ADVANTAGES
from grape_evo.objective.spec import ObjectiveSpec

CUSTOM_CLASS = "GrapeGRPOTrainer"
_DPO_LOSSES = (
    "sigmoid", "sigmoid_norm", "hinge", "ipo", "robust", "sppo_hard", "nca_pair", "apo_zero",
    "apo_down", "discopop",
)  # fmt: skip
_MODULES = {"CPOTrainer": "trl.experimental.cpo"}


def to_trl(spec: ObjectiveSpec, settings: ExportSettings | None = None) -> Mapping:
    """The TRL mapping of ``spec`` with ``settings`` (lr, batch size, ... ) in its config."""
    settings = settings or ExportSettings()
    d = canonical_dict(with_settings(spec, settings))
    if d["data"] == "demonstrations":
        return _stock_or_unsupported("SFTTrainer", _sft_fit(d), _offline_settings(settings, 1))
    if d["data"] == "preference_pairs":
        trainer, fit = _pairs_fit(d)
        return _stock_or_unsupported(trainer, fit, _offline_settings(settings, 2))
    blockers = custom_blockers(d)
    if blockers.misses:
        return _mapping(UNSUPPORTED, UNSUPPORTED, blockers, {})
    if d["preference"] is not None:
        fit = Fit()
        fit.miss(
            "preference",
            "online pairs: TRL's OnlineDPOTrainer samples 2 completions per prompt and keeps "
            "tied pairs (first sample chosen); grape pairs inside groups and skips ties",
        )
        return _custom(d, fit, settings)
    rloo = d["advantage"]["name"] == "rloo"
    fit = rloo_fit(d) if rloo else grpo_fit(d, settings.max_new_tokens)
    if not fit.exact:
        return _custom(d, fit, settings)
    trainer = "RLOOTrainer" if rloo else "GRPOTrainer"
    config = {**fit.config, **_rollout_settings(d, settings, fit.config)}
    return _mapping(EXACT, trainer, fit, config)


def _mapping(status: str, trainer: str, fit: Fit, config: dict[str, Any]) -> Mapping:
    notes = tuple(fit.notes) if status == EXACT else fit.reasons
    return Mapping(
        target="trl",
        status=status,
        trainer=trainer,
        config=config,
        notes=notes,
        fields=fit.missed_fields,
        module=_MODULES.get(trainer, "trl") if status == EXACT else "",
    )


def _stock_or_unsupported(trainer: str, fit: Fit, settings: dict[str, Any]) -> Mapping:
    if fit.exact:
        return _mapping(EXACT, trainer, fit, {**fit.config, **settings})
    return _mapping(UNSUPPORTED, UNSUPPORTED, fit, {})


def custom_blockers(d: dict[str, Any]) -> Fit:
    """Why even a GRPOTrainer subclass cannot run ``d`` (no misses: it can)."""
    fit = Fit()
    if "critic" in ADVANTAGES.get(d["advantage"]["name"]).tags:
        fit.miss(
            "advantage",
            f"'{d['advantage']['name']}' needs a critic (value model): TRL 1.16 has no "
            "PPOTrainer and GRPOTrainer trains no value model",
        )
    if d["surrogate"]["name"] == "trpo" and d["preference"] is None:
        fit.miss(
            "surrogate",
            "trpo takes a natural-gradient step with a line search, not an optimizer step on "
            "a loss",
        )
    if regime(d)[2] > 0:
        fit.miss("staleness", "TRL's GRPOTrainer samples with the current policy")
    return fit


def _custom(d: dict[str, Any], fit: Fit, settings: ExportSettings) -> Mapping:
    """A GrapeGRPOTrainer config: TRL's sampling loop, grape's loss."""
    epochs, minibatches, _ = regime(d)
    kl, pref = d["kl"], d["preference"]
    config: dict[str, Any] = {
        "num_generations": max(d["group_size"], 2),
        "num_iterations": epochs,
        "steps_per_generation": minibatches,
        "gradient_accumulation_steps": 1,
        # Only so that TRL loads and scores the reference model (> 0 when the objective reads
        # it: a KL term or a pairwise loss); the loss is grape's.
        "beta": num(pref["beta"] if pref is not None else kl["coef"]),
        "mask_truncated_completions": False,
    }
    config.update(_rollout_settings(d, settings, config))
    notes = list(fit.reasons)
    if d["group_size"] == 1:
        notes.append(
            "group_size 1: TRL samples at least 2 completions per prompt; the custom trainer "
            "treats every completion as its own group"
        )
    return Mapping(
        target="trl",
        status=CUSTOM,
        trainer=CUSTOM,
        config=config,
        notes=tuple(notes),
        fields=fit.missed_fields,
    )


def _rollout_settings(
    d: dict[str, Any], settings: ExportSettings, config: dict[str, Any]
) -> dict[str, Any]:
    """GRPOConfig / RLOOConfig training arguments from the settings."""
    epochs, minibatches, _ = regime(d)
    out: dict[str, Any] = {}
    if settings.lr is not None:
        out.update(learning_rate=num(settings.lr), lr_scheduler_type="constant")
    if settings.batch_size is not None:
        group = config["num_generations"]
        if settings.batch_size % (group * minibatches):
            raise ValueError(
                f"export setting batch_size {settings.batch_size} must be a multiple of "
                f"num_generations {group} x minibatches {minibatches}"
            )
        out["per_device_train_batch_size"] = settings.batch_size // minibatches
    if settings.steps is not None:
        out["max_steps"] = settings.steps * epochs * minibatches
    if settings.temperature is not None:
        out["temperature"] = num(settings.temperature)
    if settings.max_new_tokens is not None and "max_completion_length" not in config:
        out["max_completion_length"] = settings.max_new_tokens
    return out


def _offline_settings(settings: ExportSettings, rows_per_example: int) -> dict[str, Any]:
    """SFTConfig / DPOConfig training arguments (pairs = batch_size // 2)."""
    out: dict[str, Any] = {}
    if settings.lr is not None:
        out.update(learning_rate=num(settings.lr), lr_scheduler_type="constant")
    if settings.batch_size is not None:
        out["per_device_train_batch_size"] = max(settings.batch_size // rows_per_example, 1)
    if settings.steps is not None:
        out["max_steps"] = settings.steps
    return out


def _one_update(fit: Fit, d: dict[str, Any]) -> None:
    if d["epochs"] != 1:
        fit.miss("epochs", f"{d['epochs']}: TRL takes one optimizer step per batch")


def _sft_fit(d: dict[str, Any]) -> Fit:
    fit = Fit()
    fit.set(
        "demonstrations: -log pi on completion tokens -> completion_only_loss, loss_type 'nll'",
        completion_only_loss=True,
        loss_type="nll",
    )
    if d["aggregation"]["name"] != "token_mean":
        fit.miss("aggregation", "SFTTrainer averages over every completion token (token_mean)")
    if d["kl"]["coef"] > 0:
        fit.miss("kl", "SFTTrainer has no reference KL")
    if d["entropy_coef"] > 0:
        fit.miss("entropy_coef", "SFTTrainer has no entropy bonus")
    _one_update(fit, d)
    return fit


def _pairs_fit(d: dict[str, Any]) -> tuple[str, Fit]:
    """(trainer, fit) for offline preference pairs."""
    pref = d["preference"]
    name, beta = pref["name"], num(pref["beta"])
    fit = Fit()
    _one_update(fit, d)
    if name == "simpo":
        fit.set(
            "preference simpo -> CPOTrainer loss_type 'simpo' without the NLL term (cpo_alpha 0)",
            loss_type="simpo",
            beta=beta,
            simpo_gamma=num(pref["gamma"]),
            label_smoothing=num(pref["label_smoothing"]),
            cpo_alpha=0.0,
            alpha=0.0,
        )
        return "CPOTrainer", fit
    if name not in _DPO_LOSSES:
        fit.miss("preference", f"'{name}' has no DPOTrainer loss_type")
        return "DPOTrainer", fit
    if name in ("sigmoid", "sigmoid_norm") and pref["label_smoothing"] > 0:
        fit.miss("preference", f"{name} label_smoothing: TRL's {name} loss has none")
    if name == "ipo" and not pref["length_normalize"]:
        fit.miss(
            "preference",
            "ipo on sequence log-ratios (the paper's form); TRL's ipo divides each log-ratio by "
            "its length: set length_normalize true for an exact export",
        )
    extra: dict[str, Any] = {}
    if name == "robust":
        extra["label_smoothing"] = num(pref["label_smoothing"])
    if name == "discopop":
        extra["discopop_tau"] = num(pref["tau"])
    fit.set(
        f"preference {name}, beta {beta:g} -> DPOTrainer loss_type ['{name}']",
        loss_type=[name],
        beta=beta,
        f_divergence_type="reverse_kl",
        use_weighting=False,
        ld_alpha=None,
        loss_weights=None,
        **extra,
    )
    return "DPOTrainer", fit
