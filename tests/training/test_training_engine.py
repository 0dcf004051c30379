"""The engine trains each member of a population as it trains that member alone (M = 1).

* Every preset (TRPO and SFT included) in one population of all of them, on the same task and
  policy, against each trained alone for 3 steps: the same rows (prompts, tokens, masks), the
  same metrics, weights and evaluation up to float rounding. Also with several updates per
  batch at another sampling temperature, with minibatches, and on the transformers forward
  (a LoRA policy).
* Independently of any reference run: Adam at lr 0 leaves a member's weights exactly as they
  were while its neighbour trains; a member that diverges stops and the others go on; a step
  hook's stop reason stops its member only (pruning is a value); `train_members` writes each
  member's run folder as `train` writes it for that member alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from grape_evo.objective import ObjectiveSpec, build_objective, presets
from grape_evo.policy import PolicyConfig, rows_of
from grape_evo.tasks import get_task
from grape_evo.training import Engine, Member, train, train_members, warm_start_policy
from grape_evo.training.batches import sample_offline_pairs, train_prompts
from grape_evo.training.engine import MemberBatch
from grape_evo.training.losses import needs_trust_region
from grape_evo.training.run import spec_needs_critic

STEPS = 3
LRS = (1e-3, 3e-4, 1e-4)


def _with(name: str, **changes: Any) -> ObjectiveSpec:
    return ObjectiveSpec.from_dict({**presets.describe(name).spec, "name": name, **changes})


def _run(
    specs: list[ObjectiveSpec],
    lrs: list[float],
    task: Any,
    config: Any,
    policy: Any,
    pairs: Any,
    monkeypatch: pytest.MonkeyPatch,
    seeds: list[int | None] | None = None,
) -> dict[str, Any]:
    """An engine's rows, metrics and member weights after each of STEPS steps, then its
    evaluation."""
    seeds = seeds or [None] * len(specs)
    engine = Engine(
        [Member(s, lr, seed) for s, lr, seed in zip(specs, lrs, seeds, strict=True)],
        task,
        config,
        policy,
        pairs,
    )
    rows: list[dict[int, MemberBatch]] = []
    original = Engine._collect

    def spy(self: Engine, step: int, live: list[int]) -> dict[int, MemberBatch]:
        batches = original(self, step, live)
        rows.append(dict(batches))
        return batches

    metrics, weights = [], []
    with monkeypatch.context() as patch:
        patch.setattr(Engine, "_collect", spy)
        for step in range(STEPS):
            metrics.append(engine.step(step))
            weights.append([engine.member_state(i) for i in range(len(specs))])
    return {"rows": rows, "metrics": metrics, "weights": weights, "eval": engine.evaluate()}


def _compare(
    population: dict[str, Any], alone: dict[str, Any], i: int, lr: float, trust: bool
) -> None:
    """Member i of ``population`` against its run ``alone``. A trust-region member's
    conjugate-gradient solve amplifies float rounding in its old log-probs (which the
    population computes in a batched forward) about a thousandfold: its metrics are compared
    at 1e-2 (its sampling log-probs too) and its weights at 2e-3 (its steps are about 1e-2);
    its evaluation's greedy reward and accuracy must still match."""
    rel, atol = (1e-2, 2e-3) if trust else (1e-5, 0.05 * lr + 1e-6)
    for step in range(STEPS):
        ours, theirs = population["rows"][step][i].rollout, alone["rows"][step][0].rollout
        assert ours.prompts == theirs.prompts, (i, step)
        assert ours.texts == theirs.texts, (i, step)
        assert torch.equal(ours.completion_ids, theirs.completion_ids)
        assert torch.equal(ours.completion_mask, theirs.completion_mask)
        # sampled by weights that may differ by ``atol`` (below): log-probs move about as much
        logp_atol = max(rel, atol)
        torch.testing.assert_close(ours.sample_logp, theirs.sample_logp, atol=logp_atol, rtol=0)
        member, reference = population["metrics"][step][i], alone["metrics"][step][0]
        assert member is not None and reference is not None
        assert member.keys() == reference.keys(), (i, step)
        for key, value in reference.items():
            if step == 0 and key == "pair_accuracy":
                continue  # both log-ratios are rounding noise around 0 before the first update
            assert member[key] == pytest.approx(value, rel=max(rel, 1e-4), abs=1e-5), (i, step, key)
        # Adam's first steps move each weight by about lr * sign(grad): rounding in a
        # near-zero gradient shows up at a small fraction of lr.
        for name, value in alone["weights"][step][0].items():
            torch.testing.assert_close(
                population["weights"][step][i][name],
                value,
                atol=atol,
                rtol=0,
                msg=f"{i} {step} {name}",
            )
    ours_eval, theirs_eval = population["eval"][i], alone["eval"][0]
    assert ours_eval is not None and theirs_eval is not None
    assert ours_eval.reward == pytest.approx(theirs_eval.reward, abs=1e-9)
    assert ours_eval.accuracy == pytest.approx(theirs_eval.accuracy, abs=1e-9)
    if not trust:  # its sampled KL draws other tokens once its weights differ by 1e-4
        assert ours_eval.kl_to_ref == pytest.approx(theirs_eval.kl_to_ref, rel=1e-4, abs=1e-6)


def _population_against_alone(
    specs: list[ObjectiveSpec],
    config: Any,
    policy_config: PolicyConfig,
    cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    lora_rank: int = 0,
) -> None:
    """Each member of ``specs`` in a population against it alone, from the warm start of
    ``policy_config``; ``lora_rank`` > 0 attaches an adapter of that rank on top of it."""
    task = get_task("addition")
    critic = any(spec_needs_critic(s) for s in specs)
    policy, _ = warm_start_policy(
        task, replace(policy_config, value_head=critic), config, torch.device("cpu"), cache_dir
    )
    if lora_rank:
        policy.attach_lora(lora_rank)
    pairs = sample_offline_pairs(policy, task, config)
    lrs = [LRS[i % len(LRS)] for i in range(len(specs))]
    population = _run(specs, lrs, task, config, policy, pairs, monkeypatch)
    for i, (spec, lr) in enumerate(zip(specs, lrs, strict=True)):
        alone = _run([spec], [lr], task, config, policy, pairs, monkeypatch)
        _compare(population, alone, i, lr, needs_trust_region(build_objective(spec)))


def test_every_preset_trains_as_a_member_as_it_trains_alone(
    tiny: Callable[..., Any], cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """All 19 presets in one population: online and offline, RL, preference, SFT, TRPO's
    trust-region step and PPO's critic, group sizes 1 to 8."""
    specs = [presets.get(name) for name in presets.names()]
    config = tiny(batch_size=16, seed=3)
    _population_against_alone(specs, config, PolicyConfig(), cache_dir, monkeypatch)


@pytest.mark.parametrize(
    ("changes", "members"),
    [
        # Several updates per batch (old log-probs from a no-grad forward; members with fewer
        # epochs sit out the later updates) at another sampling temperature.
        (
            {"temperature": 0.7},
            lambda: [_with("grpo", epochs=2), presets.get("cispo"), _with("dapo", epochs=3)],
        ),
        # Minibatches: each member's own permutation of its rows per epoch; PPO's 4 x 4 with
        # its separate critic; RLOO with its KL in the reward (when a minibatch's groups all tie,
        # only the KL is left; a member no longer scores its reference with another LayerNorm
        # formula, whose rounding gap Adam made into a step).
        (
            {},
            lambda: [
                presets.get("ppo"),
                _with("grpo", epochs=2, minibatches=2),
                _with("rloo", minibatches=2),
            ],
        ),
        # Stale rollouts: each member trains on the batch it sampled `staleness` steps earlier.
        (
            {},
            lambda: [
                _with("grpo", staleness=2),
                _with("cispo", staleness=1, epochs=2),
                presets.get("dr_grpo"),
            ],
        ),
    ],
    ids=["epochs-temperature-0.7", "minibatches", "staleness"],
)
def test_regimes_train_as_alone(
    tiny: Callable[..., Any],
    cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    changes: dict[str, Any],
    members: Callable[[], list[ObjectiveSpec]],
) -> None:
    config = tiny(batch_size=16, seed=5, **changes)
    _population_against_alone(members(), config, PolicyConfig(), cache_dir, monkeypatch)


def test_lora_members_train_as_alone(
    tiny: Callable[..., Any], cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A LoRA policy runs on the transformers forward (vmap over the members' adapters).

    Its adapter sits on the full warm start: the tiny policy's LoRA warm start (an adapter on
    its random initialisation) earns no reward in 5 steps, and a zero gradient is rounding
    noise that Adam turns into lr-sized steps, which differ between a population and alone."""
    specs = [presets.get("grpo"), presets.get("sft"), presets.get("dpo")]
    config = tiny(batch_size=8, seed=1)
    _population_against_alone(specs, config, PolicyConfig(), cache_dir, monkeypatch, lora_rank=2)


@pytest.mark.parametrize("fast_path", [True, False], ids=["stacked", "transformers"])
def test_members_of_several_seeds_train_as_each_alone_on_its_seed(
    tiny: Callable[..., Any], cache_dir: Path, monkeypatch: pytest.MonkeyPatch, fast_path: bool
) -> None:
    """One population of members on seeds 3 and 4, each from its seed's warm start and
    reference: GRPO on both seeds, PPO (critic, 4 x 4), DPO (each seed's own offline pairs),
    SFT (each seed's demonstrations) and a stale CISPO, each against its run alone on its
    seed. Its prompts, sampled tokens, losses, weights and evaluation are its seed's. On the
    transformers forward too (the other seeds' references as explicit weights there)."""
    task = get_task("addition")
    seeds = [3, 4, 4, 3, 4, 3] if fast_path else [3, 4, 3]
    specs = [
        presets.get("grpo"),
        presets.get("grpo"),
        presets.get("ppo") if fast_path else presets.get("dpo"),
        presets.get("dpo"),
        presets.get("sft"),
        _with("cispo", staleness=1),
    ][: len(seeds)]
    configs = {seed: tiny(batch_size=16, seed=seed) for seed in seeds}
    policies = {
        seed: warm_start_policy(
            task, PolicyConfig(value_head=True), config, torch.device("cpu"), cache_dir
        )[0]
        for seed, config in configs.items()
    }
    for policy in policies.values():
        policy.fast_path = fast_path
    pairs = {seed: sample_offline_pairs(policies[seed], task, c) for seed, c in configs.items()}
    assert pairs[3].prompts != pairs[4].prompts  # each seed labels its own pairs
    lrs = [LRS[i % len(LRS)] for i in range(len(specs))]
    population = _run(specs, lrs, task, configs[3], policies, pairs, monkeypatch, list(seeds))
    for i, (spec, lr, seed) in enumerate(zip(specs, lrs, seeds, strict=True)):
        config, policy = configs[seed], policies[seed]
        alone = _run([spec], [lr], task, config, policy, pairs[seed], monkeypatch)
        _compare(population, alone, i, lr, trust=False)
    # the two GRPO members saw their own seeds' prompts
    assert population["rows"][0][0].rollout.prompts != population["rows"][0][1].rollout.prompts


def test_several_seeds_need_a_policy_for_each_and_no_lora(
    warm_policy: Callable[..., Any], tiny: Callable[..., Any]
) -> None:
    task = get_task("addition")
    policy = warm_policy(task)
    members = [Member(presets.get("grpo"), 1e-3, seed=0), Member(presets.get("grpo"), 1e-3, 1)]
    with pytest.raises(ValueError, match="no warm-start policy for its seed 1"):
        Engine(members, task, tiny(seed=0), policy)
    lora = warm_policy(task)
    lora.attach_lora(2)
    with pytest.raises(ValueError, match="no LoRA"):
        Engine(members, task, tiny(seed=0), {0: lora, 1: policy})


def test_lr_zero_keeps_the_weights_exactly(
    warm_policy: Callable[..., Any], tiny: Callable[..., Any]
) -> None:
    task = get_task("addition")
    policy = warm_policy(task)
    start = {n: p.detach().clone() for n, p in policy.hf_model.named_parameters()}
    engine = Engine(
        [Member(presets.get("grpo"), 0.0), Member(presets.get("grpo"), 1e-3)],
        task,
        tiny(batch_size=16),
        policy,
    )
    for step in range(STEPS):
        assert all(m is not None for m in engine.step(step))
    frozen, trained = engine.member_state(0), engine.member_state(1)
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
    config = tiny(batch_size=16, steps=3, max_kl_to_ref=0.5)
    folders = [tmp_path / "steady", tmp_path / "wild"]
    summaries = train_members(
        [Member(presets.get("grpo"), 0.0), Member(presets.get("cispo"), 1.0)],
        task,
        config,
        PolicyConfig(),
        out_dirs=folders,
        progress=False,
        cache_dir=cache_dir,
    )
    steady, wild = summaries
    assert steady.status == "ok" and steady.steps == 3
    assert steady.final_eval is not None and steady.final_eval.kl_to_ref < 1e-4
    assert steady.kl_to_ref is not None and steady.kl_to_ref < 1e-4
    assert wild.status == "diverged" and "max_kl_to_ref" in wild.reason
    assert 0 < wild.steps < 3 and wild.final_eval is None  # as `train` reports it
    for folder, summary in zip(folders, summaries, strict=True):
        assert json.loads((folder / "summary.json").read_text()) == json.loads(
            json.dumps(summary.to_dict())
        )
        records = read_jsonl(folder / "metrics.jsonl")
        assert [r["step"] for r in records] == list(range(1, summary.steps + 1))
    assert steady.train_config["lr"] == 0.0 and wild.train_config["lr"] == 1.0
    assert steady.trained_with == wild.trained_with == 2


@pytest.mark.parametrize(
    ("names", "seeds", "lora_rank"),
    [
        (("grpo", "dr_grpo", "ppo"), (None, None, None), 0),
        (("dpo", "sft", "trpo"), (None, None, None), 0),
        # one candidate's runs on several seeds in one population (the re-evaluation's)
        (("grpo", "dpo", "ppo"), (5, 6, 6), 0),
        # LoRA: one engine per seed
        (("grpo", "sft", "grpo"), (5, 6, 6), 2),
    ],
    ids=["on-policy-with-critic", "mixed-kinds", "several-seeds", "lora-several-seeds"],
)
def test_run_folders_match_train_alone(
    tiny: Callable[..., Any],
    cache_dir: Path,
    tmp_path: Path,
    read_jsonl: Callable[[Path], list[dict[str, Any]]],
    names: tuple[str, ...],
    seeds: tuple[int | None, ...],
    lora_rank: int,
) -> None:
    """Each member's metrics.jsonl and summary are what `train` writes for it alone (on its
    seed); a LoRA policy trains the members of each seed together."""
    task = get_task("addition")
    config = tiny(batch_size=16, steps=2, seed=5)
    policy = PolicyConfig(lora_rank=lora_rank)
    members = [
        Member(presets.get(n), lr, seed) for n, lr, seed in zip(names, LRS, seeds, strict=True)
    ]
    folders = [tmp_path / "population" / f"{n}-{i}" for i, n in enumerate(names)]
    summaries = train_members(
        members, task, config, policy, out_dirs=folders, progress=False, cache_dir=cache_dir
    )
    for member, folder, ours in zip(members, folders, summaries, strict=True):
        alone_dir = tmp_path / "alone" / folder.name
        seed = config.seed if member.seed is None else member.seed
        theirs = train(
            member.spec,
            task,
            replace(config, lr=member.lr, seed=seed),
            policy,
            out_dir=alone_dir,
            progress=False,
            cache_dir=cache_dir,
        )
        assert ours.seed == seed
        assert ours.trained_with == (seeds.count(member.seed) if lora_rank else len(names))
        assert theirs.trained_with == 1
        mine, alone = ours.to_dict(), theirs.to_dict()
        for key in ("objective_key", "task", "seed", "train_config", "policy", "status", "steps"):
            assert mine[key] == alone[key], key
        for key in ("initial_eval", "final_eval"):
            assert mine[key] == pytest.approx(alone[key], rel=1e-4, abs=1e-6), key
        mine_records = read_jsonl(folder / "metrics.jsonl")
        alone_records = read_jsonl(alone_dir / "metrics.jsonl")
        assert len(mine_records) == len(alone_records) == 2
        for record, reference in zip(mine_records, alone_records, strict=True):
            assert set(record) == set(reference)
            for key, value in reference.items():
                first_pairs = record["step"] == 1 and key == "pair_accuracy"  # see `_compare`
                if key != "seconds" and value is not None and not first_pairs:
                    assert record[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key


def test_a_stop_reason_stops_only_its_member(tiny: Callable[..., Any], cache_dir: Path) -> None:
    task = get_task("addition")
    seen: list[tuple[int, int]] = []

    def hook(member: int) -> Callable[[Any], str | None]:
        def on_step(record: Any) -> str | None:
            seen.append((member, record.step))
            return "pruned here" if member == 0 and record.step == 1 else None

        return on_step

    stopped, going = train_members(
        [Member(presets.get("grpo"), 1e-4)] * 2,
        task,
        tiny(batch_size=16, steps=3),
        progress=False,
        cache_dir=cache_dir,
        on_steps=[hook(0), hook(1)],
    )
    assert stopped.status == "stopped" and stopped.reason == "pruned here"
    assert stopped.steps == 1 and stopped.final_eval is not None
    assert stopped.kl_to_ref is None  # a stopped run reports no final KL
    assert going.status == "ok" and going.steps == 3
    assert sorted(seen) == [(0, 1), (1, 1), (1, 2), (1, 3)]


def test_a_stale_member_trains_on_the_batch_an_earlier_policy_sampled(
    warm_policy: Callable[..., Any], tiny: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Staleness 2: the batch of step t has step t's prompts and was drawn by the weights of
    step max(0, t - 2); its old log-probs are that policy's, so the ratio of the first update
    is not 1 once the policy has moved."""
    task = get_task("addition")
    config = tiny(batch_size=16, seed=2)
    policy = warm_policy(task)
    engine = Engine([Member(_with("grpo", staleness=2), 3e-3)], task, config, policy)
    batches: list[MemberBatch] = []
    original = Engine._collect

    def spy(self: Engine, step: int, live: list[int]) -> dict[int, MemberBatch]:
        collected = original(self, step, live)
        batches.append(collected[0])
        return collected

    monkeypatch.setattr(Engine, "_collect", spy)
    snapshots, ratios = [], []
    for step in range(5):
        snapshots.append(engine.member_state(0))
        ratios.append(engine.step(step)[0]["ratio_mean"])
    for step, batch in enumerate(batches):
        assert batch.rollout.prompts == [
            p for p in train_prompts(task, config, step, 8) for _ in range(8)
        ]
        behaviour = snapshots[max(0, step - 2)]
        rows = rows_of([batch.rollout], engine.tokenizer.pad_id)
        with torch.no_grad():
            drawn_by = engine.forward.score(rows, [behaviour]).logp[0]
        torch.testing.assert_close(batch.old_logp, drawn_by, atol=1e-5, rtol=0)
        torch.testing.assert_close(batch.rollout.sample_logp, drawn_by, atol=1e-5, rtol=0)
    assert ratios[0] == pytest.approx(1.0, abs=1e-6)  # step 0: nothing has moved yet
    assert all(abs(r - 1.0) > 1e-4 for r in ratios[1:])
