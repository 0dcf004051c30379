"""Tiny GPT-2 models, the HF form of the character tokenizer and weight edits shared by tests
(importable: ``tests/`` is on the path, see ``pythonpath`` in pyproject.toml)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from grape_evo.policy import CharTokenizer


def tiny_gpt2(seed: int = 0, activation: str = "gelu_new", **config: object) -> torch.nn.Module:
    """A 2-layer GPT-2 (4 heads, width 32, 64 positions) over the character vocabulary,
    initialised from ``seed``, dropout off (unless ``config`` says otherwise), in eval mode;
    ``config`` overrides other `GPT2Config` fields."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    fields: dict = {
        "vocab_size": CharTokenizer().vocab_size,
        "n_layer": 2,
        "n_head": 4,
        "n_embd": 32,
        "n_positions": 64,
        "activation_function": activation,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
    }
    return GPT2LMHeadModel(GPT2Config(**{**fields, **config})).eval()


def hf_char_tokenizer(**options: Any) -> Any:
    """The character vocabulary as a transformers ``PreTrainedTokenizerFast`` (its special
    tokens named), e.g. to ``save_pretrained`` beside a local checkpoint; ``options`` are
    passed on (``padding_side``, ...)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=CharTokenizer().backend,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        **options,
    )


def perturbed(
    weights: Mapping[str, torch.Tensor], seed: int, scale: float = 0.05
) -> dict[str, torch.Tensor]:
    """Detached copies of ``weights`` plus independent N(0, scale^2) noise (seeded)."""
    gen = torch.Generator().manual_seed(seed)
    return {
        name: (w.detach() + scale * torch.randn(w.shape, generator=gen)).requires_grad_(False)
        for name, w in weights.items()
    }


@torch.no_grad()
def make_eos_likely(weights: Mapping[str, torch.Tensor], eos_id: int, strength: float) -> None:
    """Raise a GPT-2's EOS logit by about ``4 * strength`` at every position, in place.

    ``ln_f.bias[0] += 4`` shifts coordinate 0 of every final hidden state by 4, and
    ``wte[eos, 0] += strength`` (the head is tied to ``wte``) turns that shift into EOS logit
    (other tokens' logits move by ``4 * wte[v, 0]``, about 0.1). A weight edit, not a hook, so the
    stacked fast path still applies and each member of a population can get its own.
    """
    weights["transformer.ln_f.bias"][0] += 4.0
    weights["transformer.wte.weight"][eos_id, 0] += strength
