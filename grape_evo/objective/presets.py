"""Published algorithms as points of the objective space (**contract**: these names).

Each entry is a plain ObjectiveSpec with the paper's settings where the paper states them, and
our choice (said in ``note``) where it does not or where the setting is outside the space
(e.g. DAPO's dynamic sampling). Group-based methods use the group sizes of their papers scaled
to our small tasks: 8 completions per prompt unless noted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from grape_evo.objective.registry import ObjectiveError
from grape_evo.objective.spec import ObjectiveSpec


@dataclass(frozen=True)
class Preset:
    spec: dict[str, Any]
    paper: str
    note: str = ""


_PPO_CLIP = {"name": "ppo_clip", "clip_low": 0.2, "clip_high": 0.2}
_NO_KL = {"coef": 0.0}

PRESETS: dict[str, Preset] = {
    "sft": Preset(
        {
            "data": "demonstrations",
            "advantage": "none",
            "surrogate": "reinforce",
            "aggregation": "token_mean",
        },
        "supervised fine-tuning (maximum likelihood on demonstrations)",
        "loss = mean over tokens of -log pi(y_t)",
    ),
    "rejection_sampling": Preset(
        {
            "group_size": 8,
            "advantage": {"name": "best_of_group", "scale": "sft"},
            "surrogate": "reinforce",
            "aggregation": "token_mean",
        },
        "Dong et al. 2023, RAFT (arXiv:2304.06767)",
        "SFT on the best of 8 samples per prompt: token mean of -log pi over the selected "
        "completions (ties share the weight)",
    ),
    "reinforce": Preset(
        {
            "group_size": 1,
            "advantage": "reward",
            "surrogate": "reinforce",
            "aggregation": "seq_mean_token_sum",
        },
        "Williams 1992, REINFORCE",
        "-R * log pi(y) per sequence, no baseline",
    ),
    "reinforce_baseline": Preset(
        {
            "group_size": 1,
            "advantage": {"name": "ema_baseline", "decay": 0.9},
            "surrogate": "reinforce",
            "aggregation": "seq_mean_token_sum",
        },
        "Williams 1992; Sutton & Barto 2018, sec. 13.4",
        "moving-average reward baseline, decay 0.9",
    ),
    "rloo": Preset(
        {
            "group_size": 4,
            "advantage": "rloo",
            "surrogate": "reinforce",
            "kl": {"estimator": "k1", "placement": "reward", "coef": 0.05},
            "aggregation": "seq_mean_token_sum",
        },
        "Ahmadian et al. 2024, Back to Basics (arXiv:2402.14740)",
        "k = 4 samples, leave-one-out baseline, sequence KL in the reward (TRL kl_coef 0.05)",
    ),
    "trpo": Preset(
        {
            "group_size": 1,
            "advantage": {"name": "gae", "gamma": 1.0, "lam": 0.95},
            "surrogate": {"name": "trpo", "max_kl": 0.01, "damping": 0.1},
            "aggregation": "token_mean",
        },
        "Schulman et al. 2015, TRPO (arXiv:1502.05477)",
        "natural-gradient step with max KL 0.01, GAE critic",
    ),
    "ppo": Preset(
        {
            "group_size": 1,
            "advantage": {"name": "gae", "gamma": 1.0, "lam": 0.95},
            "surrogate": _PPO_CLIP,
            "kl": {"estimator": "k1", "placement": "reward", "coef": 0.05},
            "aggregation": "token_mean",
            "epochs": 4,
        },
        "Schulman et al. 2017 (arXiv:1707.06347); Ouyang et al. 2022, InstructGPT",
        "clip 0.2, GAE(1, 0.95) with whitening, k1 KL 0.05 in the reward, 4 epochs (TRL PPO)",
    ),
    "grpo": Preset(
        {
            "group_size": 8,
            "advantage": {"name": "group_zscore", "eps": 1e-6},
            "surrogate": _PPO_CLIP,
            "kl": {"estimator": "k3", "placement": "loss", "coef": 0.04},
            "aggregation": "seq_mean_token_mean",
        },
        "Shao et al. 2024, DeepSeekMath (arXiv:2402.03300)",
        "group z-score, clip 0.2, k3 KL 0.04 in the loss, per-sequence token mean",
    ),
    "dr_grpo": Preset(
        {
            "group_size": 8,
            "advantage": "group_mean",
            "surrogate": _PPO_CLIP,
            "kl": _NO_KL,
            "aggregation": "seq_mean_token_sum_norm",
        },
        "Liu et al. 2025, Understanding R1-Zero-Like Training (arXiv:2503.20783)",
        "no std division, constant length normaliser (generation budget), no KL",
    ),
    "dapo": Preset(
        {
            "group_size": 8,
            "advantage": "group_zscore",
            "surrogate": {"name": "ppo_clip", "clip_low": 0.2, "clip_high": 0.28},
            "kl": _NO_KL,
            "aggregation": "token_mean",
        },
        "Yu et al. 2025, DAPO (arXiv:2503.14476)",
        "clip-higher 0.28, token-level mean, no KL; dynamic sampling and overlong shaping are "
        "data-side and not modelled (the paper uses 16 samples)",
    ),
    "gspo": Preset(
        {
            "group_size": 8,
            "advantage": "group_zscore",
            "surrogate": {"name": "gspo", "clip_low": 3e-4, "clip_high": 4e-4},
            "kl": _NO_KL,
            "aggregation": "seq_mean_token_mean",
        },
        "Zheng et al. 2025, GSPO (arXiv:2507.18071)",
        "sequence-level ratio clipped to [1 - 3e-4, 1 + 4e-4]",
    ),
    "cispo": Preset(
        {
            "group_size": 8,
            "advantage": "group_zscore",
            "surrogate": {"name": "cispo", "clip_low": 1.0, "clip_high": 0.28},
            "kl": _NO_KL,
            "aggregation": "token_mean",
        },
        "MiniMax 2025, MiniMax-M1 (arXiv:2506.13585)",
        "clipped, stop-gradient importance weight; no lower bound; eps_high 0.28",
    ),
    "reinforce_pp": Preset(
        {
            "group_size": 1,
            "advantage": {"name": "reinforce_pp", "group_baseline": False},
            "surrogate": _PPO_CLIP,
            "kl": {"estimator": "k1", "placement": "reward", "coef": 0.01},
            "aggregation": "token_mean",
        },
        "Hu 2025, REINFORCE++ (arXiv:2501.03262)",
        "token-level KL 0.01 in the reward, batch-whitened returns, clip 0.2",
    ),
    "dpo": Preset(
        {"data": "preference_pairs", "preference": {"name": "sigmoid", "beta": 0.1}},
        "Rafailov et al. 2023, DPO (arXiv:2305.18290)",
        "beta 0.1 on offline pairs",
    ),
    "online_dpo": Preset(
        {"group_size": 2, "preference": {"name": "sigmoid", "beta": 0.1, "pairing": "best_worst"}},
        "Guo et al. 2024, Direct Language Model Alignment from Online AI Feedback",
        "2 samples per prompt ranked by the task reward, beta 0.1",
    ),
    "ipo": Preset(
        {"data": "preference_pairs", "preference": {"name": "ipo", "beta": 0.1}},
        "Azar et al. 2023, A General Theoretical Paradigm (arXiv:2310.12036)",
        "beta 0.1, sequence log-ratios",
    ),
    "slic": Preset(
        {"data": "preference_pairs", "preference": {"name": "hinge", "beta": 0.1}},
        "Zhao et al. 2023, SLiC-HF (arXiv:2305.10425)",
        "hinge on the beta-scaled log-ratio gap, margin 1, beta 0.1 (TRL hinge)",
    ),
    "simpo": Preset(
        {"data": "preference_pairs", "preference": {"name": "simpo", "beta": 2.0, "gamma": 1.0}},
        "Meng et al. 2024, SimPO (arXiv:2405.14734)",
        "reference-free, length-normalised, beta 2.0, margin gamma 1.0",
    ),
    "discopop": Preset(
        {"data": "preference_pairs", "preference": {"name": "discopop", "beta": 0.05, "tau": 0.05}},
        "Chan et al. 2024, Discovering Preference Optimization Algorithms (arXiv:2406.08414)",
        "log-ratio modulated loss, beta 0.05, tau 0.05",
    ),
}


def names() -> list[str]:
    """Every preset name, in table order."""
    return list(PRESETS)


def get(name: str) -> ObjectiveSpec:
    """The preset ``name`` as an ObjectiveSpec (its ``name`` field is the preset name)."""
    if name not in PRESETS:
        raise ObjectiveError(f"unknown preset '{name}'; valid presets: {names()}")
    return ObjectiveSpec.from_dict({"name": name, **PRESETS[name].spec})


def describe(name: str) -> Preset:
    """The preset's table entry: spec dict, paper and note."""
    get(name)
    return PRESETS[name]
