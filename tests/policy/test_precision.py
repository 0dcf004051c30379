"""bf16 mixed precision: every forward under bfloat16 autocast, outputs in float32."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from grape_evo.policy import Policy, encode_pairs, forward_for, policy_weights, rows_of
from grape_evo.policy.precision import resolve_precision, with_precision

CPU = torch.device("cpu")


@pytest.mark.parametrize("fast_path", [True, False], ids=["stacked", "transformers"])
def test_bf16_scores_and_decodes_close_to_fp32_in_float32(
    fast_path: bool, make_policy: Callable[..., Policy]
) -> None:
    policy = make_policy(value_head=True)
    policy.fast_path = fast_path
    rollout = encode_pairs(policy.tokenizer, ["12+34=", "7+5="], ["46", "12"])
    rows, weights = rows_of([rollout], policy.tokenizer.pad_id), [policy_weights(policy)]
    fp32 = forward_for(policy)
    bf16 = with_precision(fp32, "bf16", CPU)
    assert with_precision(fp32, "fp32", CPU) is fp32
    with torch.no_grad():
        exact, mixed = fp32.score(rows, weights), bf16.score(rows, weights)
        exact_logits = fp32.decoder(rows.prompts, weights).prefill()
        mixed_logits = bf16.decoder(rows.prompts, weights).prefill()
    for a, b in [*zip(exact[:3], mixed[:3], strict=True), (exact_logits, mixed_logits)]:
        assert a is not None and b is not None and b.dtype == torch.float32
        # bfloat16 keeps 8 significant bits: a relative error of ~2^-8 per product
        gap = (a - b).abs().max().item()
        assert 0 < gap < 0.1, gap


def test_resolve_precision() -> None:
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    assert resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16"
    with pytest.raises(ValueError, match=r"unknown 'fp16'; valid choices: \['fp32', 'bf16'"):
        resolve_precision("fp16", CPU)
