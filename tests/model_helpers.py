"""A tiny transformers GPT-2 shared by the forward-pass tests (importable: ``tests/`` is on the
path, see ``pythonpath`` in pyproject.toml)."""

from __future__ import annotations

import torch

from grape_evo.policy import CharTokenizer


def tiny_gpt2(seed: int = 0, activation: str = "gelu_new") -> torch.nn.Module:
    """A 2-layer GPT-2 (4 heads, width 32, 64 positions) over the character vocabulary,
    initialised from ``seed``, dropout off, in eval mode."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=CharTokenizer().vocab_size,
        n_layer=2,
        n_head=4,
        n_embd=32,
        n_positions=64,
        activation_function=activation,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(config).eval()
