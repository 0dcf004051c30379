"""Population mode trains each member as a `Trainer` would train it alone.

* The stacked forward of two weight sets gives each model's own transformers log-probs (on
  CPU, and on CUDA where there is a device).
* Member i's prompts and completions equal a `Trainer`'s for candidate i (same seed, same
  warm start, its own lr, its own number of epochs); its loss and metrics match, and so do its
  weights after each step and its evaluation (up to float rounding: the batched forward sums
  in another order than the prefix-tree forward).
* A member with an unsupported objective is rejected with a ValueError that names it.
* Independently of any trainer: Adam at lr 0 leaves a member's weights exactly as they were,
  while its neighbour trains; a member that diverges stops and the others go on.
* `train_population` writes each member's run folder as `train` writes it for that member
  alone; a step callback's error stops its member only; a policy population mode cannot
  train (LoRA) raises `PopulationUnsupported` before any run folder is written.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from model_helpers import tiny_gpt2

from grape_evo.objective import ObjectiveSpec, presets
from grape_evo.policy import (
    CharTokenizer,
    PolicyConfig,
    Rollout,
    encode_pairs,
    position_ids_from_mask,
)
from grape_evo.tasks import get_task
from grape_evo.training import PopulationUnsupported, Trainer, train, train_population
from grape_evo.training.population import PopulationTrainer, StackedGPT2, stack_rollouts
from grape_evo.training.run import needs_critic

trainer_module = importlib.import_module("grape_evo.training.trainer")
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

BATCH = 16  # 2 prompts x 8 completions
STEPS = 2
METRICS = ("loss", "reward", "kl_to_ref", "grad_norm", "completion_length")  # and their own


def _trainer_run(
    spec: ObjectiveSpec, task: Any, config: Any, policy: Any, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """A Trainer's rollouts, metrics and weights after each of STEPS steps, then its eval."""
    trainer = Trainer(spec, task, config, policy)
    rollouts: list[Rollout] = []
    original = trainer_module.score_rollout

    def spy(policy: Any, task: Any, rollout: Rollout, need_old: bool) -> Any:
        rollouts.append(rollout)
        return original(policy, task, rollout, need_old)

    metrics, weights = [], []
    with monkeypatch.context() as patch:
        patch.setattr(trainer_module, "score_rollout", spy)
        for step in range(STEPS):
            metrics.append(trainer.step(step))
            weights.append({n: p.detach().clone() for n, p in policy.hf_model.named_parameters()})
    return {
        "rollouts": rollouts,
        "metrics": metrics,
        "weights": weights,
        "eval": trainer.evaluate(),
    }


def _population_run(
    specs: list[ObjectiveSpec],
    lrs: list[float],
    task: Any,
    config: Any,
    policy: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, Any]:
    population = PopulationTrainer(specs, task, config, policy, lrs)
    rollouts: list[list[Rollout]] = []
    original = StackedGPT2.sample

    def spy(self: StackedGPT2, *args: Any, **kwargs: Any) -> list[Rollout]:
        out = original(self, *args, **kwargs)
        rollouts.append(out)
        return out

    metrics, weights = [], []
    with monkeypatch.context() as patch:
        patch.setattr(StackedGPT2, "sample", spy)
        for step in range(STEPS):
            metrics.append(population.step(step))
            weights.append([population.member_state(i) for i in range(len(specs))])
    return {
        "rollouts": rollouts,
        "metrics": metrics,
        "weights": weights,
        "eval": population.evaluate(),
    }


@pytest.mark.parametrize(
    ("members", "lrs", "temperature"),
    [
        (lambda: [presets.get("grpo"), presets.get("dr_grpo")], [1e-3, 3e-4], 1.0),
        # Two updates per batch for one member (old log-probs from a no-grad forward; the other
        # member sits out the second update), and the same at another sampling temperature.
        (lambda: [_with("grpo", epochs=2), presets.get("cispo")], [1e-3, 3e-4], 1.0),
        (lambda: [presets.get("grpo"), _with("dapo", epochs=3)], [3e-4, 1e-3], 0.7),
        # Members with different group sizes (so different prompts) and as many rows.
        (
            lambda: [presets.get("rloo"), presets.get("grpo"), _with("reinforce_pp", group_size=2)],
            [1e-3, 1e-3, 3e-4],
            1.0,
        ),
        # PPO: a critic (its own value head and value loss), 4 epochs, group size 1.
        (lambda: [presets.get("ppo"), presets.get("grpo")], [1e-4, 1e-3], 1.0),
        # Online preference losses (pairs inside each group) beside an RL member.
        (
            lambda: [
                _with("online_dpo", group_size=8),
                presets.get("grpo"),
                _with(
                    "online_dpo",
                    group_size=8,
                    epochs=2,
                    preference={"name": "ipo", "pairing": "all_pairs"},
                ),
            ],
            [1e-3, 1e-3, 3e-4],
            1.0,
        ),
    ],
    ids=[
        "one-update",
        "epochs-2",
        "epochs-3-temperature-0.7",
        "group-sizes",
        "critic",
        "online-preference",
    ],
)
def test_members_match_their_own_trainers(
    warm_policy: Callable[..., Any],
    tiny: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    members: Callable[[], list[ObjectiveSpec]],
    lrs: list[float],
    temperature: float,
) -> None:
    task = get_task("addition")
    config = tiny(batch_size=BATCH, seed=3, temperature=temperature)
    specs = members()
    critic = [needs_critic(spec) for spec in specs]
    policy = warm_policy(task, value_head=any(critic))
    population = _population_run(specs, lrs, task, config, policy, monkeypatch)
    for i, (spec, lr) in enumerate(zip(specs, lrs, strict=True)):
        own_policy = warm_policy(task, value_head=critic[i])
        alone = _trainer_run(spec, task, replace(config, lr=lr), own_policy, monkeypatch)
        for step in range(STEPS):
            ours, theirs = population["rollouts"][step][i], alone["rollouts"][step]
            assert ours.prompts == theirs.prompts
            assert ours.texts == theirs.texts
            assert torch.equal(ours.completion_ids, theirs.completion_ids)
            assert torch.equal(ours.completion_mask, theirs.completion_mask)
            torch.testing.assert_close(ours.sample_logp, theirs.sample_logp, atol=1e-5, rtol=0)
            member = population["metrics"][step][i]
            assert member is not None
            assert set(METRICS) <= member.keys() == alone["metrics"][step].keys()
            assert member.get("pairs", 1) > 0  # a preference member's update did run
            for key, value in alone["metrics"][step].items():
                assert member[key] == pytest.approx(value, rel=1e-4, abs=1e-6), (i, step, key)
            # Adam's first steps move each weight by about lr * sign(grad): rounding in a
            # near-zero gradient shows up at a small fraction of lr.
            for name, value in alone["weights"][step].items():
                torch.testing.assert_close(
                    population["weights"][step][i][name], value, atol=0.05 * lr, rtol=0
                )
        ours_eval, theirs_eval = population["eval"][i], alone["eval"]
        assert ours_eval is not None
        assert ours_eval.reward == pytest.approx(theirs_eval.reward, abs=1e-9)
        assert ours_eval.accuracy == pytest.approx(theirs_eval.accuracy, abs=1e-9)
        assert ours_eval.kl_to_ref == pytest.approx(theirs_eval.kl_to_ref, rel=1e-4, abs=1e-6)


def _with(name: str, **changes: Any) -> ObjectiveSpec:
    return ObjectiveSpec.from_dict({**presets.describe(name).spec, **changes})


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (lambda: presets.get("trpo"), "trpo"),
        (lambda: presets.get("dpo"), "data 'preference_pairs' differs from member 0's"),
        (lambda: presets.get("sft"), r"data 'demonstrations' \(only on_policy"),
        (lambda: _with("grpo", group_size=3), "group_size 3 gives 6 rows"),
    ],
)
def test_unsupported_member_is_named(
    warm_policy: Callable[..., Any],
    tiny: Callable[..., Any],
    member: Callable[[], ObjectiveSpec],
    message: str,
) -> None:
    task = get_task("addition")
    spec = member()
    with pytest.raises(ValueError, match=rf"member 1 \('{spec.name}'\): .*{message}"):
        PopulationTrainer([presets.get("grpo"), spec], task, tiny(), warm_policy(task))


def test_lr_zero_keeps_the_weights_exactly(
    warm_policy: Callable[..., Any], tiny: Callable[..., Any]
) -> None:
    task = get_task("addition")
    policy = warm_policy(task)
    start = {n: p.detach().clone() for n, p in policy.hf_model.named_parameters()}
    population = PopulationTrainer(
        [presets.get("grpo")] * 2, task, tiny(batch_size=BATCH), policy, lrs=[0.0, 1e-3]
    )
    for step in range(STEPS):
        metrics = population.step(step)
        assert all(m is not None for m in metrics)
    frozen, trained = population.member_state(0), population.member_state(1)
    for name, value in start.items():
        assert torch.equal(frozen[name], value), name
    assert any(not torch.equal(trained[n], v) for n, v in start.items())
    assert all(torch.equal(p, start[n]) for n, p in policy.hf_model.named_parameters())


def test_a_diverged_member_stops_and_the_others_go_on(
    tiny: Callable[..., Any],
    cache_dir: Path,
    tmp_path: Path,
    read_jsonl: Callable[[Path], list[dict[str, Any]]],
) -> None:
    task = get_task("addition")
    config = tiny(batch_size=BATCH, steps=3, max_kl_to_ref=0.5)
    folders = [tmp_path / "steady", tmp_path / "wild"]
    summaries = train_population(
        [presets.get("grpo"), presets.get("cispo")],
        task,
        [replace(config, lr=0.0), replace(config, lr=1.0)],
        PolicyConfig(),
        out_dirs=folders,
        progress=False,
        cache_dir=cache_dir,
    )
    steady, wild = summaries
    assert steady["status"] == "ok" and steady["steps"] == 3
    assert steady["final_eval"]["kl_to_ref"] < 1e-4 and steady["kl_to_ref"] < 1e-4
    assert wild["status"] == "diverged" and "max_kl_to_ref" in wild["reason"]
    assert 0 < wild["steps"] < 3 and wild["final_eval"] is None  # as `train` reports it
    for folder, summary in zip(folders, summaries, strict=True):
        assert json.loads((folder / "summary.json").read_text()) == summary
        records = read_jsonl(folder / "metrics.jsonl")
        assert [r["step"] for r in records] == list(range(1, summary["steps"] + 1))
    assert steady["train_config"]["lr"] == 0.0 and wild["train_config"]["lr"] == 1.0


@pytest.mark.parametrize(
    "names",
    [("grpo", "dr_grpo", "ppo"), ("dpo", "ipo", "simpo")],
    ids=["on-policy-with-critic", "offline-pairs"],
)
def test_run_folders_match_train_alone(
    tiny: Callable[..., Any],
    cache_dir: Path,
    tmp_path: Path,
    read_jsonl: Callable[[Path], list[dict[str, Any]]],
    names: tuple[str, ...],
) -> None:
    """Each member's metrics.jsonl and summary are what `train` writes for it alone: GRPO,
    Dr. GRPO and PPO (its critic); DPO, IPO and SimPO on the same offline pairs."""
    task = get_task("addition")
    config = tiny(batch_size=BATCH, steps=STEPS, seed=5)
    specs = [presets.get(name) for name in names]
    configs = [replace(config, lr=lr) for lr in (1e-3, 3e-4, 1e-4)]
    folders = [tmp_path / "population" / spec.name for spec in specs]
    summaries = train_population(
        specs, task, configs, out_dirs=folders, progress=False, cache_dir=cache_dir
    )
    for spec, member_config, folder, ours in zip(specs, configs, folders, summaries, strict=True):
        alone_dir = tmp_path / "alone" / spec.name
        theirs = train(
            spec, task, member_config, out_dir=alone_dir, progress=False, cache_dir=cache_dir
        )
        assert ours["population"] == 3
        for key in ("objective_key", "task", "seed", "train_config", "policy", "status", "steps"):
            assert ours[key] == theirs[key], key
        for key in ("initial_eval", "final_eval"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-6), key
        mine_records = read_jsonl(folder / "metrics.jsonl")
        alone_records = read_jsonl(alone_dir / "metrics.jsonl")
        assert len(mine_records) == len(alone_records) == STEPS
        for mine, alone in zip(mine_records, alone_records, strict=True):
            assert set(mine) == set(alone)
            for key, value in alone.items():
                if key != "seconds" and value is not None:
                    assert mine[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def test_a_callback_error_stops_only_its_member(tiny: Callable[..., Any], cache_dir: Path) -> None:
    task = get_task("addition")
    config = tiny(batch_size=BATCH, steps=3)
    seen: list[tuple[int, int]] = []

    def record(member: int) -> Callable[[int, dict[str, Any]], None]:
        def callback(step: int, _record: dict[str, Any]) -> None:
            seen.append((member, step))
            if member == 0 and step == 1:
                raise RuntimeError("pruned here")

        return callback

    stopped, going = train_population(
        [presets.get("grpo")] * 2,
        task,
        [config, config],
        progress=False,
        cache_dir=cache_dir,
        step_callbacks=[record(0), record(1)],
    )
    assert stopped["status"] == "stopped" and stopped["reason"] == "RuntimeError: pruned here"
    assert stopped["steps"] == 1 and stopped["final_eval"] is not None
    assert stopped["kl_to_ref"] is None  # as `train` reports a stopped run
    assert going["status"] == "ok" and going["steps"] == 3
    assert sorted(seen) == [(0, 1), (1, 1), (1, 2), (1, 3)]


def test_unsupported_policy_writes_nothing(
    tiny: Callable[..., Any], cache_dir: Path, tmp_path: Path
) -> None:
    task = get_task("addition")
    with pytest.raises(PopulationUnsupported, match="LoRA"):
        train_population(
            [presets.get("grpo")] * 2,
            task,
            [tiny(batch_size=BATCH)] * 2,
            PolicyConfig(lora_rank=2),
            out_dirs=[tmp_path / "a", tmp_path / "b"],
            progress=False,
            cache_dir=cache_dir,
        )
    assert not (tmp_path / "a" / "summary.json").exists()


@pytest.mark.parametrize(
    ("device", "atol"), [("cpu", 1e-5), pytest.param("cuda", 1e-4, marks=CUDA)]
)
def test_stacked_forward_equals_each_models_own_forward(device: str, atol: float) -> None:
    """`StackedGPT2.logprobs` over two weight sets, each on its own rows: log_softmax of each
    transformers model's own logits at its completion tokens, and each member's value head on
    the final hidden states. The members' prompts differ in
    number and length and their completions in length (stacked as `stack_rollouts` does)."""
    tok = CharTokenizer()
    models = [tiny_gpt2(seed).to(device) for seed in (0, 1)]
    member_pairs = [
        [("12+34=", "46"), ("12+34=", "4"), ("7+8=", "15"), ("100+250=", "350")],
        [("1+2=", "3"), ("1+2=", ""), ("1+2=", "3"), ("5+5=", "10")],
    ]
    rollouts = [
        encode_pairs(tok, [p for p, _ in pairs], [c for _, c in pairs], device=device)
        for pairs in member_pairs
    ]
    assert rollouts[0].prompt_ids.shape[1] != rollouts[1].prompt_ids.shape[1]
    weights = {
        name: torch.stack([dict(lm.named_parameters())[name].detach() for lm in models])
        for name, _ in models[0].named_parameters()
    }
    prompts, ids, mask = stack_rollouts(rollouts, tok.pad_id)
    value_heads = [torch.nn.Linear(lm.config.n_embd, 1).to(device) for lm in models]
    value_weights = torch.stack([head.weight[0] for head in value_heads]).detach()
    value_biases = torch.stack([head.bias[0] for head in value_heads]).detach()
    with torch.no_grad():
        stacked, _, values = StackedGPT2.of(models[0]).logprobs(
            weights, prompts, ids, mask, (value_weights, value_biases)
        )
        assert values is not None
        for m, (lm, rollout) in enumerate(zip(models, rollouts, strict=True)):
            own, full = rollout.completion_ids, rollout.attention_mask
            t, real = own.shape[1], rollout.completion_mask.bool()
            out = lm(
                input_ids=rollout.input_ids,
                attention_mask=full,
                position_ids=position_ids_from_mask(full),
                output_hidden_states=True,
            )
            want = out.logits[:, -t - 1 : -1].log_softmax(-1).gather(-1, own[..., None])[..., 0]
            torch.testing.assert_close(stacked[m, :, :t][real], want[real], atol=atol, rtol=0)
            assert (stacked[m, :, t:] == 0).all()  # the padding to the longer member's T
            # Value head on the final (normed) hidden state, as `Policy` applies it.
            want_values = value_heads[m](out.hidden_states[-1][:, -t - 1 : -1])[..., 0]
            torch.testing.assert_close(values[m, :, :t][real], want_values[real], atol=atol, rtol=0)
