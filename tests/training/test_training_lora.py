"""LoRA runs start from a LoRA warm start: an SFT adapter merged into the frozen built weights
(a checkpoint is never overwritten by full-parameter SFT), cached apart from full warm starts;
the RL run trains a fresh adapter on top and its reference is the merged warm start."""

from __future__ import annotations

from pathlib import Path

import torch

from grape_evo.objective import presets
from grape_evo.policy import PolicyConfig, build_policy, encode_pairs, score
from grape_evo.tasks import get_task
from grape_evo.training import TrainConfig, train, warm_start_policy
from grape_evo.training.warm_start import warm_start_key

TINY = TrainConfig(steps=2, batch_size=8, eval_prompts=8, eval_every=2, warm_start_steps=5)
CPU = torch.device("cpu")
RANK = 4


def _lora_targeted(name: str) -> bool:
    """GPT-2's LoRA targets: the attention's c_attn and c_proj and the MLP's c_proj, weights
    only (bias "none")."""
    return name.endswith((".c_attn.weight", ".c_proj.weight"))


def test_lora_warm_start_trains_an_adapter_on_the_frozen_base(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    task = get_task("addition")
    built = build_policy(PolicyConfig(), None, seed=TINY.seed).state_dict()  # untrained
    lora, folder = warm_start_policy(task, PolicyConfig(lora_rank=RANK), TINY, CPU, tmp_path)
    assert folder is not None
    cached = torch.load(folder / "policy.pt", weights_only=True)
    assert cached.keys() == built.keys()  # full weights, the adapter merged in
    targeted = {k for k in built if _lora_targeted(k)}
    assert len(targeted) == 3 * 2  # tiny: 2 layers x (c_attn, attn c_proj, mlp c_proj)
    # Embeddings, layer norms, biases, the MLP's c_fc: bit for bit the built policy's.
    for name in built.keys() - targeted:
        assert torch.equal(cached[name], built[name]), name
    # Each targeted matrix moved by the adapter's product B @ A: a change of rank <= RANK.
    for name in targeted:
        singular = torch.linalg.svdvals(cached[name] - built[name])
        assert singular[0] > 0, name
        assert singular[RANK] <= 1e-4 * singular[0], (name, singular[: RANK + 2])
    # The RL policy trains a fresh adapter only; before any step it is its reference, and the
    # reference is the merged warm start.
    assert lora.config.lora_rank == RANK
    assert all("lora_" in n for n, p in lora.lm.named_parameters() if p.requires_grad)
    merged = build_policy(PolicyConfig(), None, seed=TINY.seed)
    merged.load_state_dict(cached)
    rollout = encode_pairs(lora.tokenizer, ["12+34=", "7+5="], ["46", "12"])
    with torch.no_grad():
        expected = score(merged, rollout).logp
        torch.testing.assert_close(score(lora, rollout, reference=True).logp, expected)
        torch.testing.assert_close(score(lora, rollout).logp, expected)


def test_full_and_lora_warm_starts_never_share_a_cache(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    task = get_task("addition")
    keys = {
        warm_start_key(task, PolicyConfig(lora_rank=rank, lora_alpha=alpha), TINY)
        for rank, alpha in [(0, 16.0), (RANK, 16.0), (RANK, 8.0), (2, 16.0)]
    }
    assert len(keys) == 4
    # A value head is not part of the warm start: it shares the cache.
    same = warm_start_key(task, PolicyConfig(lora_rank=RANK, value_head=True), TINY)
    assert same == warm_start_key(task, PolicyConfig(lora_rank=RANK), TINY)
    full, full_dir = warm_start_policy(task, PolicyConfig(), TINY, CPU, tmp_path)
    _, lora_dir = warm_start_policy(task, PolicyConfig(lora_rank=RANK), TINY, CPU, tmp_path)
    assert full_dir != lora_dir
    assert sorted(p.name for p in (tmp_path / "warm_start").iterdir()) == sorted(
        [full_dir.name, lora_dir.name]
    )
    # Full SFT moves the embeddings; the LoRA warm start leaves them as built.
    built = build_policy(PolicyConfig(), None, seed=TINY.seed).state_dict()
    lora_cached = torch.load(lora_dir / "policy.pt", weights_only=True)
    wte = "lm.transformer.wte.weight"
    assert not torch.equal(full.state_dict()[wte], built[wte])
    assert torch.equal(lora_cached[wte], built[wte])


def test_lora_run_trains_from_the_lora_warm_start(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    task = get_task("addition")
    summary = train(
        presets.get("grpo"),
        task,
        TINY,
        PolicyConfig(lora_rank=RANK),
        tmp_path / "run",
        progress=False,
        cache_dir=tmp_path / "cache",
    )
    assert summary.status == "ok" and summary.steps == TINY.steps
    key = warm_start_key(task, PolicyConfig(lora_rank=RANK), TINY)
    assert summary.warm_start_cache == str(tmp_path / "cache" / "warm_start" / key)
    assert summary.policy["lora_rank"] == RANK
    assert summary.final_eval is not None and summary.kl_to_ref is not None
