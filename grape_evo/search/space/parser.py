"""A search-space document (a mapping) -> a validated :class:`SearchSpace`.

Forms of the top-level keys besides ``axes`` (see :mod:`grape_evo.search.space.axis_parser`)::

    name: quickstart                   # optional: the file's stem by default
    tasks: [addition, {name: addition, digits: 3}]   # or one task: tasks: addition; a
                                       # task's warm_start_steps replaces the budget's
    policy: {preset: tiny}             # or policy: tiny; other keys: checkpoint (a local
                                       # model folder), lora_rank, lora_alpha, value_head
    budget: {steps: 150, seeds: 2, eval_every: 25}   # also batch_size, warm_start_steps,
                                       # lr, eval_prompts, reeval_seeds, top_k; seeds may be
                                       # rungs of successive halving: seeds: [3, 9, 27]
    base: grpo                         # or an inline objective mapping
    baselines: [ppo, grpo, dpo]        # or one preset: baselines: ppo
    search: {sampler: evolution, trials: 24, pruner: median, objectives: [final_reward],
             population_size: 8, seed: 0, reference: grpo, fitness: final, keep: 0.5,
             tune_lr: [0.5, 1, 2]}     # only trials is required; reference defaults to grpo
                                       # when it is a baseline; tune_lr: [] keeps budget.lr

``objectives`` may also be one string; with two objectives the pruner defaults to ``none``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from grape_evo.objective import ObjectiveError, ObjectiveSpec, presets
from grape_evo.policy.config import PolicyConfig
from grape_evo.search.fitness import MEASURES
from grape_evo.search.space.axis_parser import parse_axes
from grape_evo.search.space.errors import SpaceError
from grape_evo.search.space.reader import Reader, type_name
from grape_evo.search.space.values import (
    OBJECTIVES,
    PRUNERS,
    SAMPLERS,
    Budget,
    SearchSettings,
    SearchSpace,
    TaskRef,
    is_number,
)
from grape_evo.tasks import build_task, is_task_file_ref, task_names

__all__ = ["BUDGET_KEYS", "POLICY_TYPES", "SEARCH_KEYS", "TOP_LEVEL_KEYS", "parse_space"]

TOP_LEVEL_KEYS = ("name", "tasks", "policy", "budget", "base", "axes", "baselines", "search")
REQUIRED_KEYS = ("tasks", "base", "search")
BUDGET_KEYS = tuple(f.name for f in fields(Budget))
SEARCH_KEYS = tuple(f.name for f in fields(SearchSettings))
POLICY_TYPES: dict[str, tuple[type, ...]] = {
    "preset": (str,),
    "checkpoint": (str, type(None)),
    "lora_rank": (int,),
    "lora_alpha": (int, float),
    "value_head": (bool,),
}


def parse_space(
    data: Mapping[str, Any], source: str = "<string>", default_name: str = "space"
) -> SearchSpace:
    """Build and validate a SearchSpace from an in-memory mapping (as ``load_space``).

    Every mistake is a SpaceError whose message starts with ``source`` and names the key; the
    space's points are checked with :meth:`SearchSpace.validate_points`.
    """
    reader = Reader(source)
    if data is None:
        raise SpaceError(
            f"{source}: the document is empty; expected a mapping with keys {list(TOP_LEVEL_KEYS)}"
        )
    if not isinstance(data, Mapping):
        raise SpaceError(
            f"{source}: the document must be a mapping with keys {list(TOP_LEVEL_KEYS)}, "
            f"got {type_name(data)}"
        )
    unknown = [k for k in data if k not in TOP_LEVEL_KEYS]
    if unknown:
        raise SpaceError(
            f"{source}: unknown top-level key(s) {unknown}; valid keys: {list(TOP_LEVEL_KEYS)}"
        )
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise SpaceError(f"{source}: missing required key(s) {missing}")
    baselines = _parse_baselines(reader, data.get("baselines"))
    space = SearchSpace(
        name=reader.string("name", data.get("name", default_name)),
        tasks=_parse_tasks(reader, data["tasks"]),
        policy=_parse_policy(reader, data.get("policy")),
        budget=_parse_budget(reader, data.get("budget")),
        base=_parse_base(reader, data["base"]),
        axes=parse_axes(reader, data.get("axes")),
        baselines=baselines,
        search=_parse_search(reader, data["search"], baselines),
        source=source,
    )
    space.validate_points()
    return space


def _parse_tasks(reader: Reader, raw: Any) -> tuple[TaskRef, ...]:
    """Registered names (``addition``), ``{name, **kwargs}`` mappings, task-file paths
    (``my_task.yaml``, relative to the space file) or ``{file, name?, fingerprint?}`` (as a
    stored space writes them)."""
    if isinstance(raw, str | Mapping):
        raw = [raw]
    items = reader.listing("tasks", raw)
    if not items:
        raise reader.error("tasks", f"needs at least one task; valid tasks: {task_names()}")
    refs: list[TaskRef] = []
    for i, item in enumerate(items):
        key = f"tasks[{i}]"
        warm_start_steps = None
        if isinstance(item, Mapping) and "warm_start_steps" in item:
            item = dict(reader.mapping(key, item))
            warm_start_steps = reader.integer(
                f"{key}.warm_start_steps",
                item.pop("warm_start_steps"),
                0,
                limit_key="budget.warm_start_steps",
            )
        if isinstance(item, str) and is_task_file_ref(item):
            ref = _task_file_ref(reader, key, {"file": item})
        elif isinstance(item, Mapping) and "file" in item:
            ref = _task_file_ref(reader, key, reader.mapping(key, item))
        else:
            ref = _registered_task_ref(reader, key, item)
        ref = replace(ref, warm_start_steps=warm_start_steps)
        if any(r.label == ref.label for r in refs):
            raise reader.error(key, f"task '{ref.label}' is listed twice")
        refs.append(ref)
    return tuple(refs)


def _registered_task_ref(reader: Reader, key: str, item: Any) -> TaskRef:
    if isinstance(item, str):
        name, kwargs = item, {}
    elif isinstance(item, Mapping):
        item = reader.mapping(key, item)
        if "name" not in item:
            raise reader.error(key, f"needs a 'name'; valid tasks: {task_names()}")
        name = reader.string(f"{key}.name", item["name"])
        kwargs = {k: v for k, v in item.items() if k != "name"}
    else:
        raise reader.error(
            key, f"must be a task name, a task file or a mapping, got {type_name(item)}"
        )
    if name not in task_names():
        raise reader.error(
            key, f"unknown task '{name}'; valid tasks: {task_names()}, or a task file (.yaml)"
        )
    ref = TaskRef(name, tuple(sorted(kwargs.items())))
    try:
        ref.build()
    except (TypeError, ValueError) as err:
        raise reader.error(key, f"cannot build task '{name}' with {kwargs}: {err}") from None
    return ref


def _task_file_ref(reader: Reader, key: str, item: Mapping[str, Any]) -> TaskRef:
    """A task file's reference: the path resolved against the space file's folder."""
    path = Path(reader.string(f"{key}.file", item["file"])).expanduser()
    if not path.is_absolute():
        path = reader.folder() / path
    try:
        task = build_task({**item, "file": str(path.resolve())})
    except (TypeError, ValueError, OSError) as err:
        raise reader.error(key, str(err)) from None
    return TaskRef.of_file(task)


def _parse_policy(reader: Reader, raw: Any) -> PolicyConfig:
    if raw is None:
        return PolicyConfig()
    if isinstance(raw, str):
        raw = {"preset": raw}
    raw = reader.mapping("policy", raw)
    reader.keys("policy", raw, list(POLICY_TYPES))
    for key, value in raw.items():
        types = POLICY_TYPES[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise reader.error(
                f"policy.{key}", f"has the wrong type: {type_name(value)} ({value!r})"
            )
        if is_number(value) and not math.isfinite(value):
            raise reader.error(f"policy.{key}", f"must be a finite number, got {value!r}")
    checkpoint = raw.get("checkpoint")
    if checkpoint is not None and not Path(checkpoint).is_dir():
        message = f"{checkpoint!r} is not a local model folder (nothing is downloaded)"
        raise reader.error("policy.checkpoint", message)
    try:
        return PolicyConfig.from_dict(dict(raw))
    except (TypeError, ValueError) as err:
        raise SpaceError(f"{reader.source}: policy: {err}") from None


def _parse_budget(reader: Reader, raw: Any) -> Budget:
    if raw is None:
        raw = {}
    raw = reader.mapping("budget", raw)
    reader.keys("budget", raw, BUDGET_KEYS)
    minimum = {"warm_start_steps": 0, "reeval_seeds": 0, "top_k": 0}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "rungs":
            raise reader.error("budget.rungs", "give the rungs as budget.seeds: [3, 9, 27]")
        if key == "seeds" and isinstance(value, list | tuple):
            values["rungs"] = _parse_rungs(reader, value)
            values["seeds"] = values["rungs"][-1]
        elif key == "lr":
            lr = reader.number("budget.lr", value)
            if lr <= 0:
                raise reader.error("budget.lr", f"must be > 0, got {lr!r}")
            values[key] = float(lr)
        else:
            values[key] = reader.integer(f"budget.{key}", value, minimum.get(key, 1))
    budget = Budget(**values)
    try:
        budget.train_config(seed=0)
    except ValueError as err:
        raise SpaceError(f"{reader.source}: budget: {err}") from None
    return budget


def _parse_rungs(reader: Reader, raw: list[Any]) -> tuple[int, ...]:
    rungs = [reader.integer(f"budget.seeds[{i}]", v, 1) for i, v in enumerate(raw)]
    if not rungs:
        raise reader.error("budget.seeds", "must not be an empty list")
    if any(b <= a for a, b in itertools.pairwise(rungs)):
        raise reader.error("budget.seeds", f"rungs must increase, got {rungs}")
    return tuple(rungs)


def _parse_base(reader: Reader, raw: Any) -> ObjectiveSpec:
    if isinstance(raw, str):
        if raw not in presets.names():
            raise reader.error("base", f"unknown preset '{raw}'; valid presets: {presets.names()}")
        return presets.get(raw)
    if isinstance(raw, Mapping):
        try:
            return ObjectiveSpec.from_dict(raw)
        except ObjectiveError as err:
            raise reader.error("base", str(err)) from None
    raise reader.error(
        "base", f"must be a preset name or an objective mapping, got {type_name(raw)} ({raw!r})"
    )


def _parse_baselines(reader: Reader, raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        raw = [raw]
    out: list[str] = []
    for i, item in enumerate(reader.listing("baselines", raw)):
        name = reader.string(f"baselines[{i}]", item)
        if name not in presets.names():
            raise reader.error(
                f"baselines[{i}]", f"unknown preset '{name}'; valid presets: {presets.names()}"
            )
        if name in out:
            raise reader.error(f"baselines[{i}]", f"'{name}' is listed twice")
        out.append(name)
    return tuple(out)


def _parse_search(reader: Reader, raw: Any, baselines: tuple[str, ...]) -> SearchSettings:
    raw = reader.mapping("search", raw)
    reader.keys("search", raw, SEARCH_KEYS)
    if "trials" not in raw:
        raise reader.error("search", "missing required key 'trials'")
    sampler = reader.string("search.sampler", raw.get("sampler", "evolution"))
    if sampler not in SAMPLERS:
        raise reader.error(
            "search.sampler", f"unknown sampler '{sampler}'; valid: {list(SAMPLERS)}"
        )
    trials = reader.integer("search.trials", raw["trials"], 1)
    objectives = _parse_objectives(reader, raw.get("objectives", ["final_reward"]))
    multi = len(objectives) > 1
    pruner = reader.string("search.pruner", raw.get("pruner", "none" if multi else "median"))
    if pruner not in PRUNERS:
        raise reader.error("search.pruner", f"unknown pruner '{pruner}'; valid: {list(PRUNERS)}")
    if multi and pruner != "none":
        raise reader.error(
            "search.pruner",
            f"pruner '{pruner}' cannot prune a study with 2 objectives; use pruner: none",
        )
    if multi and sampler == "cmaes":
        raise reader.error(
            "search.sampler", "cmaes supports one objective only; use nsga2, tpe or evolution"
        )
    population = reader.integer("search.population_size", raw.get("population_size", 8), 2)
    seed = reader.integer("search.seed", raw.get("seed", 0), 0)
    reference = raw.get("reference", "grpo" if "grpo" in baselines else None)
    if reference is not None:
        reference = reader.string("search.reference", reference)
        if reference not in presets.names():
            raise reader.error(
                "search.reference", f"unknown preset '{reference}'; valid: {presets.names()}"
            )
    fitness = reader.string("search.fitness", raw.get("fitness", "final"))
    if fitness not in MEASURES:
        valid = list(MEASURES)
        raise reader.error("search.fitness", f"unknown fitness '{fitness}'; valid: {valid}")
    keep = float(reader.number("search.keep", raw.get("keep", 1 / 3)))
    if not 0 < keep < 1:
        raise reader.error("search.keep", f"must be in (0, 1), got {keep}")
    raw_tune = raw.get("tune_lr", [0.5, 1.0, 2.0])
    tune = [] if raw_tune is None else reader.listing("search.tune_lr", raw_tune)
    multiples = tuple(float(reader.number(f"search.tune_lr[{i}]", m)) for i, m in enumerate(tune))
    if any(m <= 0 for m in multiples) or len(set(multiples)) != len(multiples):
        raise reader.error("search.tune_lr", f"must be distinct positive multiples, got {tune}")
    return SearchSettings(
        sampler, trials, pruner, objectives, population, seed, reference, fitness, keep, multiples
    )


def _parse_objectives(reader: Reader, raw: Any) -> tuple[str, ...]:
    if isinstance(raw, str):
        raw = [raw]
    objectives = reader.listing("search.objectives", raw)
    if not 1 <= len(objectives) <= 2:
        raise reader.error(
            "search.objectives", f"needs 1 or 2 entries from {list(OBJECTIVES)}, got {objectives}"
        )
    for i, o in enumerate(objectives):
        o = reader.string(f"search.objectives[{i}]", o)
        if o not in OBJECTIVES:
            raise reader.error(
                "search.objectives", f"unknown objective '{o}'; valid: {list(OBJECTIVES)}"
            )
    if len(set(objectives)) != len(objectives):
        raise reader.error("search.objectives", f"lists an objective twice: {objectives}")
    if objectives[0] != "final_reward":
        # a trial's values are (score, kl_to_ref) in that order; the directions follow this list
        raise reader.error(
            "search.objectives",
            f"must start with final_reward (the fitness), got {objectives}; "
            "e.g. [final_reward, kl_to_ref]",
        )
    return tuple(objectives)
