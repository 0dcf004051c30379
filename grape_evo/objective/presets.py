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
    """A published algorithm: its spec, its paper, our settings note and why it was proposed."""

    spec: dict[str, Any]
    paper: str
    note: str = ""
    why: str = ""


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
        why=(
            "Imitation is the cheapest learning signal: where demonstrations exist, maximising "
            "their likelihood needs no reward, no sampling and no reference; it is the warm "
            "start of every other method here."
        ),
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
        why=(
            "RL from a reward model was unstable and costly; RAFT keeps only the best of "
            "several samples per prompt and fine-tunes on them, turning reward-driven "
            "improvement into plain supervised learning."
        ),
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
        why=(
            "The first unbiased estimator of the gradient of expected reward for a stochastic "
            "policy: weight each sample's log-likelihood gradient by its reward."
        ),
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
        why=(
            "Subtracting a baseline that does not depend on the sample keeps the gradient "
            "unbiased and cuts its variance; a running mean of past rewards is the simplest "
            "one."
        ),
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
        why=(
            "From a strong SFT start PPO's critic and clipping are unnecessary: k samples per "
            "prompt give each one a leave-one-out baseline that is unbiased and needs no value "
            "model."
        ),
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
        why=(
            "Large policy-gradient steps can wreck the policy; bounding each update's KL to the "
            "sampling policy (a trust region), solved with a natural-gradient step and a line "
            "search, guarantees improvement in theory."
        ),
    ),
    "ppo": Preset(
        {
            "group_size": 1,
            "advantage": {
                "name": "gae",
                "gamma": 1.0,
                "lam": 0.95,
                "critic": "separate",
                "value_coef": 0.1,
                "value_clip": 0.2,
            },
            "surrogate": _PPO_CLIP,
            "kl": {"estimator": "k1", "placement": "reward", "coef": 0.05},
            "aggregation": "token_mean",
            "epochs": 4,
            "minibatches": 4,
        },
        "Schulman et al. 2017 (arXiv:1707.06347); Ouyang et al. 2022, InstructGPT",
        "clip 0.2, GAE(1, 0.95) with whitening, k1 KL 0.05 in the reward, 4 epochs x 4 "
        "minibatches; a separate value model, value loss clipped at 0.2 with weight 0.1 (TRL)",
        why=(
            "TRPO's constrained second-order step is complex; clipping the importance ratio "
            "gives a first-order surrogate as stable that allows several epochs per batch, and "
            "InstructGPT used it with a KL penalty in the reward for RLHF."
        ),
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
        why=(
            "PPO's value model is as large as the policy and hard to fit on outcome rewards; a "
            "group of samples per prompt supplies the baseline and scale instead, and the KL "
            "moves from the reward into the loss."
        ),
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
        why=(
            "GRPO's per-sequence length normalisation and std division bias it: long wrong "
            "answers are penalised less and prompts of low reward variance weigh more; removing "
            "both gives an unbiased estimator."
        ),
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
        why=(
            "For long chain-of-thought RL at scale: a higher upper clip keeps exploration "
            "(entropy) from collapsing, and a token-level mean stops long sequences from being "
            "under-weighted; the KL term is dropped."
        ),
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
        why=(
            "Token-level importance ratios are noisy and destabilised large (MoE) models; one "
            "length-normalised ratio per sequence matches the sequence-level reward and clips "
            "whole sequences."
        ),
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
        why=(
            "PPO-style clipping zeroes the gradient of rare high-ratio tokens, often the "
            "reflective forks of a reasoning trace; clipping the stop-gradient importance "
            "weight instead keeps every token's gradient."
        ),
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
        why=(
            "A critic-free method without per-prompt statistics: normalising returns over the "
            "whole batch avoids the prompt-level bias and over-fitting of group normalisation, "
            "keeping PPO's clip and a token-level KL penalty."
        ),
    ),
    "dpo": Preset(
        {"data": "preference_pairs", "preference": {"name": "sigmoid", "beta": 0.1}},
        "Rafailov et al. 2023, DPO (arXiv:2305.18290)",
        "beta 0.1 on offline pairs",
        why=(
            "RLHF with a reward model and PPO is complex and unstable; the KL-regularised "
            "reward maximisation has a closed-form optimum, so the reward can be written as the "
            "policy's log-ratio and fitted to preference pairs with a logistic loss."
        ),
    ),
    "online_dpo": Preset(
        {"group_size": 2, "preference": {"name": "sigmoid", "beta": 0.1, "pairing": "best_worst"}},
        "Guo et al. 2024, Direct Language Model Alignment from Online AI Feedback",
        "2 samples per prompt ranked by the task reward, beta 0.1",
        why=(
            "DPO learns from fixed pairs sampled by another policy; sampling the pairs from the "
            "current policy and labelling them online (here by the task reward) removes that "
            "distribution shift."
        ),
    ),
    "ipo": Preset(
        {"data": "preference_pairs", "preference": {"name": "ipo", "beta": 0.1}},
        "Azar et al. 2023, A General Theoretical Paradigm (arXiv:2310.12036)",
        "beta 0.1, sequence log-ratios",
        why=(
            "On deterministic preferences DPO's logistic loss pushes log-ratio gaps to infinity "
            "and the KL regulariser stops acting; a squared loss towards the finite gap 1/(2 "
            "beta) keeps it effective."
        ),
    ),
    "slic": Preset(
        {"data": "preference_pairs", "preference": {"name": "hinge", "beta": 0.1}},
        "Zhao et al. 2023, SLiC-HF (arXiv:2305.10425)",
        "hinge on the beta-scaled log-ratio gap, margin 1, beta 0.1 (TRL hinge)",
        why=(
            "Calibrating sequence likelihoods to preferences with a ranking hinge loss aligns a "
            "model more simply and cheaply than PPO-based RLHF."
        ),
    ),
    "simpo": Preset(
        {"data": "preference_pairs", "preference": {"name": "simpo", "beta": 2.0, "gamma": 1.0}},
        "Meng et al. 2024, SimPO (arXiv:2405.14734)",
        "reference-free, length-normalised, beta 2.0, margin gamma 1.0",
        why=(
            "DPO's implicit reward (a log-ratio to the reference) is not what generation "
            "optimises (the average log-likelihood); SimPO uses the length-normalised "
            "log-likelihood with a target margin and needs no reference model."
        ),
    ),
    "discopop": Preset(
        {"data": "preference_pairs", "preference": {"name": "discopop", "beta": 0.05, "tau": 0.05}},
        "Chan et al. 2024, Discovering Preference Optimization Algorithms (arXiv:2406.08414)",
        "log-ratio modulated loss, beta 0.05, tau 0.05",
        why=(
            "Instead of hand-designing a preference loss, an LLM proposed and tested "
            "candidates; the best blends the logistic and exponential losses, weighted by the "
            "log-ratio gap."
        ),
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
    """The preset's table entry: spec dict, paper, settings note and why it was proposed."""
    get(name)
    return PRESETS[name]
