"""The engine's fast paths compute what the straightforward paths compute.

* One update per batch (epochs 1, minibatches 1, temperature 1): the engine skips the separate
  old-policy forward and uses the training forward's log-probs, detached, as ``old_logp``. Loss
  and gradient must equal those with ``old_logp`` from a separate no-grad forward of the same
  (not yet updated) weights.
* Without the old forward, the KL-to-reference guard uses the sampler's ``sample_logp``: it must
  match a fresh forward's log-probs, so the reported ``kl_to_ref`` is the same.
* When the fast path does not apply (several epochs), ``old_logp`` comes from the scoring
  forward and stays fixed across the epochs.
* Two engines with the same seed sample the same completions and compute the same losses.
* The stacked GPT-2 forward (used for sampling and scoring) gives the same samples, loss,
  gradient and metrics in a GRPO step as the transformers forward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from grape_evo.objective import ObjectiveSpec, RolloutBatch, presets
from grape_evo.policy import rows_of
from grape_evo.policy.forward import VALUE_KEYS
from grape_evo.policy.stacked_gpt2 import StackedGPT2
from grape_evo.tasks import get_task
from grape_evo.training import Engine, Member
from grape_evo.training.engine import MemberBatch
from grape_evo.training.losses import sequence_k3

BATCH = 16  # 2 prompts x 8 completions
LR = 1e-3


def _engine(spec: ObjectiveSpec, task: Any, config: Any, policy: Any) -> Engine:
    return Engine([Member(spec, LR)], task, config, policy)


def _spy_batches(monkeypatch: pytest.MonkeyPatch) -> list[MemberBatch]:
    """Record the engine's batch of member 0 at every step (mutated in place as the step
    fixes its old and reference log-probs)."""
    batches: list[MemberBatch] = []
    original = Engine._collect

    def spy(self: Engine, step: int, live: list[int]) -> dict[int, MemberBatch]:
        collected = original(self, step, live)
        batches.append(collected[0])
        return collected

    monkeypatch.setattr(Engine, "_collect", spy)
    return batches


def _score(engine: Engine, batch: MemberBatch, reference: bool = False) -> Any:
    rows = rows_of([batch.rollout], engine.tokenizer.pad_id)
    out = engine.forward.score(rows, None if reference else [engine.weights[0]])
    return type(out)(*(None if x is None else x[0] for x in out))


def _grads(loss: torch.Tensor, engine: Engine, retain: bool) -> list:
    """The gradient of ``loss`` with respect to member 0's weights, per tensor, wherever the
    forward read them: its rows of the engine's weight bank (the stacked forward) or its
    set's own leaves (the transformers forward, a per-member stack)."""
    bank, own = engine.bank, engine.weights[0]
    stacked = [bank.head[n] if n in VALUE_KEYS else bank.lm[n] for n in own]
    found = torch.autograd.grad(
        loss, [*own.values(), *stacked], retain_graph=retain, allow_unused=True
    )
    grads = []
    for k, name in enumerate(own):
        direct, rows = found[k], found[len(own) + k]
        row = None if rows is None else rows[bank.head_row[0] if name in VALUE_KEYS else 0]
        parts = [g for g in (direct, row) if g is not None]
        grads.append(sum(parts[1:], parts[0]) if parts else None)
    return grads


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
    engine = _engine(presets.get("grpo"), task, tiny(batch_size=BATCH), warm_policy(task))
    batches = _spy_batches(monkeypatch)
    seen: dict[str, Any] = {}

    def hook(_member: int, batch: RolloutBatch, loss: torch.Tensor) -> None:
        # Called before the update: the weights are still the ones that sampled the batch.
        seen["fast_loss"] = loss.detach().clone()
        seen["fast_grads"] = _grads(loss, engine, retain=True)  # the trainer backprops next
        seen["old_is_detached_new"] = (
            not batch.old_logp.requires_grad
            and batch.logp.requires_grad
            and torch.equal(batch.old_logp, batch.logp.detach())
        )
        # The straightforward path: old log-probs from their own no-grad forward.
        with torch.no_grad():
            old = _score(engine, batches[-1]).logp
        out = _score(engine, batches[-1])
        slow = batch.with_(logp=out.logp, old_logp=old, entropy=out.entropy)
        slow_loss, _ = engine.objectives[0](slow)
        seen["old_separate"] = old
        seen["old_fast"] = batch.old_logp.detach().clone()
        seen["slow_loss"] = slow_loss.detach().clone()
        seen["slow_grads"] = _grads(slow_loss, engine, retain=False)

    engine.loss_hook = hook
    for step in range(2):  # the second step starts from updated weights and Adam state
        engine.step(step)
        assert batches[-1].old_is_new, "the fast path should skip the old forward"
        assert batches[-1].old_logp is batches[-1].rollout.sample_logp
        assert seen["old_is_detached_new"]
        torch.testing.assert_close(seen["old_fast"], seen["old_separate"], atol=1e-6, rtol=0)
        torch.testing.assert_close(seen["fast_loss"], seen["slow_loss"], atol=1e-7, rtol=1e-6)
        _assert_same_grads(seen["fast_grads"], seen["slow_grads"])
        assert any(g is not None and g.abs().sum() > 0 for g in seen["fast_grads"])


def test_kl_guard_on_sample_logp_matches_a_fresh_forward(
    warm_policy: Callable[..., Any], tiny: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    task = get_task("addition")
    engine = _engine(presets.get("grpo"), task, tiny(batch_size=BATCH), warm_policy(task))
    batches = _spy_batches(monkeypatch)
    seen: dict[str, Any] = {}

    def hook(_member: int, batch: RolloutBatch, loss: torch.Tensor) -> None:
        scored = batches[-1]
        with torch.no_grad():
            fresh = _score(engine, scored).logp
            ref = _score(engine, scored, reference=True).logp
        seen["sample_logp"] = scored.rollout.sample_logp
        seen["scored_old"] = scored.old_logp
        seen["fresh"] = fresh
        seen["kl_fresh"] = float(sequence_k3(fresh, ref, scored.mask).mean())

    engine.loss_hook = hook
    for step in range(2):
        metrics = engine.step(step)[0]
        assert metrics is not None
        assert seen["scored_old"] is seen["sample_logp"]  # no old forward was run
        torch.testing.assert_close(seen["sample_logp"], seen["fresh"], atol=1e-5, rtol=0)
        assert metrics["kl_to_ref"] == pytest.approx(seen["kl_fresh"], rel=1e-4, abs=1e-5)


def test_several_epochs_keep_the_scored_old_logp(
    warm_policy: Callable[..., Any], tiny: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    task = get_task("addition")
    policy = warm_policy(task)
    spec = ObjectiveSpec.from_dict({**presets.describe("grpo").spec, "epochs": 2})
    engine = _engine(spec, task, tiny(batch_size=BATCH), policy)
    scored = _spy_batches(monkeypatch)
    batches: list[RolloutBatch] = []
    engine.loss_hook = lambda _member, batch, loss: batches.append(batch)
    engine.step(0)
    assert not scored[-1].old_is_new
    old = scored[-1].old_logp
    assert old is not scored[-1].rollout.sample_logp
    assert len(batches) == 2
    for batch in batches:
        assert batch.old_logp is old
    # Epoch 1 runs the sampling policy (ratio 1); epoch 2 runs the updated one.
    torch.testing.assert_close(batches[0].logp.detach(), old, atol=1e-6, rtol=0)
    assert not torch.allclose(batches[1].logp.detach(), old, atol=1e-6, rtol=0)


def _record_run(engine: Engine, monkeypatch: pytest.MonkeyPatch, steps: int) -> dict:
    batches = _spy_batches(monkeypatch)
    losses: list[torch.Tensor] = []
    engine.loss_hook = lambda _member, batch, loss: losses.append(loss.detach().clone())
    metrics = [engine.step(step) for step in range(steps)]
    return {
        "completions": [b.rollout.completion_ids for b in batches],
        "texts": [b.rollout.texts for b in batches],
        "sample_logp": [b.rollout.sample_logp for b in batches],
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
        engine = _engine(presets.get("grpo"), task, config, warm_policy(task))
        with monkeypatch.context() as patch:
            runs.append(_record_run(engine, patch, steps=3))
    a, b = runs
    assert a["texts"] == b["texts"]
    assert a["metrics"] == b["metrics"]
    for key in ("completions", "sample_logp", "losses"):
        assert len(a[key]) == len(b[key]) == 3
        for x, y in zip(a[key], b[key], strict=True):
            assert torch.equal(x, y), key


def _first_step(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """One step's rollout, reference log-probs, loss, gradient (before the update), metrics."""
    seen: dict[str, Any] = {}

    def hook(_member: int, batch: RolloutBatch, loss: torch.Tensor) -> None:
        seen["loss"] = loss.detach().clone()
        seen["grads"] = _grads(loss, engine, retain=True)  # the trainer backprops next
        seen["ref_logp"] = batch.ref_logp.clone()

    engine.loss_hook = hook
    with monkeypatch.context() as patch:
        batches = _spy_batches(patch)
        seen["metrics"] = engine.step(0)[0]
    seen["rollout"] = batches[-1].rollout
    return seen


def test_stacked_path_matches_transformers_path(
    warm_policy: Callable[..., Any], tiny: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    task = get_task("addition")
    config = tiny(batch_size=BATCH, seed=5)
    runs = []
    for fast in (True, False):
        policy = warm_policy(task)
        policy.fast_path = fast
        engine = _engine(presets.get("grpo"), task, config, policy)
        assert isinstance(engine.forward, StackedGPT2) == fast
        runs.append(_first_step(engine, monkeypatch))
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
