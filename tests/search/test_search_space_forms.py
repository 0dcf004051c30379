"""Every YAML form of a search space that the README and the docstrings show parses to the
values it means (table-driven: one YAML fragment, the parsed value, the value by hand)."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import grape_evo.search.space as space_package
from grape_evo.objective import presets
from grape_evo.objective.expression.published import published_forms
from grape_evo.policy.config import PolicyConfig
from grape_evo.search.space import (
    Axis,
    Budget,
    SearchSettings,
    SearchSpace,
    TaskRef,
    axis_parser,
    load_space,
    parser,
)

README = Path(__file__).resolve().parents[2] / "README.md"
DEFAULTS = {"tasks": "tasks: [addition]", "base": "base: grpo", "search": "search: {trials: 2}"}


def load(tmp_path: Path, text: str, name: str = "forms.yaml") -> SearchSpace:
    """``text`` plus the required keys it does not set, loaded as the file ``name``."""
    text = textwrap.dedent(text)
    missing = [line for key, line in DEFAULTS.items() if not re.search(rf"^{key}:", text, re.M)]
    path = tmp_path / name
    path.write_text(text + "\n" + "\n".join(missing) + "\n")
    return load_space(path)


SURROGATE_NAME = "axes:\n  surrogate.name: {choices: [ppo_clip, cispo, reinforce]}\n"

# (YAML fragment, what to read from the space, the expected value)
FORMS: dict[str, tuple[str, Callable[[SearchSpace], Any], Any]] = {
    # ---- name ----
    "name given": ("name: my_space", lambda s: s.name, "my_space"),
    "name from the file's stem": ("", lambda s: s.name, "forms"),
    # ---- tasks ----
    "tasks: list of names": (
        "tasks: [addition, reverse]",
        lambda s: s.tasks,
        (TaskRef("addition"), TaskRef("reverse")),
    ),
    "tasks: one name": ("tasks: sort", lambda s: s.tasks, (TaskRef("sort"),)),
    "tasks: a mapping with arguments in a list": (
        "tasks: [{name: addition, digits: 3}]",
        lambda s: [(t.name, t.kwargs, t.label, t.slug) for t in s.tasks],
        [("addition", (("digits", 3),), "addition(digits=3)", "addition-digits3")],
    ),
    "tasks: one mapping": (
        "tasks: {name: sort, length: 6}",
        lambda s: s.tasks,
        (TaskRef("sort", (("length", 6),)),),
    ),
    "tasks: block list, name and mapping, arguments sorted": (
        """
        tasks:
          - addition
          - name: preference
            topic_seed: 1
            n_topics: 50
        """,
        lambda s: s.tasks,
        (TaskRef("addition"), TaskRef("preference", (("n_topics", 50), ("topic_seed", 1)))),
    ),
    "tasks: a task's own warm start, kept out of its arguments and its folder name": (
        "tasks: [{name: long_sort, warm_start_steps: 300}, {name: proxy}]",
        lambda s: [(t.kwargs, t.warm_start_steps, t.slug, t.to_dict()) for t in s.tasks],
        [
            ((), 300, "long_sort", {"name": "long_sort", "warm_start_steps": 300}),
            ((), None, "proxy", "proxy"),
        ],
    ),
    # ---- policy ----
    "policy: mapping": ("policy: {preset: tiny}", lambda s: s.policy, PolicyConfig("tiny")),
    "policy: a preset name": ("policy: small", lambda s: s.policy, PolicyConfig("small")),
    "policy: absent": ("", lambda s: s.policy, PolicyConfig()),
    "policy: lora and value head": (
        "policy: {preset: tiny, lora_rank: 4, lora_alpha: 8, value_head: true}",
        lambda s: (s.policy.lora_rank, s.policy.lora_alpha, s.policy.value_head),
        (4, 8.0, True),
    ),
    "policy: checkpoint null": (
        "policy: {preset: tiny, checkpoint: null}",
        lambda s: s.policy.checkpoint,
        None,
    ),
    # ---- budget ----
    "budget: the design's keys": (
        "budget: {steps: 150, seeds: 2, eval_every: 25}",
        lambda s: s.budget,
        Budget(steps=150, seeds=2, eval_every=25),
    ),
    "budget: every key": (
        "budget: {steps: 60, seeds: 3, eval_every: 15, batch_size: 64, warm_start_steps: 0,\n"
        "         lr: 3e-4, eval_prompts: 32, reeval_seeds: 0, top_k: 0}",
        lambda s: s.budget.to_dict(),
        {
            "steps": 60,
            "seeds": 3,
            "eval_every": 15,
            "batch_size": 64,
            "warm_start_steps": 0,
            "lr": 3e-4,
            "eval_prompts": 32,
            "reeval_seeds": 0,
            "top_k": 0,
        },
    ),
    "budget: absent": ("", lambda s: s.budget, Budget()),
    # ---- base ----
    "base: a preset": ("base: dpo", lambda s: s.base, presets.get("dpo")),
    "base: an inline objective": (
        """
        base:
          data: on_policy
          group_size: 4
          advantage: {name: rloo}
          surrogate: reinforce
          kl: {coef: 0.0}
        """,
        lambda s: (s.base.group_size, s.base.advantage.name, s.base.surrogate.name, s.base.kl.coef),
        (4, "rloo", "reinforce", 0.0),
    ),
    # ---- axes ----
    "axes: absent": ("", lambda s: s.axes, ()),
    "axis: choices": (
        "axes: {advantage.name: {choices: [rloo, rank]}}",
        lambda s: s.axes,
        (Axis("advantage.name", "categorical", choices=("rloo", "rank")),),
    ),
    "axis: a bare list is choices": (
        "axes: {kl.estimator: [k1, k3]}",
        lambda s: s.axes,
        (Axis("kl.estimator", "categorical", choices=("k1", "k3")),),
    ),
    "axis: null choice of preference.name": (
        "axes: {preference.name: {choices: [null, sigmoid]}}",
        lambda s: s.axes[0].choices,
        (None, "sigmoid"),
    ),
    "axis: boolean choices": (
        "axes: {advantage.unbiased_std: {choices: [true, false]}}",
        lambda s: s.axes[0].choices,
        (True, False),
    ),
    "axis: number choices of a float field": (
        "axes: {surrogate.dual_clip: {choices: [0, 3.0]}}",
        lambda s: [(c, type(c)) for c in s.axes[0].choices],
        [(0.0, float), (3.0, float)],
    ),
    "axis: integer choices": (
        "axes: {group_size: {choices: [2, 4, 8]}}",
        lambda s: s.axes[0].choices,
        (2, 4, 8),
    ),
    "axis: data, kl.placement, preference.pairing": (
        "base: online_dpo\naxes:\n  data: [on_policy]\n  kl.placement: [loss, reward]\n"
        "  preference.pairing: {choices: [best_worst, all_pairs]}",
        lambda s: [a.choices for a in s.axes],
        [("on_policy",), ("loss", "reward"), ("best_worst", "all_pairs")],
    ),
    "axis: float range": (
        "axes: {surrogate.clip_high: {low: 0.1, high: 0.4}}",
        lambda s: s.axes,
        (Axis("surrogate.clip_high", "float", low=0.1, high=0.4),),
    ),
    "axis: float range with integer bounds": (
        "axes: {entropy_coef: {low: 0, high: 1}}",
        lambda s: [(b, type(b)) for b in (s.axes[0].low, s.axes[0].high)],
        [(0.0, float), (1.0, float)],
    ),
    "axis: log": (
        "axes: {kl.coef: {low: 1.0e-4, high: 0.1, log: true}}",
        lambda s: s.axes,
        (Axis("kl.coef", "float", low=1e-4, high=0.1, log=True),),
    ),
    "axis: exponent without a dot is a float": (
        "axes: {kl.coef: {low: 1e-4, high: 1e-1, log: true}}",
        lambda s: (s.axes[0].low, s.axes[0].high),
        (1e-4, 0.1),
    ),
    "axis: float step": (
        "axes: {entropy_coef: {low: 0.0, high: 0.01, step: 0.005}}",
        lambda s: (s.axes[0], s.axes[0].values()),
        (Axis("entropy_coef", "float", low=0.0, high=0.01, step=0.005), [0.0, 0.005, 0.01]),
    ),
    "axis: integer field": (
        "axes: {epochs: {low: 1, high: 4}}",
        lambda s: s.axes,
        (Axis("epochs", "int", low=1, high=4),),
    ),
    "axis: int true said explicitly": (
        "axes: {epochs: {low: 1, high: 4, int: true}}",
        lambda s: s.axes,
        (Axis("epochs", "int", low=1, high=4),),
    ),
    "axis: integer step": (
        "axes: {group_size: {low: 2, high: 8, step: 2}}",
        lambda s: (s.axes[0], s.axes[0].values()),
        (Axis("group_size", "int", low=2, high=8, step=2), [2, 4, 6, 8]),
    ),
    "axis: integer log": (
        "axes: {epochs: {low: 1, high: 8, log: true}}",
        lambda s: s.axes,
        (Axis("epochs", "int", low=1, high=8, log=True),),
    ),
    "axis: integer log with step 1 (Optuna's default step)": (
        "axes: {epochs: {low: 1, high: 8, log: true, step: 1}}",
        lambda s: s.axes,
        (Axis("epochs", "int", low=1, high=8, log=True),),
    ),
    "axis: optim.lr": (
        "axes: {optim.lr: {low: 3.0e-5, high: 3.0e-4, log: true}}",
        lambda s: (s.axes, s.to_spec({"optim.lr": 1e-4})[1]),
        ((Axis("optim.lr", "float", low=3e-5, high=3e-4, log=True),), {"lr": 1e-4}),
    ),
    "when: a list of values": (
        SURROGATE_NAME
        + "  surrogate.clip_high: {low: 0.1, high: 0.4, when: {surrogate.name: [ppo_clip, cispo]}}",
        lambda s: s.axes[1].when,
        (("surrogate.name", ("ppo_clip", "cispo")),),
    ),
    "when: one value": (
        SURROGATE_NAME
        + "  surrogate.clip_low: {low: 0.1, high: 0.3, when: {surrogate.name: ppo_clip}}",
        lambda s: s.axes[1].when,
        (("surrogate.name", ("ppo_clip",)),),
    ),
    "when: two axes": (
        SURROGATE_NAME
        + "  kl.estimator: [k1, k3]\n"
        + "  kl.placement:\n"
        + "    {choices: [reward], when: {surrogate.name: [ppo_clip], kl.estimator: k1}}",
        lambda s: s.axes[2].when,
        (("surrogate.name", ("ppo_clip",)), ("kl.estimator", ("k1",))),
    ),
    "when: null": (
        "axes:\n  preference.name: {choices: [null, sigmoid]}\n"
        "  advantage.name: {choices: [rloo], when: {preference.name: [null]}}",
        lambda s: s.axes[1].when,
        (("preference.name", (None,)),),
    ),
    "when: block style over several lines": (
        """
        axes:
          surrogate.name: {choices: [ppo_clip, reinforce]}
          surrogate.clip_high:
            low: 0.1
            high: 0.4
            when: {surrogate.name: [ppo_clip,
                                    reinforce]}
        """,
        lambda s: s.axes[1],
        Axis(
            "surrogate.clip_high",
            "float",
            low=0.1,
            high=0.4,
            when=(("surrogate.name", ("ppo_clip", "reinforce")),),
        ),
    ),
    # ---- baselines ----
    "baselines: a list": (
        "baselines: [ppo, grpo, dpo]",
        lambda s: s.baselines,
        ("ppo", "grpo", "dpo"),
    ),
    "baselines: one preset": ("baselines: ppo", lambda s: s.baselines, ("ppo",)),
    "baselines: absent": ("", lambda s: s.baselines, ()),
    # ---- search ----
    "search: the design's keys": (
        "search: {sampler: evolution, trials: 24, pruner: median, objectives: [final_reward]}",
        lambda s: s.search,
        SearchSettings("evolution", 24, "median", ("final_reward",), 8, 0),
    ),
    "search: only trials": (
        "search: {trials: 3}",
        lambda s: s.search,
        SearchSettings("evolution", 3, "median", ("final_reward",), 8, 0),
    ),
    "search: every key, block style": (
        """
        search:
          sampler: nsga2
          trials: 200
          pruner: hyperband
          objectives: [final_reward]
          population_size: 16
          seed: 5
          reference: rloo
          fitness: auc
          keep: 0.5
        """,
        lambda s: s.search,
        SearchSettings("nsga2", 200, "hyperband", ("final_reward",), 16, 5, "rloo", "auc", 0.5),
    ),
    "search: the reference defaults to grpo when it is a baseline": (
        "baselines: [ppo, grpo]",
        lambda s: s.search.reference,
        "grpo",
    ),
    "budget: seeds as rungs of successive halving": (
        "budget: {seeds: [3, 9, 27]}",
        lambda s: (s.budget.seeds, s.budget.rungs, s.budget.to_dict()["seeds"]),
        (27, (3, 9, 27), [3, 9, 27]),
    ),
    "budget: one number of seeds is one rung": (
        "budget: {seeds: 4}",
        lambda s: (s.budget.seeds, s.budget.rungs, s.budget.to_dict()["seeds"]),
        (4, (4,), 4),
    ),
    "search: one objective as a string": (
        "search: {trials: 3, objectives: final_reward}",
        lambda s: (s.search.objectives, s.search.directions),
        (("final_reward",), ["maximize"]),
    ),
    "search: two objectives (the pruner defaults to none)": (
        "search: {trials: 3, objectives: [final_reward, kl_to_ref]}",
        lambda s: (s.search.objectives, s.search.pruner, s.search.directions),
        (("final_reward", "kl_to_ref"), "none", ["maximize", "minimize"]),
    ),
    **{
        f"search: sampler {name}": (
            f"search: {{trials: 3, sampler: {name}}}",
            lambda s: s.search.sampler,
            name,
        )
        for name in ("evolution", "tpe", "nsga2", "cmaes", "random", "grid")
    },
    **{
        f"search: pruner {name}": (
            f"search: {{trials: 3, pruner: {name}}}",
            lambda s: s.search.pruner,
            name,
        )
        for name in ("median", "hyperband", "wilcoxon", "none")
    },
}


@pytest.mark.parametrize("form", list(FORMS))
def test_form(tmp_path: Path, form: str) -> None:
    text, read, expected = FORMS[form]
    assert read(load(tmp_path, text)) == expected


def test_policy_checkpoint_is_a_local_folder(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    space = load(tmp_path, f"policy: {{checkpoint: '{folder}', lora_rank: 8}}")
    assert (space.policy.checkpoint, space.policy.lora_rank) == (str(folder), 8)


# ---- the examples of the docs, as written --------------------------------------------------


def literal_block(doc: str) -> str:
    """The first ``::`` literal block of a docstring, dedented."""
    after = doc.split("::\n\n", 1)[1]
    lines = []
    for line in after.splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line)
    return textwrap.dedent("\n".join(lines))


def test_the_file_format_example_of_the_space_docstring(tmp_path: Path) -> None:
    space = load(tmp_path, literal_block(space_package.__doc__ or ""))
    assert space.name == "quickstart"
    assert space.tasks == (TaskRef("addition"),)
    assert space.budget == Budget(steps=150, seeds=2, eval_every=25)
    assert space.paths == ("advantage.name", "surrogate.name", "surrogate.clip_high", "kl.coef")
    assert space.axis("surrogate.clip_high").when == (("surrogate.name", ("ppo_clip", "gspo")),)
    assert space.baselines == ("ppo", "grpo", "dpo")
    assert space.search == SearchSettings(
        "evolution", 24, "median", ("final_reward",), reference="grpo"
    )


def test_the_top_level_forms_of_the_parser_docstring(tmp_path: Path) -> None:
    space = load(tmp_path, literal_block(parser.__doc__ or ""))
    assert space.tasks == (TaskRef("addition"), TaskRef("addition", (("digits", 3),)))
    assert space.policy == PolicyConfig("tiny")
    assert space.search == SearchSettings(
        "evolution", 24, "median", ("final_reward",), 8, 0, "grpo", "final", 0.5
    )


def test_the_axis_forms_of_the_axis_parser_docstring(tmp_path: Path) -> None:
    text = "axes:\n" + textwrap.indent(literal_block(axis_parser.__doc__ or ""), "  ")
    space = load(tmp_path, text)
    assert space.axes == (
        Axis("surrogate.name", "categorical", choices=("ppo_clip", "reinforce")),
        Axis("kl.estimator", "categorical", choices=("k1", "k3")),
        Axis("preference.name", "categorical", choices=(None, "sigmoid")),
        Axis("surrogate.clip_high", "float", low=0.1, high=0.4),
        Axis("kl.coef", "float", low=1e-4, high=0.1, log=True),
        Axis("entropy_coef", "float", low=0.0, high=0.01, step=0.005),
        Axis("group_size", "int", low=2, high=16, step=2),
        Axis("epochs", "int", low=1, high=4),
        Axis(
            "surrogate.clip_low",
            "float",
            low=0.1,
            high=0.3,
            when=(("surrogate.name", ("ppo_clip",)),),
        ),
        Axis(
            "advantage.name",
            "categorical",
            choices=("group_zscore", "rloo"),
            when=(("preference.name", (None,)),),
        ),
        Axis("advantage.expr", "expression", seeds=("R - mean_G",), max_depth=6),
        Axis("surrogate.expr", "expression", seeds=published_forms("drift"), max_depth=9),
    )


def test_the_search_space_example_of_the_readme(tmp_path: Path) -> None:
    section = README.read_text().split("## Searching the space", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    space = load(tmp_path, block)
    assert space.name == "quickstart"
    assert space.budget == Budget(steps=40, seeds=2, eval_every=10)
    assert space.paths == (
        "advantage.name",
        "surrogate.name",
        "surrogate.clip_high",
        "kl.coef",
        "aggregation.name",
    )
    assert space.axis("surrogate.clip_high").when == (("surrogate.name", ("ppo_clip", "cispo")),)
    assert space.baselines == ("ppo", "grpo", "dpo")
    assert space.search == SearchSettings(
        "evolution", 16, "median", ("final_reward",), reference="grpo"
    )
