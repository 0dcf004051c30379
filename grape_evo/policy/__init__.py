"""Policies: character tokenizer, causal-LM policy (LoRA, value head, reference), sampling.

Public API::

    tok = CharTokenizer()
    policy = build_policy(PolicyConfig(preset="tiny"), tok, seed=0, device=resolve_device("auto"))
    policy.freeze_reference()
    rollout = sample(policy, tok, prompts, group_size=8, max_new_tokens=16, generator=g)
    out = completion_logprobs(policy, rollout)                  # logp/entropy/values [B, T]
    with torch.no_grad():
        ref = completion_logprobs(policy, rollout, reference=True)
"""

from grape_evo.policy.config import POLICY_PRESETS, PolicyConfig
from grape_evo.policy.device import resolve_device
from grape_evo.policy.model import LogProbOutput, Policy, build_policy, position_ids_from_mask
from grape_evo.policy.sampling import Rollout, completion_logprobs, encode_pairs, sample
from grape_evo.policy.tokenizer import (
    ALPHABET,
    CharTokenizer,
    HFTokenizer,
    TextTokenizer,
    tokenizer_for,
)

__all__ = [
    "ALPHABET",
    "POLICY_PRESETS",
    "CharTokenizer",
    "HFTokenizer",
    "LogProbOutput",
    "Policy",
    "PolicyConfig",
    "Rollout",
    "TextTokenizer",
    "build_policy",
    "completion_logprobs",
    "encode_pairs",
    "position_ids_from_mask",
    "resolve_device",
    "sample",
    "tokenizer_for",
]
