"""Saving a trained policy in Hugging Face format, for use outside grape (``--save-model``)."""

from __future__ import annotations

from pathlib import Path

from grape_evo.policy import Policy

MODEL_DIR = "model"
"""The saved policy's folder inside a run folder: ``OUT/model``."""


def save_trained(policy: Policy, directory: Path) -> Path:
    """Write ``policy``'s causal LM with ``save_pretrained`` and its tokenizer to ``directory``.

    Full fine-tuning: the whole LM (``config.json``, ``model.safetensors``), which
    ``AutoModelForCausalLM.from_pretrained`` and ``grape train --policy DIR`` load. LoRA: the
    adapter only (``adapter_config.json``, ``adapter_model.safetensors``, for
    ``PeftModel.from_pretrained``); its base is the reference, the warm start. The value head
    (a critic used in training only) is not written. Returns ``directory``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    policy.lm.save_pretrained(str(directory))
    policy.tokenizer.save(directory)
    return directory
