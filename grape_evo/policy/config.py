"""Policy presets and the frozen `PolicyConfig` value."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import Any

# GPT-2 style architectures built from a transformers config (no downloads).
# With the 91-token character vocabulary: tiny ~ 115K parameters, small ~ 4.8M.
POLICY_PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"n_layer": 2, "n_head": 4, "n_embd": 64, "n_positions": 128},
    "small": {"n_layer": 6, "n_head": 8, "n_embd": 256, "n_positions": 256},
}


@dataclass(frozen=True)
class PolicyConfig:
    """What policy to build.

    Attributes:
        preset: a key of `POLICY_PRESETS`; ignored when `checkpoint` is given.
        checkpoint: path of a local HF causal-LM checkpoint directory (never downloaded).
        lora_rank: 0 = train all weights; > 0 = train a LoRA adapter of this rank only
            (plus the value head), and the reference policy is the adapter-disabled model.
        lora_alpha: LoRA scaling numerator (scale = alpha / rank).
        value_head: add a scalar value head ``Linear(hidden, 1)`` on the last hidden state.
    """

    preset: str = "tiny"
    checkpoint: str | None = None
    lora_rank: int = 0
    lora_alpha: float = 16.0
    value_head: bool = False

    def __post_init__(self) -> None:
        if self.checkpoint is None and self.preset not in POLICY_PRESETS:
            raise ValueError(
                f"policy.preset: unknown preset {self.preset!r}; "
                f"valid choices: {sorted(POLICY_PRESETS)}"
            )
        if not isinstance(self.lora_rank, int) or self.lora_rank < 0:
            raise ValueError(f"policy.lora_rank must be an integer >= 0, got {self.lora_rank!r}")
        if not self.lora_alpha > 0:
            raise ValueError(f"policy.lora_alpha must be > 0, got {self.lora_alpha!r}")
        if self.checkpoint is not None:
            object.__setattr__(self, "checkpoint", str(self.checkpoint))
        object.__setattr__(self, "lora_alpha", float(self.lora_alpha))
        object.__setattr__(self, "value_head", bool(self.value_head))

    @property
    def use_lora(self) -> bool:
        return self.lora_rank > 0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict; `PolicyConfig.from_dict(c.to_dict()) == c`."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PolicyConfig:
        """Build from a dict, rejecting unknown keys with the list of valid ones."""
        valid = {f.name for f in fields(cls)}
        unknown = set(data) - valid
        if unknown:
            raise ValueError(f"policy: unknown keys {sorted(unknown)}; valid keys: {sorted(valid)}")
        return cls(**data)

    def key(self) -> str:
        """Stable sha256 hex digest of the config's canonical JSON (sorted keys), for caching."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()
