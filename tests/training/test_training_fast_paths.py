"""The trainer's fast paths compute what the straightforward paths compute.

* One update per batch (epochs 1, minibatches 1, temperature 1): the trainer skips the
  separate old-policy forward and uses the training forward's log-probs, detached, as
  ``old_logp``. Loss and gradient must equal those with ``old_logp`` from a separate no-grad
  forward of the same (not yet updated) policy.
* Without the old forward, the KL-to-reference guard uses the sampler's ``sample_logp``: it must
  match a fresh forward's log-probs, so the reported ``kl_to_ref`` is the same.
* When the fast path does not apply (several epochs), ``old_logp`` comes from the scoring
  forward and stays fixed across the epochs.
* Two trainers with the same seed sample the same completions and compute the same losses.
* The lean GPT-2 forward (`Policy.fast_lm`, used for sampling and scoring) gives the same
  samples, loss, gradient and metrics in a GRPO step as the transformers forward.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import pytest
import torch

from grape_evo.objective import ObjectiveSpec, RolloutBatch, presets
from grape_evo.policy import completion_logprobs
from grape_evo.tasks import get_task
from grape_evo.training import Trainer
from grape_evo.training.trainer import sequence_kl_to_ref

trainer_module = importlib.import_module("grape_evo.training.trainer")

BATCH = 16  # 2 prompts x 8 completions


def _spy_scoring(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Record every ``score_rollout`` call of the trainer (its result and ``need_old``)."""
    calls: list[dict[str, Any]] = []
    original = trainer_module.score_rollout

    def spy(policy: Any, task: Any, rollout: Any, need_old: bool) -> Any:
        scored = original(policy, task, rollout, need_old)
        calls.append({"scored": scored, "need_old": need_old})
        return scored

    monkeypatch.setattr(trainer_module, "score_rollout", spy)
    return calls


def _grads(loss: torch.Tensor, params: list[torch.nn.Parameter], retain: bool) -> list:
    return list(torch.autograd.grad(loss, params, retain_graph=retain, allow_unused=True))


def _assert_same_grads(a: list, b: list) -> None:
    assert len(a) == len(b)
    for ga, gb in zip(a, b, strict=True):
        if ga is None or gb is None:
            assert ga is None and gb is None
        else:
            torch.testing.assert_close(ga, gb, atol=1e-7, rtol=1e-5)


def test_single_update_uses_the_training_forward_as_old_logp(
    warm_policy: Callable[..., Any], tiny: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    task = get_task("addition")
    policy = warm_policy(task)
    trainer = Trainer(presets.get("grpo"), task, tiny(batch_size=BATCH), policy)
    scoring = _spy_scoring(monkeypatch)
    params = [p for p in policy.trainable_parameters() if p.requires_grad]
    seen: dict[str, Any] = {}

    def hook(batch: RolloutBatch, loss: torch.Tensor) -> None:
        # Called before the update: the policy is still the one that sampled the batch.
        rollout = scoring[-1]["scored"].rollout
        seen["fast_loss"] = loss.detach().clone()
        seen["fast_grads"] = _grads(loss, params, retain=True)  # the trainer backprops next
        seen["old_is_detached_new"] = (
            not batch.old_logp.requires_grad
            and batch.logp.requires_grad
            and torch.equal(batch.old_logp, batch.logp.detach())
        )
        # The straightforward path: old log-probs from their own no-grad forward.
        with torch.no_grad():
            old = completion_logprobs(policy, rollout).logp
        out = completion_logprobs(policy, rollout)
        slow = batch.with_(logp=out.logp, old_logp=old, entropy=out.entropy)
        slow_loss, _ = trainer.objective(slow)
        seen["old_separate"] = old
        seen["old_fast"] = batch.old_logp.detach().clone()
        seen["slow_loss"] = slow_loss.detach().clone()
        seen["slow_grads"] = _grads(slow_loss, params, retain=False)

    trainer.loss_hook = hook
    for step in range(2):  # the second step starts from an updated policy and Adam state
        trainer.step(step)
        assert scoring[-1]["need_old"] is False, "the fast path should skip the old forward"
        assert seen["old_is_detached_new"]
        torch.testing.assert_close(seen["old_fast"], seen["old_separate"], atol=1e-6, rtol=0)
        torch.testing.assert_close(seen["fast_loss"], seen["slow_loss"], atol=1e-7, rtol=1e-6)
        _assert_same_grads(seen["fast_grads"], seen["slow_grads"])
        assert any(g is not None and g.abs().sum() > 0 for g in seen["fast_grads"])


def test_kl_guard_on_sample_logp_matches_a_fresh_forward(
    warm_policy: Callable[..., Any], tiny: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    task = get_task("addition")
    policy = warm_policy(task)
    trainer = Trainer(presets.get("grpo"), task, tiny(batch_size=BATCH), policy)
    scoring = _spy_scoring(monkeypatch)
    seen: dict[str, Any] = {}

    def hook(batch: RolloutBatch, loss: torch.Tensor) -> None:
        scored = scoring[-1]["scored"]
        rollout = scored.rollout
        with torch.no_grad():
            fresh = completion_logprobs(policy, rollout).logp
        seen["sample_logp"] = rollout.sample_logp
        seen["scored_old"] = scored.old_logp
        seen["fresh"] = fresh
        seen["kl_fresh"] = float(sequence_kl_to_ref(policy, rollout).mean())

    trainer.loss_hook = hook
    for step in range(2):
        metrics = trainer.step(step)
        assert seen["scored_old"] is seen["sample_logp"]  # no old forward was run
        torch.testing.assert_close(seen["sample_logp"], seen["fresh"], atol=1e-5, rtol=0)
        assert metrics["kl_to_ref"] == pytest.approx(seen["kl_fresh"], rel=1e-4, abs=1e-5)


def test_several_epochs_keep_the_scored_old_logp(
    warm_policy: Callable[..., Any], tiny: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    task = get_task("addition")
    policy = warm_policy(task)
    spec = ObjectiveSpec.from_dict({**presets.describe("grpo").spec, "epochs": 2})
    trainer = Trainer(spec, task, tiny(batch_size=BATCH), policy)
    scoring = _spy_scoring(monkeypatch)
    batches: list[RolloutBatch] = []
    trainer.loss_hook = lambda batch, loss: batches.append(batch)
    trainer.step(0)
    assert scoring[-1]["need_old"] is True
    old = scoring[-1]["scored"].old_logp
    assert len(batches) == 2
    for batch in batches:
        assert batch.old_logp is old
    # Epoch 1 runs the sampling policy (ratio 1); epoch 2 runs the updated one.
    torch.testing.assert_close(batches[0].logp.detach(), old, atol=1e-6, rtol=0)
    assert not torch.allclose(batches[1].logp.detach(), old, atol=1e-6, rtol=0)


def _record_run(trainer: Trainer, monkeypatch: pytest.MonkeyPatch, steps: int) -> dict:
    scoring = _spy_scoring(monkeypatch)
    losses: list[torch.Tensor] = []
    trainer.loss_hook = lambda batch, loss: losses.append(loss.detach().clone())
    metrics = [trainer.step(step) for step in range(steps)]
    return {
        "completions": [c["scored"].rollout.completion_ids for c in scoring],
        "texts": [c["scored"].rollout.texts for c in scoring],
        "sample_logp": [c["scored"].rollout.sample_logp for c in scoring],
        "losses": losses,
        "metrics": metrics,
    }


def test_same_seed_same_samples_and_losses(
    warm_policy: Callable[..., Any], tiny: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    task = get_task("addition")
    config = tiny(batch_size=BATCH, seed=3)
    runs = []
    for _ in range(2):
        trainer = Trainer(presets.get("grpo"), task, config, warm_policy(task))
        with monkeypatch.context() as patch:
            runs.append(_record_run(trainer, patch, steps=3))
    a, b = runs
    assert a["texts"] == b["texts"]
    assert a["metrics"] == b["metrics"]
    for key in ("completions", "sample_logp", "losses"):
        assert len(a[key]) == len(b[key]) == 3
        for x, y in zip(a[key], b[key], strict=True):
            assert torch.equal(x, y), key


def _first_step(trainer: Trainer, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """One step's rollout, reference log-probs, loss, gradient (before the update), metrics."""
    params = [p for p in trainer.policy.trainable_parameters() if p.requires_grad]
    seen: dict[str, Any] = {}

    def hook(batch: RolloutBatch, loss: torch.Tensor) -> None:
        seen["loss"] = loss.detach().clone()
        seen["grads"] = _grads(loss, params, retain=True)  # the trainer backprops next
        seen["ref_logp"] = batch.ref_logp.clone()

    trainer.loss_hook = hook
    with monkeypatch.context() as patch:
        scoring = _spy_scoring(patch)
        seen["metrics"] = trainer.step(0)
    seen["rollout"] = scoring[-1]["scored"].rollout
    return seen


def test_fast_gpt2_path_matches_transformers_path(
    warm_policy: Callable[..., Any], tiny: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    task = get_task("addition")
    config = tiny(batch_size=BATCH, seed=5)
    runs = []
    for fast in (True, False):
        policy = warm_policy(task)
        policy.fast_path = fast
        assert (policy.fast_lm() is not None) == fast
        trainer = Trainer(presets.get("grpo"), task, config, policy)
        runs.append(_first_step(trainer, monkeypatch))
    fast, slow = runs
    assert torch.equal(fast["rollout"].completion_ids, slow["rollout"].completion_ids)
    torch.testing.assert_close(
        fast["rollout"].sample_logp, slow["rollout"].sample_logp, atol=1e-5, rtol=0
    )
    torch.testing.assert_close(fast["ref_logp"], slow["ref_logp"], atol=1e-5, rtol=0)
    torch.testing.assert_close(fast["loss"], slow["loss"], atol=1e-6, rtol=1e-5)
    for a, b in zip(fast["grads"], slow["grads"], strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    assert fast["metrics"].keys() == slow["metrics"].keys()
    for key, value in fast["metrics"].items():
        assert value == pytest.approx(slow["metrics"][key], rel=1e-4, abs=1e-5), key
