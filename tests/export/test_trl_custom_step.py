"""One TRL training step of the generated custom GRPOTrainer on a tiny local GPT-2: its loss
equals grape's objective computed independently on the same batch (skipped without TRL)."""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("trl")

from model_helpers import hf_char_tokenizer, tiny_gpt2

from grape_evo.export import ExportSettings, export
from grape_evo.objective import ObjectiveSpec, RolloutBatch, build_objective, presets

# Custom for TRL (rank advantage, k1 KL in the reward, sequence token sums, entropy bonus).
SPEC = {
    "name": "rank_kl_in_reward",
    "group_size": 4,
    "advantage": "rank",
    "surrogate": {"name": "ppo_clip", "clip_low": 0.2, "clip_high": 0.28},
    "kl": {"estimator": "k1", "placement": "reward", "coef": 0.1},
    "aggregation": "seq_mean_token_sum",
    "entropy_coef": 0.01,
}
PROMPTS = ["12+34=", "56+78=", "90+13=", "24+68="]  # equal lengths: no left padding


def reward(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
    return [float(len(c) % 3) + 0.5 * c.count("1") - 0.25 * c.count("+") for c in completions]


def load_module(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location("grape_objective_trainer", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def completion_mask(ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """1 up to and including the first EOS of each row."""
    is_eos = (ids == eos_id).long()
    return ((is_eos.cumsum(-1) - is_eos) == 0).long()


def token_logps(model: torch.nn.Module, ids: torch.Tensor, attention: torch.Tensor, t: int):
    """(log-probs, entropies) [B, t] of the last t tokens."""
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attention).logits[:, -t - 1 : -1].float()
    logp_all = F.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, ids[:, -t:].unsqueeze(-1)).squeeze(-1)
    return logp, -(logp_all.exp() * logp_all).sum(-1)


def one_step(spec: ObjectiveSpec, tmp_path: Path) -> dict[str, Any]:
    """Export ``spec`` (custom), train one step; the recorded batch, loss and models."""
    from datasets import Dataset
    from trl import GRPOConfig

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    result = export(
        spec, "trl", tmp_path, ExportSettings(lr=1e-2, batch_size=8, steps=1, max_new_tokens=6)
    )
    assert result.mapping.status == "custom"
    config = json.loads((tmp_path / "trl_config.json").read_text())["config"]
    module = load_module(tmp_path / "grape_objective_trainer.py")

    reference = tiny_gpt2(seed=0)
    reference.save_pretrained(tmp_path / "reference")
    policy = tiny_gpt2(seed=1)  # differs from the reference: log-ratios are not zero
    policy.config._name_or_path = str(tmp_path / "reference")  # TRL's reference model
    tokenizer = hf_char_tokenizer(padding_side="left")

    class Recording(module.GrapeGRPOTrainer):
        def _compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
            # A state snapshot: TRL patches forward() with a closure over the live model.
            self.weights_before = copy.deepcopy(model.state_dict())
            loss = super()._compute_loss(model, inputs)
            self.recorded = (inputs, float(loss))
            return loss

    args = GRPOConfig(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        bf16=False,
        gradient_checkpointing=False,
        dataloader_num_workers=0,
        seed=0,
        **config,
    )
    trainer = Recording(
        model=policy,
        reward_funcs=reward,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        processing_class=tokenizer,
    )
    with contextlib.redirect_stdout(sys.stderr):
        trainer.train()

    inputs, loss = trainer.recorded
    prompt_ids, completion_ids = inputs["prompt_ids"], inputs["completion_ids"]
    ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    t = completion_ids.shape[1]
    before = tiny_gpt2()
    before.load_state_dict(trainer.weights_before)
    logp, entropy = token_logps(before, ids, attention, t)
    ref_logp, _ = token_logps(reference, ids, attention, t)
    mask = completion_mask(completion_ids, tokenizer.eos_token_id)
    texts = tokenizer.batch_decode(completion_ids * mask, skip_special_tokens=True)
    _, group_ids = torch.unique(prompt_ids, dim=0, return_inverse=True)
    return {
        "loss": loss,
        "logp": logp,
        "entropy": entropy,
        "ref_logp": ref_logp,
        "mask": mask,
        "rewards": torch.tensor(reward([], texts)),
        "group_ids": group_ids,
    }


def test_custom_trainer_step_loss_equals_grape_objective(tmp_path: Path) -> None:
    spec = ObjectiveSpec.from_dict(SPEC)
    got = one_step(spec, tmp_path)
    assert len(set(got["group_ids"].tolist())) == 2  # 8 completions = 2 prompts x 4
    expected, _ = build_objective(spec)(
        RolloutBatch(
            logp=got["logp"],
            old_logp=got["logp"],
            ref_logp=got["ref_logp"],
            mask=got["mask"],
            rewards=got["rewards"],
            group_ids=got["group_ids"],
            entropy=got["entropy"],
        )
    )
    assert abs(got["loss"] - float(expected)) < 1e-5, (got["loss"], float(expected))


def test_custom_trainer_online_dpo_step_is_dpo_on_best_worst_pairs(tmp_path: Path) -> None:
    got = one_step(presets.get("online_dpo"), tmp_path)
    rewards, groups = got["rewards"].tolist(), got["group_ids"].tolist()
    mask = got["mask"].float()
    delta = ((got["logp"] - got["ref_logp"]) * mask).sum(-1)  # sequence log-ratios
    losses = []
    for g in sorted(set(groups)):
        rows = [i for i, x in enumerate(groups) if x == g]
        best = max(rows, key=lambda i: rewards[i])
        worst = min(rows, key=lambda i: rewards[i])
        if rewards[best] > rewards[worst]:  # tied groups give no pair
            losses.append(-F.logsigmoid(0.1 * (delta[best] - delta[worst])))
    assert losses, "the batch must hold a group with two different rewards"
    expected = float(torch.stack(losses).mean())
    assert abs(got["loss"] - expected) < 1e-6, (got["loss"], expected)
