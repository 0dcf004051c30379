"""Export mappings: every preset exports; the exact ones give the TRL / verl arguments worked out
by hand from TRL 1.16's GRPOConfig/RLOOConfig/DPOConfig/CPOConfig/SFTConfig docs and verl's
ppo_trainer.yaml and core_algos.py; anything else is custom or unsupported, field by field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from grape_evo.export import ExportSettings, export, map_objective, to_trl, to_verl
from grape_evo.export.common import canonical_dict
from grape_evo.export.trl import custom_blockers
from grape_evo.export.trl_rollout import grpo_fit
from grape_evo.objective import ObjectiveSpec, presets


def variant(preset: str, **changes: Any) -> ObjectiveSpec:
    """Preset ``preset`` with some fields replaced."""
    return ObjectiveSpec.from_dict({"name": preset, **presets.describe(preset).spec, **changes})


# GRPOConfig arguments every exact GRPOTrainer mapping pins (TRL defaults that change the loss
# otherwise: use_bias_correction_kl=True multiplies the KL by the ratio).
GRPO_FIXED = {
    "entropy_coef": 0.0,
    "num_iterations": 1,
    "steps_per_generation": 1,
    "gradient_accumulation_steps": 1,
    "multi_objective_aggregation": "sum_then_normalize",
    "mask_truncated_completions": False,
    "top_entropy_quantile": 1.0,
    "off_policy_mask_threshold": None,
}
GROUP_Z_1E4 = {"name": "group_zscore", "eps": 1e-4}

TRL_EXACT = {
    # GRPO paper settings with TRL's z-score epsilon: loss_type 'grpo' normalises per sequence.
    "grpo_eps_1e-4": (
        variant("grpo", advantage=GROUP_Z_1E4),
        "GRPOTrainer",
        {
            "num_generations": 8, "scale_rewards": "group", "loss_type": "grpo",
            "epsilon": 0.2, "epsilon_high": 0.2, "delta": None,
            "importance_sampling_level": "token", "beta": 0.04, "use_bias_correction_kl": False,
            **GRPO_FIXED,
        },
    ),
    # DAPO: clip-higher 0.28, token mean over the batch ('dapo'), no KL.
    "dapo_eps_1e-4": (
        variant("dapo", advantage=GROUP_Z_1E4),
        "GRPOTrainer",
        {
            "num_generations": 8, "scale_rewards": "group", "loss_type": "dapo",
            "epsilon": 0.2, "epsilon_high": 0.28, "delta": None,
            "importance_sampling_level": "token", "beta": 0.0, **GRPO_FIXED,
        },
    ),
    # GSPO: sequence-level importance sampling with the 'grpo' per-sequence mean.
    "gspo_eps_1e-4": (
        variant("gspo", advantage=GROUP_Z_1E4),
        "GRPOTrainer",
        {
            "num_generations": 8, "scale_rewards": "group", "loss_type": "grpo",
            "epsilon": 3e-4, "epsilon_high": 4e-4, "delta": None,
            "importance_sampling_level": "sequence", "beta": 0.0, **GRPO_FIXED,
        },
    ),
    # CISPO: TRL's epsilon_high bounds the ratio itself (eps_max), so 1 + 0.28.
    "cispo_eps_1e-4": (
        variant("cispo", advantage=GROUP_Z_1E4),
        "GRPOTrainer",
        {
            "num_generations": 8, "scale_rewards": "group", "loss_type": "cispo",
            "epsilon_high": 1.28, "importance_sampling_level": "token", "beta": 0.0,
            **GRPO_FIXED,
        },
    ),
    # Dr. GRPO with a constant normaliser = max_completion_length; no std scaling.
    "dr_grpo_max_len_64": (
        variant("dr_grpo", aggregation={"name": "seq_mean_token_sum_norm", "max_len": 64}),
        "GRPOTrainer",
        {
            "num_generations": 8, "scale_rewards": "none", "loss_type": "dr_grpo",
            "max_completion_length": 64, "epsilon": 0.2, "epsilon_high": 0.2, "delta": None,
            "importance_sampling_level": "token", "beta": 0.0, **GRPO_FIXED,
        },
    ),
    # RLOO: k = 4, k1 KL 0.05 in the reward (RLOOConfig beta), one update per batch.
    "rloo": (
        presets.get("rloo"),
        "RLOOTrainer",
        {
            "num_generations": 4, "normalize_advantages": False, "reward_clip_range": None,
            "beta": 0.05, "num_iterations": 1, "steps_per_generation": 1,
            "gradient_accumulation_steps": 1, "mask_truncated_completions": False,
        },
    ),
    "sft": (
        presets.get("sft"),
        "SFTTrainer",
        {"completion_only_loss": True, "loss_type": "nll"},
    ),
    "dpo": (
        presets.get("dpo"),
        "DPOTrainer",
        {
            "loss_type": ["sigmoid"], "beta": 0.1, "f_divergence_type": "reverse_kl",
            "use_weighting": False, "ld_alpha": None, "loss_weights": None,
        },
    ),
    "slic": (
        presets.get("slic"),
        "DPOTrainer",
        {
            "loss_type": ["hinge"], "beta": 0.1, "f_divergence_type": "reverse_kl",
            "use_weighting": False, "ld_alpha": None, "loss_weights": None,
        },
    ),
    "discopop": (
        presets.get("discopop"),
        "DPOTrainer",
        {
            "loss_type": ["discopop"], "beta": 0.05, "discopop_tau": 0.05,
            "f_divergence_type": "reverse_kl", "use_weighting": False, "ld_alpha": None,
            "loss_weights": None,
        },
    ),
    # TRL's IPO on length-normalised log-ratios.
    "ipo_length_normalized": (
        variant("ipo", preference={"name": "ipo", "beta": 0.1, "length_normalize": True}),
        "DPOTrainer",
        {
            "loss_type": ["ipo"], "beta": 0.1, "f_divergence_type": "reverse_kl",
            "use_weighting": False, "ld_alpha": None, "loss_weights": None,
        },
    ),
    # SimPO: CPOTrainer loss_type 'simpo' without the behaviour-cloning term.
    "simpo": (
        presets.get("simpo"),
        "CPOTrainer",
        {
            "loss_type": "simpo", "beta": 2.0, "simpo_gamma": 1.0, "label_smoothing": 0.0,
            "cpo_alpha": 0.0, "alpha": 0.0,
        },
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(TRL_EXACT))
def test_trl_exact_configs_match_hand_written_arguments(case: str) -> None:
    spec, trainer, config = TRL_EXACT[case]
    mapping = to_trl(spec)
    assert (mapping.status, mapping.trainer) == ("exact", trainer), mapping.notes
    assert mapping.config == config


ACTOR = "actor_rollout_ref.actor"
VERL_EXACT = {
    "grpo": {
        "actor_rollout_ref.rollout.n": 8,
        "algorithm.adv_estimator": "grpo",
        "algorithm.norm_adv_by_std_in_grpo": True,
        f"{ACTOR}.policy_loss.loss_mode": "vanilla",
        f"{ACTOR}.clip_ratio": 0.2,
        f"{ACTOR}.clip_ratio_low": 0.2,
        f"{ACTOR}.clip_ratio_high": 0.2,
        f"{ACTOR}.clip_ratio_c": 1e9,  # verl's dual clip is always on: out of reach
        f"{ACTOR}.loss_agg_mode": "seq-mean-token-mean",
        f"{ACTOR}.use_kl_loss": True,
        f"{ACTOR}.kl_loss_coef": 0.04,
        f"{ACTOR}.kl_loss_type": "low_var_kl",
        "algorithm.use_kl_in_reward": False,
        f"{ACTOR}.entropy_coeff": 0.0,
        f"{ACTOR}.ppo_epochs": 1,
        f"{ACTOR}.ppo_mini_batch_size": "${data.train_batch_size}",
    },
    "ppo": {
        "actor_rollout_ref.rollout.n": 1,
        "algorithm.adv_estimator": "gae",
        "algorithm.gamma": 1.0,
        "algorithm.lam": 0.95,
        f"{ACTOR}.policy_loss.loss_mode": "vanilla",
        f"{ACTOR}.clip_ratio": 0.2,
        f"{ACTOR}.clip_ratio_low": 0.2,
        f"{ACTOR}.clip_ratio_high": 0.2,
        f"{ACTOR}.clip_ratio_c": 1e9,
        f"{ACTOR}.loss_agg_mode": "token-mean",
        "algorithm.use_kl_in_reward": True,
        "algorithm.kl_penalty": "kl",
        "algorithm.kl_ctrl.type": "fixed",
        "algorithm.kl_ctrl.kl_coef": 0.05,
        f"{ACTOR}.use_kl_loss": False,
        f"{ACTOR}.entropy_coeff": 0.0,
        f"{ACTOR}.ppo_epochs": 4,
        "data.train_batch_size": 64,  # 64 completions of group size 1, 4 minibatches
        f"{ACTOR}.ppo_mini_batch_size": 16,
        "critic.cliprange_value": 0.2,
    },
}
VERL_SETTINGS = {"ppo": ExportSettings(batch_size=64)}  # 4 minibatches need the batch size
VERL_KEY_ARGS = {  # the parts that identify each algorithm in verl
    "rloo": {"algorithm.adv_estimator": "rloo", f"{ACTOR}.policy_loss.loss_mode": "gpg",
             f"{ACTOR}.loss_agg_mode": "seq-mean-token-sum", "algorithm.kl_penalty": "kl"},
    "dapo": {f"{ACTOR}.clip_ratio_high": 0.28, f"{ACTOR}.loss_agg_mode": "token-mean",
             f"{ACTOR}.use_kl_loss": False, "algorithm.use_kl_in_reward": False},
    "gspo": {f"{ACTOR}.policy_loss.loss_mode": "gspo", f"{ACTOR}.clip_ratio_low": 3e-4,
             f"{ACTOR}.clip_ratio_high": 4e-4},
    "cispo": {f"{ACTOR}.policy_loss.loss_mode": "cispo", f"{ACTOR}.clip_ratio_low": 1.0,
              f"{ACTOR}.clip_ratio_high": 0.28},
    "reinforce_pp": {"algorithm.adv_estimator": "reinforce_plus_plus", "algorithm.gamma": 1.0,
                     "algorithm.kl_ctrl.kl_coef": 0.01, "algorithm.use_kl_in_reward": True},
}  # fmt: skip


@pytest.mark.parametrize("name", list(VERL_EXACT))
def test_verl_exact_configs_match_hand_written_settings(name: str) -> None:
    mapping = to_verl(presets.get(name), VERL_SETTINGS.get(name))
    assert mapping.status == "exact", mapping.notes
    assert mapping.config == VERL_EXACT[name]


@pytest.mark.parametrize("name", list(VERL_KEY_ARGS))
def test_verl_exact_presets_set_their_algorithm(name: str) -> None:
    mapping = to_verl(presets.get(name))
    assert mapping.status == "exact", mapping.notes
    assert VERL_KEY_ARGS[name].items() <= mapping.config.items()


NOT_EXACT = {
    # (spec, TRL status, TRL fields, verl status, verl fields)
    "grpo": (presets.get("grpo"), "custom", ("advantage",), "exact", ()),
    "dr_grpo": (presets.get("dr_grpo"), "custom", ("aggregation",), "custom", ("aggregation",)),
    "rank_advantage": (
        variant("grpo", advantage="rank"), "custom", ("advantage",), "custom", ("advantage",),
    ),
    "sapo_token_mean": (
        variant("dapo", advantage=GROUP_Z_1E4, surrogate={"name": "sapo"}),
        "custom", ("aggregation",), "custom", ("advantage", "aggregation"),
    ),
    "k2_kl_in_loss": (
        variant("grpo", advantage=GROUP_Z_1E4, kl={"estimator": "k2", "coef": 0.1}),
        "custom", ("kl",), "custom", ("advantage",),
    ),
    "kl_in_reward_grpo": (
        variant("grpo", kl={"estimator": "k1", "placement": "reward", "coef": 0.1}),
        "custom", ("advantage", "kl"), "exact", (),
    ),
    "ppo": (presets.get("ppo"), "unsupported", ("advantage",), "custom", ("minibatches",)),
    "trpo": (presets.get("trpo"), "unsupported", ("advantage", "surrogate"), "custom",
             ("advantage", "surrogate")),
    "ipo": (presets.get("ipo"), "unsupported", ("preference",), "custom", ("data",)),
    "online_dpo": (presets.get("online_dpo"), "custom", ("preference",), "custom",
                   ("preference",)),
    "sft_seq_mean": (variant("sft", aggregation="seq_mean_token_mean"), "unsupported",
                     ("aggregation",), "custom", ("data",)),
}  # fmt: skip


@pytest.mark.parametrize("case", list(NOT_EXACT))
def test_parts_without_an_equivalent_are_named(case: str) -> None:
    spec, trl_status, trl_fields, verl_status, verl_fields = NOT_EXACT[case]
    trl, verl = to_trl(spec), to_verl(spec)
    assert (trl.status, trl.fields) == (trl_status, trl_fields), trl.notes
    assert (verl.status, verl.fields) == (verl_status, verl_fields), verl.notes
    for mapping in (trl, verl):
        if mapping.status != "exact":
            assert all(note.split(":")[0] in mapping.fields for note in mapping.notes[:1])


def test_custom_trl_config_reads_the_reference_only_when_needed() -> None:
    rank = to_trl(variant("dapo", advantage="rank"))
    assert rank.config["beta"] == 0.0  # no KL: TRL loads no reference model
    assert to_trl(variant("grpo", advantage="rank")).config["beta"] == 0.04
    assert to_trl(presets.get("online_dpo")).config["beta"] == 0.1  # pairs use log-ratios
    single = to_trl(presets.get("reinforce"))
    assert single.config["num_generations"] == 2  # TRL's minimum; each its own group
    assert any("group_size 1" in note for note in single.notes)


def test_settings_enter_the_configs() -> None:
    settings = ExportSettings(
        lr=1e-6, batch_size=64, group_size=4, steps=10, temperature=0.7, max_new_tokens=128
    )
    trl = to_trl(variant("grpo", advantage=GROUP_Z_1E4, epochs=2), settings)
    assert trl.config["num_generations"] == 4
    assert trl.config["per_device_train_batch_size"] == 64
    assert trl.config["max_steps"] == 20  # two optimizer steps per rollout batch
    assert trl.config["learning_rate"] == 1e-6
    assert trl.config["lr_scheduler_type"] == "constant"
    assert (trl.config["temperature"], trl.config["max_completion_length"]) == (0.7, 128)
    verl = to_verl(variant("grpo", epochs=2), settings)
    assert verl.config["data.train_batch_size"] == 16  # prompts
    assert verl.config[f"{ACTOR}.ppo_mini_batch_size"] == 16
    assert verl.config["actor_rollout_ref.rollout.n"] == 4
    assert verl.config["trainer.total_training_steps"] == 10
    assert to_trl(presets.get("dpo"), settings).config["per_device_train_batch_size"] == 32
    with pytest.raises(ValueError, match="batch_size 30"):
        to_trl(presets.get("grpo"), ExportSettings(batch_size=30))
    with pytest.raises(ValueError, match="batch_size"):
        ExportSettings(batch_size=0)


@pytest.mark.parametrize("target", ["trl", "verl"])
def test_every_preset_exports(target: str, tmp_path: Path) -> None:
    for name in presets.names():
        out = tmp_path / name
        out.mkdir()
        spec = presets.get(name)
        result = export(spec, target, out)
        assert result.mapping == map_objective(spec, target)
        assert ObjectiveSpec.from_yaml(out / "objective.yaml") == spec
        readme = (out / "README.md").read_text()
        assert f"`{name}`" in readme and f"**{result.mapping.status}**" in readme
        if target == "trl":
            document = json.loads((out / "trl_config.json").read_text())
            trainer = result.mapping.trainer
            assert document["trainer"] == trainer and document["grape"]["key"] == spec.key()
            assert (out / "grape_objective_trainer.py").exists() == (trainer == "custom")
        else:
            document = yaml.safe_load((out / "verl_config.yaml").read_text())
            assert document["status"] == result.mapping.status
            assert len(document["overrides"]) == len(result.mapping.config)


def test_generated_custom_module_is_valid_python(tmp_path: Path) -> None:
    spec = variant("grpo", name='odd """ name \\ here', advantage="rank")
    export(spec, "trl", tmp_path)
    source = (tmp_path / "grape_objective_trainer.py").read_text()
    code = compile(source, "grape_objective_trainer.py", "exec")
    assert "GrapeGRPOTrainer" in code.co_names
    namespace: dict[str, Any] = {}
    exec(compile(source.split("\nfrom grape_evo.export.trl_trainer")[0], "doc", "exec"), namespace)
    assert 'odd """ name \\ here' in namespace["__doc__"]
    literal = source.split("SPEC = ", 1)[1].split("\n\n\n", 1)[0]
    assert ObjectiveSpec.from_dict(eval(literal)) == spec


def test_exact_configs_are_accepted_by_trl(tmp_path: Path) -> None:
    trl = pytest.importorskip("trl")
    from trl.experimental.cpo import CPOConfig

    classes = {
        "GRPOTrainer": trl.GRPOConfig,
        "RLOOTrainer": trl.RLOOConfig,
        "DPOTrainer": trl.DPOConfig,
        "SFTTrainer": trl.SFTConfig,
        "CPOTrainer": CPOConfig,
        "custom": trl.GRPOConfig,
    }
    specs = [case[0] for case in TRL_EXACT.values()] + [presets.get("grpo")]
    for spec in specs:
        mapping = to_trl(spec, ExportSettings(lr=1e-6, batch_size=16, steps=2))
        args = classes[mapping.trainer](output_dir=str(tmp_path), use_cpu=True, **mapping.config)
        for key, value in mapping.config.items():
            assert getattr(args, key) == value, (spec.name, key)


def test_regime_fields_of_design_section_7_map_or_block() -> None:
    d = canonical_dict(variant("dapo", advantage=GROUP_Z_1E4))
    fit = grpo_fit({**d, "minibatches": 2}, None)
    assert fit.exact
    # Two optimizer steps per batch: each a token mean over its own minibatch (bnpo).
    assert (fit.config["loss_type"], fit.config["steps_per_generation"]) == ("bnpo", 2)
    assert custom_blockers({**d, "staleness": 1}).missed_fields == ("staleness",)
