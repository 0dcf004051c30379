"""Policies: character tokenizer, causal-LM policy (LoRA, value head, reference), and the
forward protocol with a member axis (scoring and lockstep decoding of M weight sets).

Public API::

    tok = CharTokenizer()
    policy = build_policy(PolicyConfig(preset="tiny"), tok, seed=0, device=resolve_device("auto"))
    policy.freeze_reference()
    rollout = sample(policy, prompts, group_size=8, max_new_tokens=16, key=stream_key(0, "s"))
    out = score(policy, rollout)                   # logp / entropy / values [B, T]
    ref = score(policy, rollout, reference=True)
"""

from grape_evo.policy.config import POLICY_PRESETS, PolicyConfig
from grape_evo.policy.device import resolve_device
from grape_evo.policy.forward import (
    Forward,
    MemberPrompts,
    MemberRows,
    TokenOutputs,
    Weights,
    forward_for,
    policy_weights,
)
from grape_evo.policy.model import Policy, build_policy, position_ids_from_mask
from grape_evo.policy.sampling import Rollout, decode, encode_pairs, rows_of, sample, score
from grape_evo.policy.streams import stream_key
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
    "Forward",
    "HFTokenizer",
    "MemberPrompts",
    "MemberRows",
    "Policy",
    "PolicyConfig",
    "Rollout",
    "TextTokenizer",
    "TokenOutputs",
    "Weights",
    "build_policy",
    "decode",
    "encode_pairs",
    "forward_for",
    "policy_weights",
    "position_ids_from_mask",
    "resolve_device",
    "rows_of",
    "sample",
    "score",
    "stream_key",
    "tokenizer_for",
]
