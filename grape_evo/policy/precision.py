"""Training precision: float32, or bfloat16 mixed precision (autocast) around every forward.

``bf16`` runs every forward of a `Forward` (scoring and decoding, the policy's and the
reference's) under ``torch.autocast(device, torch.bfloat16)``: matrix products and attention
in bfloat16, while the parameters, their gradients, the Adam state and the loss stay float32
(so saved weights are float32 and updates smaller than bfloat16's resolution still count).
Outputs are float32 as the protocol promises: log-probs and entropies come from float32
log-softmaxes of the logits, values are cast back. It works on CPU and CUDA alike; on CPU
bfloat16 is a check of numerics more than a speed-up.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

import torch
from torch import Tensor

from grape_evo.policy.forward import (
    Decoder,
    Forward,
    MemberPrompts,
    MemberRows,
    TokenOutputs,
    Weights,
)

PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
"""Training precisions; ``auto`` resolves to one of them (`resolve_precision`)."""


def resolve_precision(name: str, device: torch.device) -> str:
    """``fp32`` or ``bf16`` as given; ``auto`` is bf16 on CUDA and fp32 elsewhere. Raises
    ValueError naming the valid choices for anything else."""
    if name == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if name not in PRECISIONS:
        raise ValueError(f"precision: unknown {name!r}; valid choices: {[*PRECISIONS, 'auto']}")
    return name


class _AutocastDecoder:
    """A decoder whose steps run under ``autocast``; next-token logits stay float32."""

    def __init__(
        self, inner: Decoder, autocast: Callable[[], AbstractContextManager[None]]
    ) -> None:
        self.inner, self.autocast = inner, autocast

    def prefill(self) -> Tensor:
        with self.autocast():
            return self.inner.prefill().float()

    def step(self, tokens: Tensor, active: Tensor) -> Tensor:
        with self.autocast():
            return self.inner.step(tokens, active).float()


class AutocastForward:
    """``inner`` with every score and decoding step under bfloat16 autocast on ``device``."""

    def __init__(self, inner: Forward, device: torch.device) -> None:
        self.inner, self.device_type = inner, device.type

    def _autocast(self) -> AbstractContextManager[None]:
        return torch.autocast(self.device_type, dtype=torch.bfloat16)

    def score(
        self,
        rows: MemberRows,
        weights: Sequence[Weights] | None,
        full: bool = False,
        temperature: float = 1.0,
    ) -> TokenOutputs:
        with self._autocast():
            out = self.inner.score(rows, weights, full, temperature)
        return TokenOutputs(*(None if x is None else x.float() for x in out))

    def decoder(self, prompts: MemberPrompts, weights: Sequence[Weights] | None) -> Decoder:
        with self._autocast():
            inner = self.inner.decoder(prompts, weights)
        return _AutocastDecoder(inner, self._autocast)


def with_precision(forward: Forward, precision: str, device: torch.device) -> Forward:
    """``forward`` itself for ``fp32``, wrapped in `AutocastForward` for ``bf16``."""
    if resolve_precision(precision, device) == "fp32":
        return forward
    return AutocastForward(forward, device)
