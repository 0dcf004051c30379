"""Search-space YAML: loading, strict errors, conditional axes, points -> specs, YAML guards."""

from __future__ import annotations

import copy
import hashlib
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from grape_evo.objective import ObjectiveSpec, presets
from grape_evo.policy.config import PolicyConfig
from grape_evo.search.space import (
    MAX_NODES,
    Axis,
    Budget,
    SearchSpace,
    SpaceError,
    TaskRef,
    axis_paths,
    load_space,
    load_yaml_text,
    parse_space,
)
from grape_evo.tasks import Task
from grape_evo.training.config import TrainConfig

SHIPPED = Path(__file__).resolve().parents[2] / "search_spaces"

VALID: dict[str, Any] = {
    "name": "t",
    "tasks": ["addition"],
    "policy": {"preset": "tiny"},
    "budget": {"steps": 10, "seeds": 2, "eval_every": 5},
    "base": "grpo",
    "axes": {
        "advantage.name": {"choices": ["group_zscore", "group_mean", "rloo", "rank"]},
        "surrogate.name": {"choices": ["reinforce", "ppo_clip", "gspo", "cispo"]},
        "surrogate.clip_high": {
            "low": 0.1,
            "high": 0.4,
            "when": {"surrogate.name": ["ppo_clip", "cispo"]},
        },
        "kl.coef": {"low": 1.0e-4, "high": 0.1, "log": True},
        "aggregation.name": {"choices": ["token_mean", "seq_mean_token_mean"]},
    },
    "baselines": ["ppo", "grpo", "dpo"],
    "search": {"sampler": "evolution", "trials": 4, "pruner": "median"},
}


def write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def dump(tmp_path: Path, data: Any) -> Path:
    return write(tmp_path, yaml.safe_dump(data, sort_keys=False))


def space_with(**changes: Any) -> SearchSpace:
    data = copy.deepcopy(VALID)
    data.update(changes)
    return parse_space(data)


# ---- the shipped spaces -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["quickstart", "grpo_family", "full", "preference"])
def test_shipped_spaces_load(name: str) -> None:
    space = load_space(SHIPPED / f"{name}.yaml")
    assert space.name == name
    assert space.source == str(SHIPPED / f"{name}.yaml")
    assert space.axes and space.baselines
    for ref in space.tasks:
        assert isinstance(ref.build(), Task)
    # interior points too: a random sampler draws from the whole space
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        trial = study.ask()
        params = space.suggest(trial)
        spec, overrides = space.to_spec(params)
        assert spec.name == "candidate"
        assert set(overrides) <= {"lr"}
        study.tell(trial, 0.0)


def test_quickstart_matches_the_design_example() -> None:
    space = load_space(SHIPPED / "quickstart.yaml")
    assert [t.name for t in space.tasks] == ["addition"]
    assert space.policy == PolicyConfig(preset="tiny")
    assert space.base == presets.get("grpo")
    assert space.baselines == ("ppo", "grpo", "dpo")
    assert space.search.sampler == "evolution"
    assert space.search.objectives == ("final_reward",)
    assert space.budget.seeds == 2


def test_preference_space_covers_every_loss() -> None:
    space = load_space(SHIPPED / "preference.yaml")
    from grape_evo.objective import PREFERENCE_LOSSES

    named = {c.name for c in PREFERENCE_LOSSES if "expression" not in c.tags}
    assert set(space.axis("preference.name").choices or ()) == named
    assert space.base.data == "preference_pairs"
    assert [t.name for t in space.tasks] == ["preference"]


# ---- bad files ----------------------------------------------------------------------------


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(d: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        node = d
        for p in parents:
            node = node[p]
        node[last] = value

    return edit


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda d: d.pop(key)


def _axes(axes: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    return _set("axes", axes)


BAD_EDITS: dict[str, tuple[Callable[[dict[str, Any]], None], list[str]]] = {
    "unknown top-level key": (_set("sampler", "tpe"), ["sampler", "valid keys"]),
    "missing tasks": (_drop("tasks"), ["tasks"]),
    "missing base": (_drop("base"), ["base"]),
    "missing search": (_drop("search"), ["search"]),
    "unknown task": (_set("tasks", ["addition", "nosuchtask"]), ["tasks[1]", "nosuchtask"]),
    "bad task kwargs": (_set("tasks", [{"name": "addition", "bogus": 1}]), ["tasks[0]"]),
    "tasks wrong type": (_set("tasks", 3), ["tasks"]),
    "task warm start negative": (
        _set("tasks", [{"name": "addition", "warm_start_steps": -1}]),
        ["tasks[0].warm_start_steps", ">= 0"],
    ),
    "task warm start above the limit": (
        _set("tasks", [{"name": "addition", "warm_start_steps": 10**7}]),
        ["tasks[0].warm_start_steps", "limit"],
    ),
    "empty tasks": (_set("tasks", []), ["tasks"]),
    "unknown base preset": (_set("base", "grpo2"), ["base", "grpo2"]),
    "invalid inline base": (_set("base", {"advantage": "nope"}), ["base", "nope"]),
    "unknown policy key": (_set("policy", {"preset": "tiny", "layers": 3}), ["policy", "layers"]),
    "unknown policy preset": (_set("policy", {"preset": "huge"}), ["policy", "huge"]),
    "policy wrong type": (_set("policy", {"lora_rank": 1.5}), ["policy.lora_rank"]),
    "unknown budget key": (_set("budget/stepz", 3), ["budget", "stepz"]),
    "budget wrong type": (_set("budget/steps", "many"), ["budget.steps"]),
    "budget bool": (_set("budget/steps", True), ["budget.steps", "boolean"]),
    "budget zero": (_set("budget/seeds", 0), ["budget.seeds", ">= 1"]),
    "budget inf lr": (_set("budget/lr", math.inf), ["budget.lr", "finite"]),
    "budget nan lr": (_set("budget/lr", math.nan), ["budget.lr", "finite"]),
    "unknown axis path": (
        _axes({"advantage.foo": {"low": 0.0, "high": 1.0}}),
        ["axes.advantage.foo"],
    ),
    "unknown axis kind": (
        _axes({"optimizer.lr": {"low": 0.1, "high": 1.0}}),
        ["axes.optimizer.lr"],
    ),
    "unknown component name": (
        _axes({"surrogate.name": {"choices": ["ppo_clip", "ppo_clipp"]}}),
        ["axes.surrogate.name", "ppo_clipp", "valid names"],
    ),
    "unknown kl estimator": (
        _axes({"kl.estimator": {"choices": ["k4"]}}),
        ["axes.kl.estimator", "k4"],
    ),
    "empty choices": (_axes({"advantage.name": {"choices": []}}), ["axes.advantage.name", "empty"]),
    "choices not a list": (_axes({"advantage.name": {"choices": "rloo"}}), ["axes.advantage.name"]),
    "duplicate choice": (_axes({"group_size": {"choices": [4, 4]}}), ["axes.group_size", "twice"]),
    "low >= high": (
        _axes({"surrogate.clip_high": {"low": 0.5, "high": 0.4}}),
        ["axes.surrogate.clip_high", "low (0.5) must be < high (0.4)"],
    ),
    "low == high": (_axes({"kl.coef": {"low": 0.1, "high": 0.1}}), ["axes.kl.coef", "< high"]),
    "log with low <= 0": (
        _axes({"kl.coef": {"low": 0.0, "high": 0.1, "log": True}}),
        ["axes.kl.coef", "log"],
    ),
    "missing high": (_axes({"kl.coef": {"low": 0.0}}), ["axes.kl.coef", "high"]),
    "choices and low": (
        _axes({"kl.coef": {"choices": [0.1], "low": 0.0}}),
        ["axes.kl.coef", "choices"],
    ),
    "unknown axis key": (
        _axes({"kl.coef": {"low": 0.0, "high": 0.1, "scale": "log"}}),
        ["axes.kl.coef", "scale"],
    ),
    "range on a name": (_axes({"advantage.name": {"low": 0, "high": 1}}), ["axes.advantage.name"]),
    "float bounds on int field": (
        _axes({"group_size": {"low": 2.5, "high": 8}}),
        ["axes.group_size.low", "integer"],
    ),
    "int flag on float field": (
        _axes({"kl.coef": {"low": 0, "high": 1, "int": True}}),
        ["axes.kl.coef.int"],
    ),
    "bool bound": (_axes({"kl.coef": {"low": True, "high": 0.5}}), ["axes.kl.coef.low", "boolean"]),
    "string bound": (_axes({"kl.coef": {"low": "0.01", "high": 0.5}}), ["axes.kl.coef.low"]),
    "nan bound": (_axes({"kl.coef": {"low": 0.0, "high": math.nan}}), ["axes.kl.coef.high"]),
    "inf bound": (_axes({"kl.coef": {"low": 0.0, "high": math.inf}}), ["axes.kl.coef.high"]),
    "bad step": (
        _axes({"kl.coef": {"low": 0.0, "high": 0.1, "step": 0.03}}),
        ["axes.kl.coef.step", "divide"],
    ),
    "step with log": (
        _axes({"kl.coef": {"low": 0.01, "high": 0.1, "step": 0.01, "log": True}}),
        ["axes.kl.coef.step", "log"],
    ),
    "bool param choices": (
        _axes({"advantage.unbiased_std": {"choices": [1, 0]}}),
        ["axes.advantage.unbiased_std"],
    ),
    "lr not positive": (_axes({"optim.lr": {"low": 0.0, "high": 0.1}}), ["axes.optim.lr"]),
    "when on a missing axis": (
        _axes(
            {
                "surrogate.clip_high": {
                    "low": 0.1,
                    "high": 0.4,
                    "when": {"surrogate.name": ["ppo_clip"]},
                }
            }
        ),
        ["axes.surrogate.clip_high.when.surrogate.name", "not an axis of this space"],
    ),
    "when on a later axis": (
        _axes(
            {
                "surrogate.clip_high": {
                    "low": 0.1,
                    "high": 0.4,
                    "when": {"surrogate.name": ["ppo_clip"]},
                },
                "surrogate.name": {"choices": ["ppo_clip", "reinforce"]},
            }
        ),
        ["axes.surrogate.clip_high.when.surrogate.name", "declared after"],
    ),
    "when on an unknown path": (
        _axes({"kl.coef": {"low": 0.01, "high": 0.1, "when": {"foo.bar": [1]}}}),
        ["axes.kl.coef.when.foo.bar"],
    ),
    "when on itself": (
        _axes({"kl.coef": {"low": 0.01, "high": 0.1, "when": {"kl.coef": [0.01]}}}),
        ["axes.kl.coef.when.kl.coef", "itself"],
    ),
    "when with a value that is not a choice": (
        _axes(
            {
                "surrogate.name": {"choices": ["ppo_clip", "reinforce"]},
                "surrogate.clip_high": {
                    "low": 0.1,
                    "high": 0.4,
                    "when": {"surrogate.name": ["ppo-clip"]},
                },
            }
        ),
        ["axes.surrogate.clip_high.when.surrogate.name", "ppo-clip"],
    ),
    "when on a numeric axis": (
        _axes(
            {
                "kl.coef": {"low": 0.01, "high": 0.1},
                "kl.estimator": {"choices": ["k1"], "when": {"kl.coef": [0.01]}},
            }
        ),
        ["axes.kl.estimator.when.kl.coef", "categorical"],
    ),
    "unknown sampler": (_set("search/sampler", "bayes"), ["search.sampler", "bayes"]),
    "unknown pruner": (_set("search/pruner", "asha"), ["search.pruner", "asha"]),
    "unknown objective": (
        _set("search/objectives", ["accuracy"]),
        ["search.objectives", "accuracy"],
    ),
    "the KL first (trial values are the fitness, then the KL)": (
        _set("search/objectives", ["kl_to_ref", "final_reward"]),
        ["search.objectives", "must start with final_reward"],
    ),
    "too many objectives": (
        _set("search/objectives", ["final_reward", "kl_to_ref", "final_reward"]),
        ["search.objectives"],
    ),
    "pruning two objectives": (
        _set("search/objectives", ["final_reward", "kl_to_ref"]),
        ["search.pruner"],
    ),
    "trials zero": (_set("search/trials", 0), ["search.trials"]),
    "trials bool": (_set("search/trials", True), ["search.trials", "boolean"]),
    "trials string": (_set("search/trials", "24"), ["search.trials"]),
    "trials missing": (lambda d: d["search"].pop("trials"), ["search", "trials"]),
    "unknown search key": (_set("search/budget", 3), ["search", "budget"]),
    "search not a mapping": (_set("search", "evolution"), ["search"]),
    "unknown baseline": (_set("baselines", ["ppo", "grpo3"]), ["baselines[1]", "grpo3"]),
    "duplicate baseline": (_set("baselines", ["ppo", "ppo"]), ["baselines[1]", "twice"]),
    "axes not a mapping": (_set("axes", ["kl.coef"]), ["axes"]),
    "name not a string": (_set("name", 3), ["name"]),
}


@pytest.mark.parametrize("case", sorted(BAD_EDITS))
def test_bad_space_names_file_and_key(tmp_path: Path, case: str) -> None:
    edit, needles = BAD_EDITS[case]
    data = copy.deepcopy(VALID)
    edit(data)
    path = dump(tmp_path, data)
    with pytest.raises(SpaceError) as info:
        load_space(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    for needle in needles:
        assert needle in message, (needle, message)


BAD_TEXTS = {
    "invalid yaml": ("tasks: [addition\nbase: grpo\n", ["invalid YAML"]),
    "not a mapping": ("- tasks\n- base\n", ["mapping"]),
    "empty document": ("", ["empty"]),
    "scalar document": ("grpo\n", ["mapping"]),
    "duplicate key": (
        "tasks: [addition]\nbase: grpo\nbase: ppo\nsearch: {trials: 2}\n",
        ["duplicate key 'base'"],
    ),
    "duplicate axis": (
        "tasks: [addition]\nbase: grpo\nsearch: {trials: 2}\naxes:\n"
        "  kl.coef: {low: 0.01, high: 0.1}\n  kl.coef: {low: 0.02, high: 0.1}\n",
        ["duplicate key 'kl.coef'"],
    ),
    "recursive alias": (
        "tasks: &a [addition, *a]\nbase: grpo\nsearch: {trials: 2}\n",
        ["recursive"],
    ),
    "bool where a number is expected": (
        "tasks: [addition]\nbase: grpo\nsearch: {trials: yes}\n",
        ["search.trials", "boolean"],
    ),
    "nan in yaml": (
        "tasks: [addition]\nbase: grpo\nsearch: {trials: 2}\n"
        "axes: {kl.coef: {low: .nan, high: 1}}\n",
        ["axes.kl.coef.low", "finite"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_TEXTS))
def test_bad_yaml_text(tmp_path: Path, case: str) -> None:
    text, needles = BAD_TEXTS[case]
    path = write(tmp_path, text)
    with pytest.raises(SpaceError) as info:
        load_space(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    for needle in needles:
        assert needle in message, (needle, message)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(SpaceError, match=r"nope\.yaml: cannot read"):
        load_space(path)


def test_billion_laughs_is_rejected_quickly(tmp_path: Path) -> None:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        refs = ", ".join([f"*a{i - 1}"] * 10)
        lines.append(f"a{i}: &a{i} [{refs}]")
    lines += ["tasks: [addition]", "base: grpo", "search: {trials: 2}", "axes: *a9"]
    path = write(tmp_path, "\n".join(lines) + "\n")
    with pytest.raises(SpaceError) as info:
        load_space(path)
    assert str(info.value).startswith(f"{path}: invalid YAML")
    assert str(MAX_NODES) in str(info.value)


def test_anchors_within_limits_load(tmp_path: Path) -> None:
    text = """
tasks: [addition]
base: grpo
search: {trials: 2}
axes:
  surrogate.name: {choices: &clipped [ppo_clip, cispo]}
  surrogate.clip_high: {low: 0.1, high: 0.4, when: {surrogate.name: *clipped}}
  kl.coef: {low: 1e-4, high: 1e-1, log: true}
"""
    space = load_space(write(tmp_path, text))
    assert space.axis("surrogate.clip_high").when == (("surrogate.name", ("ppo_clip", "cispo")),)
    assert space.axis("kl.coef").low == pytest.approx(1e-4)  # "1e-4" is a float here
    assert space.name == "space"  # the file's stem


def test_parse_space_source_prefix() -> None:
    data = copy.deepcopy(VALID)
    data["base"] = "nope"
    with pytest.raises(SpaceError, match=r"^<string>: base: unknown preset 'nope'"):
        parse_space(data)
    with pytest.raises(SpaceError, match=r"^mine: base:"):
        parse_space(data, source="mine")


# ---- invalid points -----------------------------------------------------------------------


def test_space_that_can_produce_an_invalid_spec_is_rejected(tmp_path: Path) -> None:
    data = copy.deepcopy(VALID)
    data["axes"] = {
        "group_size": {"choices": [1, 4]},
        "advantage.name": {"choices": ["reward", "group_zscore"]},
    }
    path = dump(tmp_path, data)
    with pytest.raises(SpaceError) as info:
        load_space(path)
    message = str(info.value)
    assert message.startswith(f"{path}: axes: the point {{")
    assert "group_size: 1" in message and "advantage.name: group_zscore" in message
    assert "fields 'advantage' and 'group_size' clash" in message


def test_conditional_axes_can_make_an_invalid_space_valid() -> None:
    space = space_with(
        axes={
            "group_size": {"choices": [1, 4]},
            "advantage.name": {"choices": ["group_zscore", "rloo"], "when": {"group_size": [4]}},
            "advantage.decay": {"low": 0.5, "high": 0.9, "when": {"group_size": [1]}},
        },
        base={"group_size": 1, "advantage": "ema_baseline"},
    )
    assert len(list(space.iter_points())) == 4


def test_numeric_bounds_outside_the_param_range_are_rejected() -> None:
    with pytest.raises(SpaceError, match=r"axes: the point .*surrogate\.clip_low: 1\.5"):
        space_with(axes={"surrogate.clip_low": {"low": 0.1, "high": 1.5}})


def test_preference_params_without_a_preference_loss_are_rejected() -> None:
    with pytest.raises(SpaceError, match=r"axes: the point .*preference\.beta"):
        space_with(axes={"preference.beta": {"low": 0.01, "high": 1.0, "log": True}})


def test_large_spaces_are_checked_on_a_sample() -> None:
    # 7 binary axes x 12 choices... > 2000 points: validation samples, deterministically
    axes: dict[str, Any] = {
        "advantage.name": {"choices": ["group_zscore", "group_mean", "rloo", "rank"]},
        "surrogate.name": {"choices": ["reinforce", "ppo_clip", "cispo"]},
        "kl.coef": {"low": 0.0, "high": 0.1},
        "kl.estimator": {"choices": ["k1", "k2", "k3", "abs"]},
        "kl.placement": {"choices": ["loss", "reward"]},
        "aggregation.name": {"choices": ["token_mean", "token_sum", "seq_mean_token_mean"]},
        "entropy_coef": {"low": 0.0, "high": 0.01},
        "epochs": {"low": 1, "high": 4},
        "group_size": {"choices": [2, 4, 8]},
    }
    space = space_with(axes=axes)
    assert sum(1 for _ in space.iter_points()) > 2000
    assert space.sample_points(5) == space.sample_points(5)


# ---- conditions, suggest, to_spec, grid -----------------------------------------------------


def test_conditional_axis_inactive_when_condition_fails() -> None:
    space = space_with()
    clip = space.axis("surrogate.clip_high")
    assert clip.is_active({"surrogate.name": "ppo_clip"})
    assert not clip.is_active({"surrogate.name": "reinforce"})
    assert not clip.is_active({})
    active = [a.path for a in space.active_axes({"surrogate.name": "reinforce"})]
    assert "surrogate.clip_high" not in active
    assert active == ["advantage.name", "surrogate.name", "kl.coef", "aggregation.name"]
    assert "surrogate.clip_high" in [a.path for a in space.active_axes({"surrogate.name": "cispo"})]


def test_condition_chains_through_inactive_axes() -> None:
    space = space_with(
        axes={
            "preference.name": {"choices": [None, "sigmoid", "simpo"]},
            "preference.gamma": {"low": 0.0, "high": 2.0, "when": {"preference.name": ["simpo"]}},
            "advantage.name": {"choices": ["rloo", "gae"], "when": {"preference.name": [None]}},
            "advantage.lam": {"low": 0.8, "high": 1.0, "when": {"advantage.name": ["gae"]}},
        }
    )
    # advantage.name is inactive, so advantage.lam is too, even with a stale value present
    params = {"preference.name": "simpo", "advantage.name": "gae", "advantage.lam": 0.9}
    assert [a.path for a in space.active_axes(params)] == ["preference.name", "preference.gamma"]
    spec, _ = space.to_spec({**params, "preference.gamma": 1.5})
    assert spec.preference is not None and spec.preference.name == "simpo"
    assert spec.preference.loss.get("gamma") == 1.5
    assert spec.advantage.name == "group_zscore"  # from the base, untouched
    spec, _ = space.to_spec(
        {"preference.name": None, "advantage.name": "gae", "advantage.lam": 0.9}
    )
    assert spec.preference is None and spec.advantage.get("lam") == 0.9


def test_suggest_with_fixed_trial_returns_only_active_axes() -> None:
    space = space_with()
    values = {
        "advantage.name": "rloo",
        "surrogate.name": "reinforce",
        "surrogate.clip_high": 0.3,
        "kl.coef": 0.01,
        "aggregation.name": "token_mean",
    }
    got = space.suggest(optuna.trial.FixedTrial(values))
    assert got == {k: v for k, v in values.items() if k != "surrogate.clip_high"}
    got = space.suggest(optuna.trial.FixedTrial({**values, "surrogate.name": "ppo_clip"}))
    assert got["surrogate.clip_high"] == 0.3


def test_suggest_int_and_step_axes() -> None:
    space = space_with(
        axes={
            "epochs": {"low": 1, "high": 4},
            "group_size": {"low": 2, "high": 8, "step": 2},
            "entropy_coef": {"low": 0.0, "high": 0.01, "step": 0.005},
        }
    )
    assert [a.kind for a in space.axes] == ["int", "int", "float"]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(10):
        params = space.suggest(study.ask())
        assert isinstance(params["epochs"], int) and 1 <= params["epochs"] <= 4
        assert params["group_size"] in (2, 4, 6, 8)
        spec, _ = space.to_spec(params)
        assert spec.group_size == params["group_size"]


def test_to_spec_switch_to_reinforce_drops_clip_params() -> None:
    space = space_with(
        axes={
            "surrogate.name": {"choices": ["ppo_clip", "reinforce"]},
            "surrogate.clip_high": {"low": 0.1, "high": 0.4},  # unconditional: dormant gene
        }
    )
    assert space.base.surrogate.name == "ppo_clip"
    spec, overrides = space.to_spec({"surrogate.name": "reinforce", "surrogate.clip_high": 0.3})
    assert overrides == {}
    assert spec.name == "candidate"
    assert spec.surrogate.name == "reinforce"
    canonical = spec.canonical().to_dict()
    assert canonical["surrogate"] == {"name": "reinforce"}
    assert ObjectiveSpec.from_dict(spec.to_dict()) == spec
    # the same component with a new clip value keeps the base's other parameters
    spec, _ = space.to_spec({"surrogate.name": "ppo_clip", "surrogate.clip_high": 0.3})
    assert spec.surrogate.to_dict() == {
        "name": "ppo_clip",
        "clip_low": 0.2,
        "clip_high": 0.3,
        "dual_clip": 0.0,
    }


def test_switched_component_starts_from_its_registered_defaults() -> None:
    space = space_with(axes={"surrogate.name": {"choices": ["ppo_clip", "gspo"]}})
    spec, _ = space.to_spec({"surrogate.name": "gspo"})
    assert spec.surrogate.get("clip_low") == pytest.approx(3e-4)
    assert spec.surrogate.get("clip_high") == pytest.approx(4e-4)


def test_to_spec_keeps_base_for_missing_axes_and_returns_lr_override() -> None:
    space = space_with(
        axes={
            "kl.coef": {"low": 1e-4, "high": 0.1, "log": True},
            "optim.lr": {"low": 1e-5, "high": 1e-3, "log": True},
        }
    )
    spec, overrides = space.to_spec({})
    assert spec.with_name("grpo") == presets.get("grpo") and overrides == {}
    spec, overrides = space.to_spec({"kl.coef": 0.01, "optim.lr": 2e-4})
    assert spec.kl.coef == 0.01 and spec.kl.estimator == "k3"
    assert overrides == {"lr": 2e-4}
    config = space.budget.train_config(seed=3, **overrides)
    assert isinstance(config, TrainConfig)
    assert (config.lr, config.seed, config.steps, config.eval_every) == (2e-4, 3, 10, 5)


def test_to_spec_rejects_unknown_and_out_of_range_params() -> None:
    space = space_with()
    with pytest.raises(SpaceError, match="unknown axis path"):
        space.to_spec({"kl.coeff": 0.1})
    with pytest.raises(SpaceError, match=r"kl\.coef"):
        space.to_spec({"kl.coef": 0.5})
    with pytest.raises(SpaceError, match=r"advantage\.name"):
        space.to_spec({"advantage.name": "gae"})


def test_grid_on_a_small_space() -> None:
    space = space_with(
        axes={
            "surrogate.name": {"choices": ["ppo_clip", "reinforce"]},
            "surrogate.clip_high": {
                "low": 0.1,
                "high": 0.3,
                "step": 0.1,
                "when": {"surrogate.name": ["ppo_clip"]},
            },
            "kl.coef": {"low": 1e-3, "high": 1e-1, "log": True},
            "epochs": {"low": 1, "high": 3, "step": 1},
        }
    )
    grid = space.grid()
    assert grid == {
        "surrogate.name": ["ppo_clip", "reinforce"],
        "surrogate.clip_high": [0.1, 0.2, 0.3],
        "kl.coef": [1e-3, 1e-1],
        "epochs": [1, 2, 3],
    }
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(grid, seed=0))
    trial = study.ask()
    params = space.suggest(trial)
    space.to_spec(params)
    assert params["epochs"] in grid["epochs"]


# ---- value objects --------------------------------------------------------------------------


def test_budget_defaults_come_from_train_config() -> None:
    budget = Budget()
    defaults = TrainConfig()
    assert (budget.steps, budget.batch_size, budget.lr) == (
        defaults.steps,
        defaults.batch_size,
        defaults.lr,
    )
    assert (budget.reeval_seeds, budget.top_k) == (10, 3)
    assert budget.train_config(seed=1, device="cpu").seed == 1


def test_budget_rejects_train_config_conflicts() -> None:
    with pytest.raises(SpaceError, match="budget"):
        space_with(budget={"steps": 10, "batch_size": 0})


def test_task_refs_with_kwargs() -> None:
    space = space_with(tasks=["addition", {"name": "addition", "digits": 3}])
    assert space.tasks[1] == TaskRef("addition", (("digits", 3),))
    assert space.tasks[1].label == "addition(digits=3)"
    assert space.tasks[1].build().config()["digits"] == 3


def test_a_task_warm_start_replaces_the_budgets_in_its_runs_only() -> None:
    space = space_with(
        tasks=[{"name": "addition", "warm_start_steps": 40}, "reverse"],
        budget={"steps": 10, "warm_start_steps": 7},
    )
    config = space.budget.train_config(seed=2)
    assert [t.train_config(config).warm_start_steps for t in space.tasks] == [40, 7]
    assert space.tasks[0].train_config(config).seed == 2


def test_round_trip_through_to_dict() -> None:
    for name in ("quickstart", "full", "discovery"):
        space = load_space(SHIPPED / f"{name}.yaml")
        again = parse_space(
            yaml.safe_load(yaml.safe_dump(space.to_dict(), sort_keys=False)), source=space.source
        )
        assert again == space


def test_axis_is_frozen_and_hashable() -> None:
    axis = Axis("kl.coef", "float", low=0.0, high=1.0)
    hash(axis)
    with pytest.raises(AttributeError):
        axis.low = 2.0  # type: ignore[misc]


def test_every_registered_parameter_is_an_axis_path() -> None:
    from grape_evo.objective import REGISTRIES

    paths = set(axis_paths())
    for kind in ("advantage", "surrogate", "aggregation", "preference"):
        for param in REGISTRIES[kind].all_param_names():
            assert f"{kind}.{param}" in paths
    assert "optim.lr" in paths and "kl.coef" in paths


# ---- one membership test: Axis.contains -------------------------------------------------------

SURROGATE_NAME = Axis("surrogate.name", "categorical", choices=("ppo_clip", "reinforce"))
UNBIASED = Axis("advantage.unbiased_std", "categorical", choices=(True, False))
DUAL_CLIP = Axis("surrogate.dual_clip", "categorical", choices=(0.0, 3.0))
PREFERENCE = Axis("preference.name", "categorical", choices=(None, "sigmoid"))
CLIP = Axis("surrogate.clip_high", "float", low=0.1, high=0.4)
CLIP_GRID = Axis("surrogate.clip_low", "float", low=0.05, high=0.3, step=0.05)
GROUP = Axis("group_size", "int", low=2, high=16, step=2)
EPOCHS = Axis("epochs", "int", low=1, high=64, log=True)

CONTAINS = [
    (SURROGATE_NAME, "ppo_clip", True),
    (SURROGATE_NAME, "PPO_clip", False),
    (SURROGATE_NAME, None, False),
    (UNBIASED, True, True),
    (UNBIASED, 1, False),  # a loose ``in`` would say True == 1
    (UNBIASED, 0, False),
    (DUAL_CLIP, 3, True),  # numbers compare by value
    (DUAL_CLIP, 3.0, True),
    (DUAL_CLIP, True, False),
    (DUAL_CLIP, "3.0", False),
    (PREFERENCE, None, True),
    (CLIP, 0.1, True),
    (CLIP, 0.4, True),
    (CLIP, 0.4 + 1e-12, True),  # float rounding at a bound
    (CLIP, 0.41, False),
    (CLIP, 0.05, False),
    (CLIP, True, False),
    (CLIP, "0.2", False),
    (CLIP, math.nan, False),
    (CLIP, math.inf, False),
    (CLIP_GRID, 0.15, True),  # 2 steps of 0.05 from 0.05
    (CLIP_GRID, 0.3, True),
    (CLIP_GRID, 0.17, False),  # inside the range, off the grid
    (GROUP, 8, True),
    (GROUP, 8.0, True),
    (GROUP, 7, False),  # off the step-2 grid
    (GROUP, 8.5, False),
    (GROUP, 18, False),
    (EPOCHS, 3, True),
    (EPOCHS, 65, False),
]


@pytest.mark.parametrize(("axis", "value", "expected"), CONTAINS)
def test_axis_contains(axis: Axis, value: Any, expected: bool) -> None:
    assert axis.contains(value) is expected


# ---- project: the genes of a spec that lie in a space ---------------------------------------


def test_project_sets_the_genes_that_lie_in_the_space() -> None:
    space = space_with()
    # grpo: group_zscore, ppo_clip (clip_high 0.2 in [0.1, 0.4], active under ppo_clip), KL 0.04
    # and seq_mean_token_mean are in their axes.
    assert space.project(presets.get("grpo")) == {
        "advantage.name": "group_zscore",
        "surrogate.name": "ppo_clip",
        "surrogate.clip_high": 0.2,
        "kl.coef": 0.04,
        "aggregation.name": "seq_mean_token_mean",
    }
    # dpo: advantage 'reward' is not a choice, its KL coefficient 0 is below the log axis, and
    # without ppo_clip the clip axis is inactive; reinforce and token_mean are choices.
    assert space.project(presets.get("dpo")) == {
        "surrogate.name": "reinforce",
        "aggregation.name": "token_mean",
    }


def test_project_leaves_out_values_outside_an_axis() -> None:
    space = space_with(
        axes={
            "surrogate.name": {"choices": ["ppo_clip", "reinforce"]},
            "surrogate.clip_high": {
                "low": 0.25,
                "high": 0.4,
                "when": {"surrogate.name": ["ppo_clip"]},
            },
            "surrogate.clip_low": {"low": 0.15, "high": 0.35, "step": 0.1},
            "group_size": {"low": 2, "high": 16},
            "kl.coef": {"low": 1.0e-4, "high": 0.1, "log": True},
            "optim.lr": {"low": 1.0e-5, "high": 1.0e-3, "log": True},
        },
        base="ppo",
    )
    # grpo's clip_high 0.2 is below its axis, its clip_low 0.2 lies between the grid points
    # 0.15 and 0.25; group size 8 and KL 0.04 are inside; the learning rate is not in a spec.
    assert space.project(presets.get("grpo")) == {
        "surrogate.name": "ppo_clip",
        "group_size": 8,
        "kl.coef": 0.04,
    }
    # dpo: group size 1 and KL coefficient 0 are outside their axes.
    assert space.project(presets.get("dpo")) == {"surrogate.name": "reinforce"}
    # A conditional axis is left out when the projected genes do not meet its condition.
    only_gspo = space_with(
        axes={
            "surrogate.name": {"choices": ["reinforce", "gspo"]},
            "surrogate.clip_high": {"low": 0.1, "high": 0.4, "when": {"surrogate.name": ["gspo"]}},
        }
    )
    assert only_gspo.project(presets.get("grpo")) == {}


def test_project_puts_a_spec_without_preference_at_null() -> None:
    space = space_with(
        axes={
            "preference.name": {"choices": [None, "sigmoid"]},
            "preference.beta": {
                "low": 0.05,
                "high": 0.5,
                "when": {"preference.name": ["sigmoid"]},
            },
            "advantage.name": {
                "choices": ["group_zscore", "rloo"],
                "when": {"preference.name": [None]},
            },
        }
    )
    assert space.project(presets.get("grpo")) == {
        "preference.name": None,
        "advantage.name": "group_zscore",
    }
    assert space.project(presets.get("online_dpo")) == {
        "preference.name": "sigmoid",
        "preference.beta": 0.1,
    }
    # The projection is a point of the space that rebuilds the spec's genes.
    spec, _ = space.to_spec(space.project(presets.get("grpo")))
    assert spec.preference is None and spec.advantage.name == "group_zscore"


# ---- TaskRef.slug: run-folder names ---------------------------------------------------------


def _hashed(readable: str, label: str) -> str:
    return f"{readable}.{hashlib.sha256(label.encode()).hexdigest()[:8]}"


SLUGS = [
    (TaskRef("addition"), "addition"),
    (TaskRef("addition", (("digits", 3),)), "addition-digits3"),
    (TaskRef("sort", (("length", 6),)), "sort-length6"),
    (
        TaskRef("preference", (("n_topics", 50), ("topic_seed", 1))),
        "preference-n_topics50-topic_seed1",
    ),
    (
        TaskRef("addition", (("digits", -3),)),
        _hashed("addition-digits_3", "addition(digits=-3)"),  # "-" only separates,
    ),
    (TaskRef("addition", (("digits", 3.0),)), _hashed("addition-digits3", "addition(digits=3.0)")),
    (TaskRef("addition", (("digits", "3"),)), _hashed("addition-digits3", "addition(digits='3')")),
    (TaskRef("addition", (("flag", True),)), _hashed("addition-flagtrue", "addition(flag=True)")),
    (
        TaskRef("sort", (("mode", "a b/../c"),)),
        _hashed("sort-modea_b_.._c", "sort(mode='a b/../c')"),
    ),
    (TaskRef("sort", (("k2", 1),)), _hashed("sort-k21", "sort(k2=1)")),
]


@pytest.mark.parametrize(("ref", "slug"), SLUGS, ids=[ref.label for ref, _ in SLUGS])
def test_task_slug(ref: TaskRef, slug: str) -> None:
    assert ref.slug == slug


def test_task_slugs_are_safe_and_distinct() -> None:
    slugs = [ref.slug for ref, _ in SLUGS]
    assert len(set(slugs)) == len(slugs)
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", s) for s in slugs)
    long = TaskRef("sort", tuple((f"key{'x' * i}", 10**6) for i in range(12)))
    assert len(long.slug) == 64 + 9 and re.fullmatch(r"[A-Za-z0-9_-]+\.[0-9a-f]{8}", long.slug)


def test_a_space_with_task_arguments_has_one_folder_per_task() -> None:
    space = space_with(tasks=["addition", {"name": "addition", "digits": 3}])
    assert [t.slug for t in space.tasks] == ["addition", "addition-digits3"]


# ---- load_yaml_text -------------------------------------------------------------------------


def test_load_yaml_text() -> None:
    assert load_yaml_text("a: [1, 1e-4]\n", "x.yaml") == {"a": [1, 1e-4]}
    assert load_yaml_text("", "x.yaml") is None
    with pytest.raises(SpaceError, match=r"^x\.yaml: invalid YAML: duplicate key 'a'"):
        load_yaml_text("a: 1\na: 2\n", "x.yaml")
