"""The reference policy: an SFT warm start on the task's demonstrations, cached on disk.

The cache key hashes (task config, policy config, warm-start budget, seed), so every candidate
of a campaign starts from the same place and only the first run pays for it. Writes go to a
temporary folder renamed into place, so concurrent workers never read a half-written cache.
With ``warm_start_steps`` 0 there is nothing to train or cache: the reference is the built
policy (a preset's seeded initialisation, or a checkpoint's weights) as it is.

How it trains follows the RL run's policy config:

* full fine-tuning (``lora_rank`` 0): SFT of every weight;
* LoRA (``lora_rank`` > 0): SFT of a LoRA adapter of the same rank and alpha on the frozen
  built weights (a checkpoint is never overwritten by full-parameter SFT); the cache stores the
  built weights with that adapter merged in, so only the adapter's target matrices differ from
  the built policy's. The RL run then trains a fresh adapter on top of these merged weights,
  which are its frozen reference (the adapter-disabled base).

Either way the cache holds full weights in the same format; the LoRA rank and alpha are part
of the key, so full and LoRA warm starts (or two ranks) never share a cache. The value head is
not: it is not trained here and starts fresh from the seed in the RL run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from grape_evo.objective import presets
from grape_evo.policy import Policy, PolicyConfig, build_policy
from grape_evo.tasks import Task
from grape_evo.training.config import TrainConfig

_DONE = "warm_start.json"


def cache_root() -> Path:
    """``$GRAPE_CACHE`` or ``~/.cache/grape-evo``."""
    return Path(os.environ.get("GRAPE_CACHE", Path.home() / ".cache" / "grape-evo"))


def warm_start_key(task: Task, policy_config: PolicyConfig, config: TrainConfig) -> str:
    """Hash of everything that decides the warm-start weights."""
    blob = {
        "task": task.config(),
        "policy": _warm_config(policy_config).to_dict(),
        "steps": config.warm_start_steps,
        "lr": config.warm_start_lr,
        "batch_size": config.batch_size,
        "seed": config.seed,
        "format": 2,
    }
    text = json.dumps(blob, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _warm_config(policy_config: PolicyConfig) -> PolicyConfig:
    """The policy the warm start trains: the RL run's without a value head (every weight, or
    an adapter of the RL run's rank and alpha with LoRA)."""
    return replace(policy_config, value_head=False)


def _train_sft(policy: Policy, task: Task, config: TrainConfig) -> None:
    """``warm_start_steps`` of SFT on the task's demonstrations: the engine with one member."""
    from grape_evo.training.engine import Engine, Member

    sft = TrainConfig(
        steps=config.warm_start_steps,
        seed=config.seed,
        lr=config.warm_start_lr,
        batch_size=config.batch_size,
        device=config.device,
    )
    engine = Engine([Member(presets.get("sft"), config.warm_start_lr)], task, sft, policy)
    for step in range(config.warm_start_steps):
        engine.step(step)
    engine.export(0, policy)


def warm_start_policy(
    task: Task,
    policy_config: PolicyConfig,
    config: TrainConfig,
    device: torch.device,
    cache_dir: Path | None = None,
) -> tuple[Policy, Path | None]:
    """A policy whose weights and frozen reference are the cached SFT warm start.

    Built (and cached) on first use: full fine-tuning, or with ``lora_rank`` > 0 an SFT
    adapter merged into the built weights (see the module docstring); the value head, when
    the config asks for one, starts fresh from the seed; with ``lora_rank`` > 0 a fresh adapter
    is attached on top of the warm-start weights, which stay the reference. Returns the policy
    and its cache folder, None when ``warm_start_steps`` is 0 (no SFT: the built policy is the
    reference).
    """
    if config.warm_start_steps == 0:
        policy = build_policy(replace(policy_config, lora_rank=0), None, config.seed, device)
        return _with_reference(policy, policy_config), None
    root = cache_root() if cache_dir is None else cache_dir
    folder = root / "warm_start" / warm_start_key(task, policy_config, config)
    base_config = _warm_config(policy_config)
    if not (folder / _DONE).is_file():
        policy = build_policy(base_config, None, seed=config.seed, device=device)
        _train_sft(policy, task, config)
        if policy.config.use_lora:
            policy.merge_lora()
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".warm-", dir=root))
        policy.save(tmp)
        done = {
            "task": task.config(),
            "policy": base_config.to_dict(),
            "steps": config.warm_start_steps,
        }
        (tmp / _DONE).write_text(json.dumps(done, indent=2))
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp, folder)
        except OSError:  # another worker finished first: theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)
    policy = build_policy(replace(policy_config, lora_rank=0), None, seed=config.seed)
    state = torch.load(folder / "policy.pt", map_location="cpu", weights_only=True)
    missing, unexpected = policy.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("value_head") for k in missing):
        raise RuntimeError(f"warm-start cache {folder} does not match the policy config")
    return _with_reference(policy.to(device), policy_config), folder


def _with_reference(policy: Policy, policy_config: PolicyConfig) -> Policy:
    """Make ``policy``'s current weights the reference: a fresh LoRA adapter on top of them
    when ``policy_config`` asks for one, else a frozen copy."""
    if policy_config.use_lora:
        policy.attach_lora(policy_config.lora_rank, policy_config.lora_alpha)
    else:
        policy.freeze_reference()
    return policy
