"""The README.md of an export folder: status, how to run it, how (or why not) each part of the
objective maps, the spec and its formula, and what "exact" leaves to the trainer."""

from __future__ import annotations

from grape_evo.export.common import CUSTOM, EXACT, Mapping
from grape_evo.objective.spec import ObjectiveSpec

_TRL_DATA = {
    "GRPOTrainer": "model=MODEL, reward_funcs=REWARD, train_dataset=PROMPTS",
    "RLOOTrainer": "model=MODEL, reward_funcs=REWARD, train_dataset=PROMPTS",
    "SFTTrainer": "model=MODEL, train_dataset=PROMPT_COMPLETION_PAIRS",
    "DPOTrainer": "model=MODEL, train_dataset=PROMPT_CHOSEN_REJECTED",
    "CPOTrainer": "model=MODEL, train_dataset=PROMPT_CHOSEN_REJECTED",
}

_TRL_CAVEATS = """\
"Exact" means TRL takes the same gradient step as grape on the same batch. What the objective
does not fix still differs: how completions are sampled (transformers `generate` or vLLM; with
vLLM, TRL's `vllm_importance_sampling_correction` multiplies the loss by a sampler-vs-trainer
ratio), prompt order, the optimiser (TRL: AdamW) and schedule (`lr_scheduler_type` is set to
`constant` only when a learning rate is exported), mixed precision and gradient checkpointing
(TRL's defaults: bf16 on, checkpointing on). At a sampling temperature other than 1 TRL scores
log-probabilities at that temperature, grape at temperature 1. TRL divides a constant group's
float residue by `std + 1e-4`; grape sets its advantage to exactly 0. Raising
`gradient_accumulation_steps` (with `steps_per_generation` equal to it) keeps the loss types
`grpo`, `dapo`, `dr_grpo` and `luspo` exact; `bnpo` and a custom trainer then normalise each
micro-batch separately."""

_VERL_CAVEATS = """\
"Exact" means verl's actor takes the same gradient step as grape on the same batch, up to
verl's numerical guards: log-ratios clamped to [-20, 20] (GSPO's sequence log-ratio to 10),
`low_var_kl` (k3) clamped to [-10, 10] per token, `1e-8` added to sequence lengths in
`seq-mean-token-mean`. What the objective does not fix still differs: the rollout engine,
prompt order, the optimiser and schedule, and for `gae` the critic (verl: a separate model with
a clipped value loss; grape: a value head on the policy, unclipped). With several micro-batches
per mini-batch (`ppo_micro_batch_size_per_gpu`) verl's FSDP actor aggregates the KL and entropy
terms per micro-batch. With several minibatches verl splits the batch in order, grape
reshuffles it every epoch."""


def export_readme(spec: ObjectiveSpec, mapping: Mapping) -> str:
    """Markdown for ``DIR/README.md``."""
    target = "TRL 1.16" if mapping.target == "trl" else "verl"
    lines = [
        f"# grape objective `{spec.name}` exported to {target}",
        "",
        f"Objective key `{spec.key()}`. Status: **{mapping.status}** — {_status_line(mapping)}",
        "",
        "## How to run it",
        "",
        *_usage(mapping),
        "",
        "## How each part maps" if mapping.status == EXACT else "## Why it is not exact",
        "",
        *(f"- {note}" for note in mapping.notes),
        "",
        "## The objective",
        "",
        "`objective.yaml`:",
        "",
        "```yaml",
        spec.to_yaml().rstrip(),
        "```",
        "",
        "$$",
        spec.latex(),
        "$$",
        "",
        "## What exact leaves to the trainer",
        "",
        _TRL_CAVEATS if mapping.target == "trl" else _VERL_CAVEATS,
        "",
    ]
    return "\n".join(lines)


def _status_line(mapping: Mapping) -> str:
    if mapping.status == EXACT:
        if mapping.target == "trl":
            return f"TRL's `{mapping.trainer}` with the config in `trl_config.json` computes it."
        return "verl's PPO trainer with the settings in `verl_config.yaml` computes it."
    if mapping.status == CUSTOM and mapping.target == "trl":
        return (
            "no stock TRL trainer computes it; `grape_objective_trainer.py` defines a "
            "`GRPOTrainer` subclass whose loss is grape's objective."
        )
    if mapping.status == CUSTOM:
        return "verl's settings cannot express it (reasons below); no config is written."
    return "TRL's training loops cannot run it (reasons below); no config is written."


def _usage(mapping: Mapping) -> list[str]:
    if mapping.target == "verl":
        if mapping.status != EXACT:
            return ["Nothing to run: see the reasons below."]
        return [
            "Pass the `overrides` of `verl_config.yaml` to verl's trainer (quote values with",
            "`${...}`), or merge its `config` into your verl config, and add your data, model",
            "and reward function settings:",
            "",
            "```bash",
            "python -m verl.trainer.main_ppo $(python -c \"import yaml; print(' '.join(",
            "    yaml.safe_load(open('verl_config.yaml'))['overrides']))\") \\",
            "    data.train_files=... actor_rollout_ref.model.path=... \\",
            "    custom_reward_function.path=...",
            "```",
        ]
    if mapping.status == EXACT:
        config_class = mapping.trainer.replace("Trainer", "Config")
        return [
            "```python",
            "import json",
            f"from {mapping.module} import {config_class}, {mapping.trainer}",
            "",
            'config = json.load(open("trl_config.json"))["config"]',
            f"trainer = {mapping.trainer}({_TRL_DATA[mapping.trainer]},",
            f'    args={config_class}(output_dir="out", **config))',
            "trainer.train()",
            "```",
        ]
    if mapping.status == CUSTOM:
        return [
            "Needs TRL 1.16 and grape-evo (`pip install 'grape-evo[bench]'`) where it trains.",
            "",
            "```python",
            "import json",
            "from trl import GRPOConfig",
            "from grape_objective_trainer import GrapeGRPOTrainer",
            "",
            'config = json.load(open("trl_config.json"))["config"]',
            "trainer = GrapeGRPOTrainer(model=MODEL, reward_funcs=REWARD, train_dataset=PROMPTS,",
            '    args=GRPOConfig(output_dir="out", **config))',
            "trainer.train()",
            "```",
            "",
            "`beta` in the config only makes TRL load and score the reference model; the loss",
            "(KL included) is grape's. Reward functions have TRL's signature",
            "`f(prompts, completions, **columns) -> list[float]`.",
        ]
    return ["Nothing to run: see the reasons below."]
