"""The trainable policy: a causal LM (+ optional LoRA adapter and value head) and its reference.

Shapes: B sequences, L tokens per sequence (prompt + completion), T completion tokens (the last
T of each sequence), V vocabulary size, H hidden size.

Reference policy (what KL terms are measured against), selected with ``policy.reference()``:

- with LoRA (``lora_rank > 0``): the same network with the adapter disabled (peft
  ``disable_adapter()``), so no second copy of the weights exists. `Policy.freeze_reference`
  folds the current adapter into the base weights and starts a fresh (zero-effect) adapter,
  so "the current policy becomes the reference" holds in both modes.
- without LoRA: a frozen deep copy of the LM taken by `Policy.freeze_reference` (call it once,
  after the warm start). It is not a registered submodule: it is excluded from
  ``parameters()`` / ``state_dict()`` but follows ``.to(device)``; `Policy.save` stores it in
  its own file.

Either way, create the optimizer *after* `freeze_reference` (with LoRA it replaces the
adapter's parameters).
"""

from __future__ import annotations

import copy
import inspect
import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from grape_evo.policy.config import POLICY_PRESETS, PolicyConfig
from grape_evo.policy.device import resolve_device
from grape_evo.policy.tokenizer import TextTokenizer, tokenizer_for

__all__ = [
    "POLICY_PRESETS",
    "Policy",
    "PolicyConfig",
    "build_policy",
    "position_ids_from_mask",
    "resolve_device",
]

_WEIGHTS_FILE = "policy.pt"
_REFERENCE_FILE = "reference.pt"
_CONFIG_FILE = "policy_config.json"
_GPT2_LORA_TARGETS = ["c_attn", "c_proj"]


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids [B, L] = cumsum(mask) - 1 clamped at 0, so left padding does not shift them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Run a block with the torch RNG seeded, restoring the caller's RNG state afterwards."""
    devices: list[int] = []
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        devices = list(range(torch.cuda.device_count()))
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _forward_params(model: nn.Module) -> set[str]:
    return set(inspect.signature(model.forward).parameters)


class Policy(nn.Module):
    """A causal LM policy with optional LoRA adapter and scalar value head.

    Build it with `build_policy`; load a saved one with `Policy.load`.

    Attributes:
        lm: the transformers causal LM, or a peft ``PeftModel`` wrapping it when LoRA is on.
        value_head: ``Linear(H, 1)`` on the final hidden state, or None.
        config: the `PolicyConfig` it was built from.
        tokenizer: the tokenizer whose ids the LM uses.
        fast_path: run scoring and sampling through `stacked_gpt2` whenever it supports the
            active LM (default True); False always uses the transformers forward, which is
            the reference implementation.
    """

    def __init__(
        self,
        lm: nn.Module,
        config: PolicyConfig,
        tokenizer: TextTokenizer,
        value_head: nn.Linear | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.lm = lm
        self.value_head = value_head
        self.config = config
        self.tokenizer = tokenizer
        self.seed = seed
        # Not registered as a submodule: see module docstring.
        object.__setattr__(self, "_reference_lm", None)
        self._use_reference = False
        self._n_folds = 0
        self.fast_path = True
        params = _forward_params(self.hf_model)
        self.cache_kwarg = "cache" if "cache" in params else "past_key_values"
        keep = [k for k in ("logits_to_keep", "num_logits_to_keep") if k in params]
        self.keep_kwarg: str | None = keep[0] if keep else None

    # ------------------------------------------------------------------ properties

    @property
    def hf_model(self) -> nn.Module:
        """The underlying transformers model (unwrapped from peft when LoRA is on)."""
        return self.lm.get_base_model() if self.config.use_lora else self.lm

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    @property
    def has_value_head(self) -> bool:
        return self.value_head is not None

    @property
    def has_reference(self) -> bool:
        """Whether `reference()` is usable (always with LoRA; after `freeze_reference` without)."""
        return self.config.use_lora or self._reference_lm is not None

    @property
    def max_length(self) -> int | None:
        """Maximum total sequence length (prompt + completion) the LM supports, if known."""
        cfg = self.hf_model.config
        for name in ("n_positions", "max_position_embeddings"):
            value = getattr(cfg, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    # ------------------------------------------------------------------ parameters

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimizer should update.

        LoRA: the adapter's parameters plus the value head's. Otherwise: every parameter of the
        LM and the value head (never the frozen reference copy).
        """
        if self.config.use_lora:
            params = [p for p in self.lm.parameters() if p.requires_grad]
            if self.value_head is not None:
                params += list(self.value_head.parameters())
            return params
        return list(self.parameters())

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of (unique, so tied embeddings count once) parameters."""
        params = self.trainable_parameters() if trainable_only else list(self.parameters())
        seen: set[int] = set()
        total = 0
        for p in params:
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
        return total

    def _apply(self, fn: Any, recurse: bool = True) -> Policy:
        super()._apply(fn, recurse)
        if self._reference_lm is not None:
            self._reference_lm._apply(fn, recurse)
        return self

    # ------------------------------------------------------------------ reference

    def freeze_reference(self) -> None:
        """Make the current policy the reference policy (call once, after the warm start).

        Without LoRA: stores a frozen deep copy of the LM. With LoRA: merges the current adapter
        into the base weights and attaches a fresh adapter (LoRA B = 0, so outputs are
        unchanged); the adapter's parameters are new objects, so build optimizers afterwards.
        """
        if self.config.use_lora:
            device = self.device
            base = self.lm.merge_and_unload()
            self._n_folds += 1
            with _seeded(self.seed + 7919 * self._n_folds):
                self.lm = _attach_lora(base.cpu(), self.config).to(device)
        else:
            ref = copy.deepcopy(self.lm)
            ref.eval()
            ref.requires_grad_(False)
            object.__setattr__(self, "_reference_lm", ref)

    def attach_lora(self, rank: int, alpha: float = 16.0) -> None:
        """Freeze the current weights as the base and train a fresh LoRA adapter on top.

        The reference policy is then the adapter-disabled base (no copy of the weights). Build
        optimizers afterwards: the adapter's parameters are new.
        """
        if self.config.use_lora:
            raise RuntimeError("this policy already has a LoRA adapter")
        config = replace(self.config, lora_rank=rank, lora_alpha=alpha)
        device = self.device
        with _seeded(self.seed + 104_729):
            self.lm = _attach_lora(self.lm.cpu(), config).to(device)
        self.config = config
        object.__setattr__(self, "_reference_lm", None)

    def merge_lora(self) -> None:
        """Fold the LoRA adapter into the base weights and drop it: the policy becomes a
        full-weight one (``lora_rank`` 0) with the same outputs, in which only the adapter's
        target matrices changed (by the adapter's low-rank product)."""
        if not self.config.use_lora:
            raise RuntimeError("this policy has no LoRA adapter to merge")
        self.lm = self.lm.merge_and_unload()
        self.config = replace(self.config, lora_rank=0)

    @contextmanager
    def reference(self) -> Iterator[Policy]:
        """Context manager: inside it, every forward of this policy is the reference policy's.

        With LoRA the adapter is disabled (no copy of weights); without LoRA the frozen copy from
        `freeze_reference` is used (RuntimeError if it was never called). Values are None inside.
        Gradients still flow to nothing trainable, but wrap calls in ``torch.no_grad()`` anyway.
        """
        if self._use_reference:  # nested use
            yield self
            return
        if self.config.use_lora:
            with self.lm.disable_adapter():
                self._use_reference = True
                try:
                    yield self
                finally:
                    self._use_reference = False
            return
        if self._reference_lm is None:
            raise RuntimeError(
                "no reference policy: call policy.freeze_reference() once after the warm start "
                "(full fine-tuning keeps a frozen copy of the weights as the reference)"
            )
        self._use_reference = True
        try:
            yield self
        finally:
            self._use_reference = False

    def active_lm(self) -> nn.Module:
        """The LM a forward runs: the frozen reference copy inside `reference()` (full
        fine-tuning), else `lm` (with LoRA, `reference()` disables its adapter)."""
        if self._use_reference and not self.config.use_lora:
            assert self._reference_lm is not None
            return self._reference_lm
        return self.lm

    @property
    def reference_lm(self) -> nn.Module | None:
        """The frozen reference copy (full fine-tuning, after `freeze_reference`), else None."""
        return self._reference_lm

    def trainable_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """`trainable_parameters` by name: the LM's names (relative to `lm`), then
        ``value_head.weight`` and ``value_head.bias``."""
        named = [(n, p) for n, p in self.lm.named_parameters() if p.requires_grad]
        if not self.config.use_lora:
            named = list(self.lm.named_parameters())
        if self.value_head is not None:
            named += [(f"value_head.{n}", p) for n, p in self.value_head.named_parameters()]
        return named

    @staticmethod
    def cache_of(out: Any) -> Any:
        """The KV cache of a model output: field ``cache`` (transformers >= 5.2x) or the older
        ``past_key_values``."""
        try:
            return out["cache"]
        except KeyError:
            return out.past_key_values

    # ------------------------------------------------------------------ persistence

    def save(self, directory: str | Path) -> None:
        """Write weights (``policy.pt``), config JSON, tokenizer and, if any, the frozen
        reference copy (``reference.pt``) to `directory`."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), path / _WEIGHTS_FILE)
        if self._reference_lm is not None:
            torch.save(self._reference_lm.state_dict(), path / _REFERENCE_FILE)
        meta = {"format": 1, "config": self.config.to_dict(), "seed": self.seed}
        (path / _CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        self.tokenizer.save(path)

    @classmethod
    def load(
        cls,
        directory: str | Path,
        config: PolicyConfig | None = None,
        device: str | torch.device | None = "cpu",
    ) -> Policy:
        """Load a policy written by `save`. `config` defaults to the saved one.

        A checkpoint-based config needs its checkpoint directory to still exist (the
        architecture is rebuilt from it before the saved weights are loaded).
        """
        path = Path(directory)
        meta = json.loads((path / _CONFIG_FILE).read_text())
        if config is None:
            config = PolicyConfig.from_dict(meta["config"])
        tokenizer = tokenizer_for(path)
        policy = build_policy(config, tokenizer, seed=int(meta.get("seed", 0)), device="cpu")
        state = torch.load(path / _WEIGHTS_FILE, map_location="cpu", weights_only=True)
        policy.load_state_dict(state)
        ref_file = path / _REFERENCE_FILE
        if ref_file.is_file() and not config.use_lora:
            policy.freeze_reference()
            assert policy._reference_lm is not None
            ref_state = torch.load(ref_file, map_location="cpu", weights_only=True)
            policy._reference_lm.load_state_dict(ref_state)
        return policy.to(_as_device(device))


# ---------------------------------------------------------------------- construction


def _as_device(device: str | torch.device | None) -> torch.device:
    if isinstance(device, torch.device):
        return resolve_device(str(device))
    return resolve_device(device)


def _zero_dropout(config: Any) -> None:
    for name, value in list(vars(config).items()):
        if isinstance(value, float) and ("dropout" in name or "pdrop" in name):
            setattr(config, name, 0.0)


def _attach_lora(lm: nn.Module, config: PolicyConfig) -> nn.Module:
    """Wrap `lm` in a peft LoRA adapter (rank `config.lora_rank`, dropout 0)."""
    from peft import LoraConfig, get_peft_model

    is_gpt2 = getattr(lm.config, "model_type", "") == "gpt2"
    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=0.0,
        target_modules=list(_GPT2_LORA_TARGETS) if is_gpt2 else "all-linear",
        fan_in_fan_out=is_gpt2,  # GPT-2 uses Conv1D layers (weight stored transposed)
        bias="none",
    )
    with warnings.catch_warnings():
        # peft 0.21 calls a transformers 5 API that transformers deprecates; not our concern.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        return get_peft_model(lm, lora)


def _build_gpt2(preset: str, tokenizer: TextTokenizer) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=tokenizer.vocab_size,
        bos_token_id=tokenizer.bos_id,
        eos_token_id=tokenizer.eos_id,
        pad_token_id=tokenizer.pad_id,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        summary_first_dropout=0.0,
        # GPT-2's tanh-approximated GELU as one fused kernel (``gelu_new`` computes the same
        # function in several small ops; this was 22% of a CPU training step).
        activation_function="gelu_pytorch_tanh",
        **POLICY_PRESETS[preset],
    )
    return GPT2LMHeadModel(cfg)


def _load_checkpoint(checkpoint: str, tokenizer: TextTokenizer) -> nn.Module:
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_config = AutoConfig.from_pretrained(checkpoint, local_files_only=True)
    _zero_dropout(hf_config)
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    dtype_kw = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    lm = AutoModelForCausalLM.from_pretrained(
        checkpoint, config=hf_config, local_files_only=True, **{dtype_kw: torch.float32}
    )
    if lm.get_input_embeddings().weight.shape[0] < tokenizer.vocab_size:
        lm.resize_token_embeddings(tokenizer.vocab_size)
    if getattr(lm.config, "pad_token_id", None) is None:
        lm.config.pad_token_id = tokenizer.pad_id
    for module in lm.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return lm


def build_policy(
    config: PolicyConfig,
    tokenizer: TextTokenizer | None,
    seed: int,
    device: str | torch.device | None = "cpu",
) -> Policy:
    """Build a policy deterministically from `seed` (same seed -> same weights on any device).

    Weights are initialised on CPU under a locally seeded RNG (the caller's RNG state is
    restored), then moved to `device`. A preset builds a GPT-2 from a config with the
    tokenizer's vocabulary and special ids and all dropouts 0; a checkpoint is loaded with
    ``local_files_only=True`` in float32 with dropouts zeroed. `tokenizer` None means the
    tokenizer that goes with the config (`tokenizer_for(config.checkpoint)`).
    """
    if tokenizer is None:
        tokenizer = tokenizer_for(config.checkpoint)
    target = _as_device(device)
    with _seeded(seed):
        if config.checkpoint is not None:
            lm = _load_checkpoint(config.checkpoint, tokenizer)
        else:
            lm = _build_gpt2(config.preset, tokenizer)
        hidden = getattr(lm.config, "hidden_size", None)
        if not isinstance(hidden, int):
            hidden = int(lm.get_input_embeddings().weight.shape[1])
        if config.use_lora:
            lm = _attach_lora(lm, config)
        value_head = nn.Linear(hidden, 1) if config.value_head else None
    policy = Policy(lm, config, tokenizer, value_head=value_head, seed=seed)
    return policy.to(target)
