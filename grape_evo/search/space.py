"""Search spaces: a YAML file that says which objectives to try, on what, with which budget.

The file format (DESIGN.md section 5; the keys are a **contract**)::

    name: quickstart
    tasks: [addition]                 # task names, or {name: addition, digits: 3}
    policy: {preset: tiny}            # PolicyConfig fields
    budget: {steps: 150, seeds: 2, eval_every: 25}
    base: grpo                        # a preset name or an inline objective mapping
    axes:                             # dotted paths into the objective spec (or optim.lr)
      advantage.name: {choices: [group_zscore, group_mean, rloo, rank]}
      surrogate.name: {choices: [reinforce, ppo_clip, gspo, cispo]}
      surrogate.clip_high: {low: 0.1, high: 0.4, when: {surrogate.name: [ppo_clip, gspo]}}
      kl.coef: {low: 1.0e-4, high: 0.1, log: true}
    baselines: [ppo, grpo, dpo]
    search: {sampler: evolution, trials: 24, pruner: median, objectives: [final_reward]}

Axes
    ``choices`` (categorical: strings, numbers, booleans; ``null`` is allowed for
    ``preference.name`` and means "no preference loss"), or ``low``/``high`` numbers with
    optional ``log`` and ``step``; integer fields (``group_size``, ``epochs``, integer component
    parameters) take integer bounds (``int: true`` may be said explicitly). ``when: {path:
    [values]}`` makes an axis conditional: it is active only when every listed axis is active
    and holds one of the listed values; ``when`` may only name categorical axes declared
    earlier.

Paths
    ``data``, ``group_size``, ``epochs``, ``entropy_coef``, ``advantage.<name|param>``,
    ``surrogate.<name|param>``, ``aggregation.<name|param>``,
    ``kl.<estimator|placement|coef>``, ``preference.<name|pairing|param>`` and ``optim.lr``
    (the learning rate: a training setting, returned as an override by
    :meth:`SearchSpace.to_spec`). A ``<param>`` must be a parameter of some registered
    component of that kind.

Loading is strict: every mistake is a :class:`SpaceError` whose message starts with the file
(``<string>`` for in-memory data) and names the key. :func:`load_space` also checks that every
point the space can produce is a valid :class:`~grape_evo.objective.ObjectiveSpec`
(:meth:`SearchSpace.validate_points`), so a campaign never discovers an invalid candidate
halfway through.

YAML is read with a :class:`yaml.SafeLoader` subclass that additionally rejects duplicate keys,
recursive aliases and documents that expand to more than :data:`MAX_NODES` nodes (alias
"billion laughs" bombs), and reads ``1e-4`` as a float (plain YAML 1.1 reads it as a string).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from grape_evo.objective import REGISTRIES, ObjectiveError, ObjectiveSpec, presets
from grape_evo.objective.registry import Registry
from grape_evo.objective.spec import DATA_MODES, KL_PLACEMENTS, PAIRINGS
from grape_evo.policy.config import PolicyConfig
from grape_evo.tasks import get_task, task_names
from grape_evo.training.config import TrainConfig

if TYPE_CHECKING:
    import optuna

    from grape_evo.tasks import Task

__all__ = [
    "LIMITS",
    "MAX_FILE_BYTES",
    "MAX_NODES",
    "MAX_VALIDATED_POINTS",
    "OBJECTIVES",
    "PRUNERS",
    "SAMPLERS",
    "Axis",
    "Budget",
    "SearchSettings",
    "SearchSpace",
    "SpaceError",
    "TaskRef",
    "axis_paths",
    "load_space",
    "parse_space",
]

SAMPLERS = ("evolution", "tpe", "nsga2", "cmaes", "random", "grid")
"""Valid ``search.sampler`` values."""
PRUNERS = ("median", "hyperband", "wilcoxon", "none")
"""Valid ``search.pruner`` values."""
OBJECTIVES = ("final_reward", "kl_to_ref")
"""Valid ``search.objectives`` entries (``final_reward`` is maximised, ``kl_to_ref`` minimised)."""
TOP_LEVEL_KEYS = ("name", "tasks", "policy", "budget", "base", "axes", "baselines", "search")
REQUIRED_KEYS = ("tasks", "base", "search")
AXIS_KEYS = ("choices", "low", "high", "log", "int", "step", "when")
BUDGET_KEYS = (
    "steps",
    "seeds",
    "eval_every",
    "batch_size",
    "warm_start_steps",
    "lr",
    "eval_prompts",
    "reeval_seeds",
    "top_k",
)
SEARCH_KEYS = ("sampler", "trials", "pruner", "objectives", "population_size", "seed")
POLICY_TYPES: dict[str, tuple[type, ...]] = {
    "preset": (str,),
    "checkpoint": (str, type(None)),
    "lora_rank": (int,),
    "lora_alpha": (int, float),
    "value_head": (bool,),
}

MAX_NODES = 10_000
# Upper bounds of a space's sizes: a typo such as ``steps: 1e12`` must be an error at load
# time, not a campaign that trains for a year.
LIMITS: dict[str, int] = {
    "budget.steps": 10**6,
    "budget.seeds": 1000,
    "budget.eval_every": 10**6,
    "budget.batch_size": 2**16,
    "budget.warm_start_steps": 10**6,
    "budget.eval_prompts": 10**6,
    "budget.reeval_seeds": 1000,
    "budget.top_k": 1000,
    "search.trials": 10**6,
    "search.population_size": 10**5,
}
"""Largest YAML document accepted, in nodes after alias expansion (guards alias bombs)."""
MAX_FILE_BYTES = 1_000_000
"""Largest search-space file read."""
MAX_VALIDATED_POINTS = 2000
"""Above this many points, :meth:`SearchSpace.validate_points` checks a seeded sample."""

_COMPONENT_KINDS = ("advantage", "surrogate", "aggregation", "preference")
AxisKind = Literal["categorical", "float", "int"]
Condition = tuple[tuple[str, tuple[Any, ...]], ...]


class SpaceError(ValueError):
    """A user-facing error in a search space; the message starts with the file and the key."""


# ---------------------------------------------------------------------------------------------
# values
# ---------------------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _same(a: Any, b: Any) -> bool:
    """Equality that keeps booleans apart from numbers (``True`` is not ``1`` here)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if _is_number(a) and _is_number(b):
        return a == b
    return type(a) is type(b) and a == b


def _value_in(value: Any, allowed: Sequence[Any]) -> bool:
    return any(_same(value, a) for a in allowed)


def _fmt(value: Any) -> str:
    """A value as it would be written in YAML flow style."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format(value, ".6g")
    return str(value)


def _fmt_point(values: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in values.items()) + "}"


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


class _Ctx:
    """Where errors point: the source (file path or ``<string>``)."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, key: str, message: str) -> SpaceError:
        return SpaceError(f"{self.source}: {key}: {message}")

    def mapping(self, key: str, value: Any) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.error(key, f"must be a mapping, got {_type_name(value)} ({value!r})")
        for k in value:
            if not isinstance(k, str):
                raise self.error(key, f"keys must be strings, got {k!r}")
        return value

    def keys(self, key: str, value: Mapping[str, Any], valid: Sequence[str]) -> None:
        unknown = [k for k in value if k not in valid]
        if unknown:
            raise self.error(key, f"unknown key(s) {unknown}; valid keys: {list(valid)}")

    def string(self, key: str, value: Any) -> str:
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, got {_type_name(value)} ({value!r})")
        return value

    def boolean(self, key: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {_type_name(value)} ({value!r})")
        return value

    def number(self, key: str, value: Any) -> float | int:
        if not _is_number(value):
            hint = ""
            if isinstance(value, str):
                with contextlib.suppress(ValueError):
                    float(value)
                    hint = " (quoted? write the number without quotes)"
            raise self.error(key, f"must be a number, got {_type_name(value)} ({value!r}){hint}")
        if not math.isfinite(value):
            raise self.error(key, f"must be a finite number, got {value!r}")
        return value

    def integer(self, key: str, value: Any, minimum: int | None = None) -> int:
        if not _is_number(value) or not isinstance(value, int):
            raise self.error(key, f"must be an integer, got {_type_name(value)} ({value!r})")
        if minimum is not None and value < minimum:
            raise self.error(key, f"must be an integer >= {minimum}, got {value!r}")
        limit = LIMITS.get(key)
        if limit is not None and value > limit:
            raise self.error(key, f"{value} is above the limit of {limit}")
        return value

    def listing(self, key: str, value: Any) -> list[Any]:
        if not isinstance(value, list | tuple):
            raise self.error(key, f"must be a list, got {_type_name(value)} ({value!r})")
        return list(value)


# ---------------------------------------------------------------------------------------------
# axis paths
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Field:
    """What an axis path points at: its value type and, for names, the valid values."""

    kind: Literal["str", "bool", "int", "float"]
    names: tuple[Any, ...] | None = None  # valid values of a string field (None = any string)
    what: str = "value"  # how an unknown name is described in errors


def _param_field(registry: Registry, param: str) -> _Field | None:
    for component in registry:
        if param in component.params:
            p = component.params[param]
            if p.kind is bool:
                return _Field("bool")
            if p.kind is str:
                return _Field("str", p.choices, f"value of {registry.kind} parameter '{param}'")
            return _Field("int" if p.kind is int else "float")
    return None


def _field_of(path: str) -> _Field | None:
    """The field an axis path names, or None if the path is not an axis path."""
    simple = {
        "data": _Field("str", DATA_MODES, "data mode"),
        "group_size": _Field("int"),
        "epochs": _Field("int"),
        "entropy_coef": _Field("float"),
        "optim.lr": _Field("float"),
        "kl.estimator": _Field("str", tuple(REGISTRIES["kl"].names()), "kl estimator"),
        "kl.placement": _Field("str", KL_PLACEMENTS, "kl placement"),
        "kl.coef": _Field("float"),
        "preference.pairing": _Field("str", PAIRINGS, "pairing"),
    }
    if path in simple:
        return simple[path]
    kind, _, rest = path.partition(".")
    if kind not in _COMPONENT_KINDS or not rest or "." in rest:
        return None
    registry = REGISTRIES[kind]
    if rest == "name":
        names: tuple[Any, ...] = tuple(registry.names())
        if kind == "preference":
            names = (None, *names)
        return _Field("str", names, f"{registry.kind} name")
    return _param_field(registry, rest)


def axis_paths() -> list[str]:
    """Every valid axis path (component parameters read from the registries)."""
    paths = ["data", "group_size", "epochs", "entropy_coef", "optim.lr"]
    for kind in ("advantage", "surrogate", "aggregation"):
        paths += [f"{kind}.name"] + [
            f"{kind}.{p}" for p in sorted(REGISTRIES[kind].all_param_names())
        ]
    paths += ["kl.estimator", "kl.placement", "kl.coef", "preference.name", "preference.pairing"]
    paths += [f"preference.{p}" for p in sorted(REGISTRIES["preference"].all_param_names())]
    return paths


# ---------------------------------------------------------------------------------------------
# value objects
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Axis:
    """One searchable dimension: a dotted path into the objective spec (or ``optim.lr``).

    ``kind`` is ``categorical`` (``choices``), ``float`` or ``int`` (``low``/``high`` inclusive,
    optional ``log`` scale and ``step``). ``when`` is a tuple of ``(axis path, allowed values)``
    pairs: the axis is active only when every named axis is active and holds an allowed value.
    """

    path: str
    kind: AxisKind
    choices: tuple[Any, ...] | None = None
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    when: Condition = ()

    def is_active(self, params: Mapping[str, Any]) -> bool:
        """Whether this axis is active given the values of (active) earlier axes.

        An axis a condition names counts as inactive when it is missing from ``params``.
        """
        return all(
            path in params and _value_in(params[path], allowed) for path, allowed in self.when
        )

    @property
    def numeric(self) -> bool:
        return self.kind != "categorical"

    def values(self) -> list[Any]:
        """The grid of this axis: its choices; a numeric axis with ``step`` every step from
        ``low`` to ``high``; a numeric axis without ``step`` just ``[low, high]``."""
        if self.choices is not None:
            return list(self.choices)
        assert self.low is not None and self.high is not None
        if self.step is None:
            return [self.low, self.high]
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1, int(self.step)))
        n = math.floor((self.high - self.low) / self.step + 1e-9)
        return [round(self.low + i * self.step, 12) for i in range(n + 1)]

    def extremes(self) -> list[Any]:
        """The values :meth:`SearchSpace.validate_points` tries: choices, or low and high."""
        if self.choices is not None:
            return list(self.choices)
        return [self.low, self.high]

    def distribution(self) -> BaseDistribution:
        """The Optuna distribution :meth:`SearchSpace.suggest` samples this axis from."""
        if self.choices is not None:
            return CategoricalDistribution(self.choices)
        if self.kind == "int":
            step = 1 if self.step is None else int(self.step)
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=step)  # type: ignore[arg-type]
        return FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)  # type: ignore[arg-type]

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a value this axis can take."""
        if self.choices is not None:
            return _value_in(value, self.choices)
        if not _is_number(value) or not math.isfinite(value):
            return False
        if self.kind == "int" and not float(value).is_integer():
            return False
        tol = 1e-9 * max(1.0, abs(self.low), abs(self.high))  # type: ignore[arg-type]
        return self.low - tol <= value <= self.high + tol  # type: ignore[operator]

    def to_dict(self) -> dict[str, Any]:
        """The axis as written in YAML (without its path)."""
        out: dict[str, Any] = {}
        if self.choices is not None:
            out["choices"] = list(self.choices)
        else:
            out.update(low=self.low, high=self.high)
            if self.kind == "int":
                out["int"] = True
            if self.log:
                out["log"] = True
            if self.step is not None:
                out["step"] = self.step
        if self.when:
            out["when"] = {path: list(allowed) for path, allowed in self.when}
        return out


@dataclass(frozen=True)
class Budget:
    """How long each candidate trains and how it is evaluated.

    ``steps``, ``eval_every``, ``batch_size``, ``warm_start_steps``, ``lr`` and ``eval_prompts``
    go into every run's :class:`~grape_evo.training.config.TrainConfig` (defaults are
    TrainConfig's). Every trial is the mean over ``seeds`` runs; the ``top_k`` best candidates
    are re-evaluated on ``reeval_seeds`` fresh seeds before they are called discoveries.
    """

    steps: int = TrainConfig.steps
    seeds: int = 1
    eval_every: int = TrainConfig.eval_every
    batch_size: int = TrainConfig.batch_size
    warm_start_steps: int = TrainConfig.warm_start_steps
    lr: float = TrainConfig.lr
    eval_prompts: int = TrainConfig.eval_prompts
    reeval_seeds: int = 3
    top_k: int = 3

    def train_config(self, seed: int, lr: float | None = None, device: str = "cpu") -> TrainConfig:
        """The TrainConfig of one run with ``seed`` (``lr`` overrides the budget's)."""
        return TrainConfig(
            steps=self.steps,
            seed=seed,
            lr=self.lr if lr is None else float(lr),
            batch_size=self.batch_size,
            eval_every=self.eval_every,
            eval_prompts=self.eval_prompts,
            warm_start_steps=self.warm_start_steps,
            device=device,
        )

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in BUDGET_KEYS}


@dataclass(frozen=True)
class SearchSettings:
    """How the study searches: sampler, number of trials, pruner and objectives.

    ``objectives`` holds one or two of :data:`OBJECTIVES`; ``final_reward`` is maximised and
    ``kl_to_ref`` minimised. ``population_size`` is the evolution sampler's (and NSGA-II's)
    generation size; ``seed`` seeds the sampler.
    """

    sampler: str
    trials: int
    pruner: str
    objectives: tuple[str, ...]
    population_size: int = 8
    seed: int = 0

    @property
    def directions(self) -> list[str]:
        """Optuna study directions, one per objective."""
        return ["maximize" if o == "final_reward" else "minimize" for o in self.objectives]

    def to_dict(self) -> dict[str, Any]:
        return {
            "sampler": self.sampler,
            "trials": self.trials,
            "pruner": self.pruner,
            "objectives": list(self.objectives),
            "population_size": self.population_size,
            "seed": self.seed,
        }


@dataclass(frozen=True)
class TaskRef:
    """A task by registered name plus constructor keyword arguments (sorted pairs)."""

    name: str
    kwargs: tuple[tuple[str, Any], ...] = ()

    def build(self) -> Task:
        """A fresh task instance (``get_task(name, **kwargs)``)."""
        return get_task(self.name, **dict(self.kwargs))

    @property
    def label(self) -> str:
        """``addition`` or ``addition(digits=3)``: unique per distinct task in a space."""
        if not self.kwargs:
            return self.name
        return f"{self.name}(" + ", ".join(f"{k}={v!r}" for k, v in self.kwargs) + ")"

    def to_dict(self) -> str | dict[str, Any]:
        return self.name if not self.kwargs else {"name": self.name, **dict(self.kwargs)}


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space: what to train on, the axes, the budget and how to search."""

    name: str
    tasks: tuple[TaskRef, ...]
    policy: PolicyConfig
    budget: Budget
    base: ObjectiveSpec
    axes: tuple[Axis, ...]
    baselines: tuple[str, ...]
    search: SearchSettings
    source: str = "<string>"

    # ---- axes ---------------------------------------------------------------------------
    @property
    def paths(self) -> tuple[str, ...]:
        """Axis paths in declaration order."""
        return tuple(a.path for a in self.axes)

    def axis(self, path: str) -> Axis:
        """The axis at ``path`` (KeyError if there is none)."""
        for a in self.axes:
            if a.path == path:
                return a
        raise KeyError(path)

    def active_axes(self, params: Mapping[str, Any]) -> list[Axis]:
        """The axes active under ``params``, in declaration order.

        ``params`` holds values of axes; a value counts only if its axis is itself active.
        """
        active: list[Axis] = []
        seen: dict[str, Any] = {}
        for axis in self.axes:
            if axis.is_active(seen):
                active.append(axis)
                if axis.path in params:
                    seen[axis.path] = params[axis.path]
        return active

    def distributions(self) -> dict[str, BaseDistribution]:
        """Optuna distributions of every axis, by path."""
        return {a.path: a.distribution() for a in self.axes}

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Ask ``trial`` for a value of every active axis (axis path = Optuna parameter name)."""
        values: dict[str, Any] = {}
        for axis in self.axes:
            if not axis.is_active(values):
                continue
            if axis.choices is not None:
                value = trial.suggest_categorical(axis.path, list(axis.choices))
            elif axis.kind == "int":
                value = trial.suggest_int(
                    axis.path,
                    int(axis.low),  # type: ignore[arg-type]
                    int(axis.high),  # type: ignore[arg-type]
                    step=1 if axis.step is None else int(axis.step),
                    log=axis.log,
                )
            else:
                value = trial.suggest_float(
                    axis.path,
                    float(axis.low),  # type: ignore[arg-type]
                    float(axis.high),  # type: ignore[arg-type]
                    step=axis.step,
                    log=axis.log,
                )
            values[axis.path] = value
        return values

    def grid(self) -> dict[str, list[Any]]:
        """A search space for Optuna's GridSampler: every axis's :meth:`Axis.values`."""
        return {a.path: a.values() for a in self.axes}

    # ---- points -> specs -----------------------------------------------------------------
    def active_values(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The entries of ``params`` whose axes are active, in declaration order.

        Raises SpaceError for a key that is not an axis or a value its axis cannot take.
        """
        unknown = [k for k in params if k not in self.paths]
        if unknown:
            raise SpaceError(
                f"{self.source}: params: unknown axis path(s) {unknown}; axes: {list(self.paths)}"
            )
        values: dict[str, Any] = {}
        for axis in self.axes:
            if axis.path not in params or not axis.is_active(values):
                continue
            value = params[axis.path]
            if not axis.contains(value):
                where = (
                    f"choices {list(axis.choices)}"
                    if axis.choices is not None
                    else f"[{axis.low}, {axis.high}]"
                )
                raise SpaceError(
                    f"{self.source}: params: {axis.path}: {value!r} is not in the axis's {where}"
                )
            if axis.kind == "int":
                value = int(value)
            elif axis.kind == "float":
                value = float(value)
            values[axis.path] = value
        return values

    def to_spec(
        self, params: Mapping[str, Any], name: str = "candidate"
    ) -> tuple[ObjectiveSpec, dict[str, Any]]:
        """The objective at ``params`` and the training overrides (``{"lr": ...}``).

        Values of inactive axes are ignored; active axes missing from ``params`` keep the base
        value. Setting ``<kind>.name`` to the base component's name keeps the base component's
        parameters; setting it to another name switches the component, which starts from its
        own registered defaults (the papers' settings: GSPO's 3e-4 clip, SimPO's beta 2.0, not
        the base's PPO clip 0.2 or DPO beta 0.1). Then the axis values under ``<kind>.`` are
        applied; a value for a parameter the new component lacks stays *dormant* (kept by
        ``to_dict``, dropped by ``canonical``). ``preference.name: null`` removes the
        preference loss (and ignores the other ``preference.*`` values).
        """
        values = self.active_values(params)
        try:
            return self._build(values, name)
        except ObjectiveError as err:
            raise SpaceError(
                f"{self.source}: the point {_fmt_point(values)} is invalid: {err}"
            ) from None

    def _build(self, values: Mapping[str, Any], name: str) -> tuple[ObjectiveSpec, dict[str, Any]]:
        d = self.base.to_dict()
        d["name"] = name
        overrides: dict[str, Any] = {}
        by_prefix: dict[str, dict[str, Any]] = {}
        for path, value in values.items():
            if path == "optim.lr":
                overrides["lr"] = value
            elif "." in path:
                prefix, _, key = path.partition(".")
                by_prefix.setdefault(prefix, {})[key] = value
            else:
                d[path] = value
        for kind in ("advantage", "surrogate", "aggregation"):
            if kind in by_prefix:
                d[kind] = _switch(d[kind], by_prefix[kind])
        if "kl" in by_prefix:
            d["kl"] = {**d["kl"], **by_prefix["kl"]}
        if "preference" in by_prefix:
            d["preference"] = _switch_preference(d["preference"], by_prefix["preference"])
        return ObjectiveSpec.from_dict(d), overrides

    def iter_points(self) -> Iterator[dict[str, Any]]:
        """Every combination of categorical values (respecting ``when``) with each numeric
        axis at its low and high end, in declaration order (lazily)."""

        def walk(i: int, values: dict[str, Any]) -> Iterator[dict[str, Any]]:
            if i == len(self.axes):
                yield dict(values)
                return
            axis = self.axes[i]
            if not axis.is_active(values):
                yield from walk(i + 1, values)
                return
            for value in axis.extremes():
                values[axis.path] = value
                yield from walk(i + 1, values)
            del values[axis.path]

        yield from walk(0, {})

    def sample_points(self, n: int, seed: int = 0) -> list[dict[str, Any]]:
        """``n`` points drawn (deterministically from ``seed``) like :meth:`iter_points`'s."""
        rng = random.Random(seed)
        points = []
        for _ in range(n):
            values: dict[str, Any] = {}
            for axis in self.axes:
                if axis.is_active(values):
                    values[axis.path] = rng.choice(axis.extremes())
            points.append(values)
        return points

    def validate_points(self) -> None:
        """Check that every point the space can produce is a valid objective.

        Tries every point of :meth:`iter_points`; when there are more than
        :data:`MAX_VALIDATED_POINTS`, a seeded sample of that many. Raises SpaceError naming
        the offending point.
        """
        points = list(itertools.islice(self.iter_points(), MAX_VALIDATED_POINTS + 1))
        if len(points) > MAX_VALIDATED_POINTS:
            points = self.sample_points(MAX_VALIDATED_POINTS)
        for values in points:
            try:
                self._build(values, "candidate")
            except ObjectiveError as err:
                raise SpaceError(
                    f"{self.source}: axes: the point {_fmt_point(values)} is invalid: {err}"
                ) from None

    # ---- misc -----------------------------------------------------------------------------
    def baseline_specs(self) -> dict[str, ObjectiveSpec]:
        """The baselines as specs, by preset name."""
        return {name: presets.get(name) for name in self.baselines}

    def to_dict(self) -> dict[str, Any]:
        """The space as a YAML-able mapping; ``parse_space(space.to_dict())`` rebuilds it."""
        return {
            "name": self.name,
            "tasks": [t.to_dict() for t in self.tasks],
            "policy": self.policy.to_dict(),
            "budget": self.budget.to_dict(),
            "base": self.base.to_dict(),
            "axes": {a.path: a.to_dict() for a in self.axes},
            "baselines": list(self.baselines),
            "search": self.search.to_dict(),
        }


def _switch(base: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A component dict: ``base``, or the component ``values['name']`` with its registered
    defaults when that differs from the base's name, then the other ``values`` on top."""
    name = values.get("name", base["name"])
    out = dict(base) if name == base["name"] else {"name": name}
    out.update({k: v for k, v in values.items() if k != "name"})
    return out


def _switch_preference(base: Mapping[str, Any] | None, values: Mapping[str, Any]) -> Any:
    if "name" in values and values["name"] is None:
        return None
    if base is None:
        return dict(values)  # without a name, from_dict reports the missing name
    rest = {k: v for k, v in base.items() if k != "pairing"}
    out = _switch(rest, values)
    out.setdefault("pairing", base.get("pairing", "best_worst"))
    return out


# ---------------------------------------------------------------------------------------------
# YAML
# ---------------------------------------------------------------------------------------------


class _GuardedLoader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` (no dot) as a float, like YAML 1.2 and JSON."""


_GuardedLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _check_nodes(root: yaml.Node, limit: int = MAX_NODES) -> None:
    """Reject alias bombs, recursive aliases and duplicate keys in a composed document."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    # (node, children iterator, running total): an explicit stack, so depth costs no recursion
    stack: list[tuple[yaml.Node, Iterator[yaml.Node], int]] = []

    def children(node: yaml.Node) -> Iterator[yaml.Node]:
        if isinstance(node, yaml.SequenceNode):
            return iter(node.value)
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, _ in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value != "<<":
                    if key.value in seen:
                        mark = key.start_mark
                        raise ValueError(
                            f"duplicate key '{key.value}' (line {mark.line + 1}, "
                            f"column {mark.column + 1})"
                        )
                    seen.add(key.value)
            return iter([n for pair in node.value for n in pair])
        return iter(())

    stack.append((root, children(root), 1))
    on_path.add(id(root))
    while stack:
        node, it, total = stack[-1]
        child = next(it, None)
        if child is None:
            stack.pop()
            on_path.discard(id(node))
            sizes[id(node)] = total
            if stack:
                parent, pit, ptotal = stack[-1]
                stack[-1] = (parent, pit, ptotal + total)
                if ptotal + total > limit:
                    raise ValueError(
                        f"the document expands to more than {limit} nodes (alias bomb?)"
                    )
            continue
        if id(child) in sizes:
            total += sizes[id(child)]
            stack[-1] = (node, it, total)
            if total > limit:
                raise ValueError(f"the document expands to more than {limit} nodes (alias bomb?)")
            continue
        if id(child) in on_path:
            raise ValueError("recursive alias (a node that contains itself)")
        on_path.add(id(child))
        stack.append((child, children(child), 1))
    if sizes[id(root)] > limit:
        raise ValueError(f"the document expands to more than {limit} nodes (alias bomb?)")


def _load_yaml(text: str, source: str) -> Any:
    try:
        loader = _GuardedLoader(text)  # the reader already rejects control characters
    except yaml.YAMLError as err:
        raise SpaceError(f"{source}: invalid YAML: {' '.join(str(err).split())}") from None
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise SpaceError(f"{source}: invalid YAML: nested too deeply") from None
        if node is None:
            return None
        try:
            _check_nodes(node)
        except ValueError as err:
            raise SpaceError(f"{source}: invalid YAML: {err}") from None
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        raise SpaceError(f"{source}: invalid YAML: {err}") from None
    finally:
        loader.dispose()


def load_space(path: str | Path) -> SearchSpace:
    """Read, parse and validate a search-space YAML file (errors start with ``path``)."""
    source = str(path)
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise SpaceError(
                f"{source}: file too large ({size} bytes; at most {MAX_FILE_BYTES} accepted)"
            )
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise SpaceError(f"{source}: cannot read search space ({err.strerror or err})") from None
    except UnicodeDecodeError as err:
        raise SpaceError(f"{source}: cannot read search space (not UTF-8: {err})") from None
    data = _load_yaml(text, source)
    return parse_space(data, source=source, default_name=p.stem)


# ---------------------------------------------------------------------------------------------
# parsing
# ---------------------------------------------------------------------------------------------


def parse_space(
    data: Mapping[str, Any], source: str = "<string>", default_name: str = "space"
) -> SearchSpace:
    """Build and validate a SearchSpace from an in-memory mapping (as :func:`load_space`)."""
    ctx = _Ctx(source)
    if data is None:
        raise SpaceError(
            f"{source}: the document is empty; expected a mapping with keys {list(TOP_LEVEL_KEYS)}"
        )
    if not isinstance(data, Mapping):
        raise SpaceError(
            f"{source}: the document must be a mapping with keys {list(TOP_LEVEL_KEYS)}, "
            f"got {_type_name(data)}"
        )
    unknown = [k for k in data if k not in TOP_LEVEL_KEYS]
    if unknown:
        raise SpaceError(
            f"{source}: unknown top-level key(s) {unknown}; valid keys: {list(TOP_LEVEL_KEYS)}"
        )
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise SpaceError(f"{source}: missing required key(s) {missing}")
    name = ctx.string("name", data.get("name", default_name))
    tasks = _parse_tasks(ctx, data["tasks"])
    policy = _parse_policy(ctx, data.get("policy"))
    budget = _parse_budget(ctx, data.get("budget"))
    base = _parse_base(ctx, data["base"])
    axes = _parse_axes(ctx, data.get("axes"))
    baselines = _parse_baselines(ctx, data.get("baselines"))
    search = _parse_search(ctx, data["search"])
    space = SearchSpace(
        name=name,
        tasks=tasks,
        policy=policy,
        budget=budget,
        base=base,
        axes=axes,
        baselines=baselines,
        search=search,
        source=source,
    )
    space.validate_points()
    return space


def _parse_tasks(ctx: _Ctx, raw: Any) -> tuple[TaskRef, ...]:
    if isinstance(raw, str | Mapping):
        raw = [raw]
    items = ctx.listing("tasks", raw)
    if not items:
        raise ctx.error("tasks", f"needs at least one task; valid tasks: {task_names()}")
    refs: list[TaskRef] = []
    for i, item in enumerate(items):
        key = f"tasks[{i}]"
        if isinstance(item, str):
            name, kwargs = item, {}
        elif isinstance(item, Mapping):
            item = ctx.mapping(key, item)
            if "name" not in item:
                raise ctx.error(key, f"needs a 'name'; valid tasks: {task_names()}")
            name = ctx.string(f"{key}.name", item["name"])
            kwargs = {k: v for k, v in item.items() if k != "name"}
        else:
            raise ctx.error(key, f"must be a task name or a mapping, got {_type_name(item)}")
        if name not in task_names():
            raise ctx.error(key, f"unknown task '{name}'; valid tasks: {task_names()}")
        ref = TaskRef(name, tuple(sorted(kwargs.items())))
        try:
            ref.build()
        except (TypeError, ValueError) as err:
            raise ctx.error(key, f"cannot build task '{name}' with {kwargs}: {err}") from None
        if any(r.name == ref.name and r.kwargs == ref.kwargs for r in refs):
            raise ctx.error(key, f"task '{ref.label}' is listed twice")
        refs.append(ref)
    return tuple(refs)


def _parse_policy(ctx: _Ctx, raw: Any) -> PolicyConfig:
    if raw is None:
        return PolicyConfig()
    if isinstance(raw, str):
        raw = {"preset": raw}
    raw = ctx.mapping("policy", raw)
    ctx.keys("policy", raw, list(POLICY_TYPES))
    for key, value in raw.items():
        types = POLICY_TYPES[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ctx.error(f"policy.{key}", f"has the wrong type: {_type_name(value)} ({value!r})")
        if _is_number(value) and not math.isfinite(value):
            raise ctx.error(f"policy.{key}", f"must be a finite number, got {value!r}")
    checkpoint = raw.get("checkpoint")
    if checkpoint is not None and not Path(checkpoint).is_dir():
        message = f"{checkpoint!r} is not a local model folder (nothing is downloaded)"
        raise ctx.error("policy.checkpoint", message)
    try:
        return PolicyConfig.from_dict(dict(raw))
    except (TypeError, ValueError) as err:
        raise SpaceError(f"{ctx.source}: policy: {err}") from None


def _parse_budget(ctx: _Ctx, raw: Any) -> Budget:
    if raw is None:
        raw = {}
    raw = ctx.mapping("budget", raw)
    ctx.keys("budget", raw, BUDGET_KEYS)
    minimum = {"warm_start_steps": 0, "reeval_seeds": 0, "top_k": 0}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "lr":
            lr = ctx.number("budget.lr", value)
            if lr <= 0:
                raise ctx.error("budget.lr", f"must be > 0, got {lr!r}")
            values[key] = float(lr)
        else:
            values[key] = ctx.integer(f"budget.{key}", value, minimum.get(key, 1))
    budget = Budget(**values)
    try:
        budget.train_config(seed=0)
    except ValueError as err:
        raise SpaceError(f"{ctx.source}: budget: {err}") from None
    return budget


def _parse_base(ctx: _Ctx, raw: Any) -> ObjectiveSpec:
    if isinstance(raw, str):
        if raw not in presets.names():
            raise ctx.error("base", f"unknown preset '{raw}'; valid presets: {presets.names()}")
        return presets.get(raw)
    if isinstance(raw, Mapping):
        try:
            return ObjectiveSpec.from_dict(raw)
        except ObjectiveError as err:
            raise ctx.error("base", str(err)) from None
    raise ctx.error(
        "base", f"must be a preset name or an objective mapping, got {_type_name(raw)} ({raw!r})"
    )


def _parse_baselines(ctx: _Ctx, raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        raw = [raw]
    out: list[str] = []
    for i, item in enumerate(ctx.listing("baselines", raw)):
        name = ctx.string(f"baselines[{i}]", item)
        if name not in presets.names():
            raise ctx.error(
                f"baselines[{i}]", f"unknown preset '{name}'; valid presets: {presets.names()}"
            )
        if name in out:
            raise ctx.error(f"baselines[{i}]", f"'{name}' is listed twice")
        out.append(name)
    return tuple(out)


def _parse_search(ctx: _Ctx, raw: Any) -> SearchSettings:
    raw = ctx.mapping("search", raw)
    ctx.keys("search", raw, SEARCH_KEYS)
    if "trials" not in raw:
        raise ctx.error("search", "missing required key 'trials'")
    sampler = ctx.string("search.sampler", raw.get("sampler", "evolution"))
    if sampler not in SAMPLERS:
        raise ctx.error("search.sampler", f"unknown sampler '{sampler}'; valid: {list(SAMPLERS)}")
    trials = ctx.integer("search.trials", raw["trials"], 1)
    objectives_raw = raw.get("objectives", ["final_reward"])
    if isinstance(objectives_raw, str):
        objectives_raw = [objectives_raw]
    objectives = ctx.listing("search.objectives", objectives_raw)
    if not 1 <= len(objectives) <= 2:
        raise ctx.error(
            "search.objectives", f"needs 1 or 2 entries from {list(OBJECTIVES)}, got {objectives}"
        )
    for i, o in enumerate(objectives):
        o = ctx.string(f"search.objectives[{i}]", o)
        if o not in OBJECTIVES:
            raise ctx.error(
                "search.objectives", f"unknown objective '{o}'; valid: {list(OBJECTIVES)}"
            )
    if len(set(objectives)) != len(objectives):
        raise ctx.error("search.objectives", f"lists an objective twice: {objectives}")
    multi = len(objectives) > 1
    pruner = ctx.string("search.pruner", raw.get("pruner", "none" if multi else "median"))
    if pruner not in PRUNERS:
        raise ctx.error("search.pruner", f"unknown pruner '{pruner}'; valid: {list(PRUNERS)}")
    if multi and pruner != "none":
        raise ctx.error(
            "search.pruner",
            f"pruner '{pruner}' cannot prune a study with 2 objectives; use pruner: none",
        )
    if multi and sampler == "cmaes":
        raise ctx.error(
            "search.sampler", "cmaes supports one objective only; use nsga2, tpe or evolution"
        )
    population = ctx.integer("search.population_size", raw.get("population_size", 8), 2)
    seed = ctx.integer("search.seed", raw.get("seed", 0), 0)
    return SearchSettings(sampler, trials, pruner, tuple(objectives), population, seed)


def _parse_axes(ctx: _Ctx, raw: Any) -> tuple[Axis, ...]:
    if raw is None:
        return ()
    raw = ctx.mapping("axes", raw)
    axes: list[Axis] = []
    for path, spec in raw.items():
        axes.append(_parse_axis(ctx, path, spec, axes, list(raw)))
    return tuple(axes)


def _parse_axis(
    ctx: _Ctx, path: str, raw: Any, earlier: Sequence[Axis], declared: Sequence[str]
) -> Axis:
    key = f"axes.{path}"
    fld = _field_of(path)
    if fld is None:
        raise ctx.error(key, f"unknown axis path '{path}'; valid paths: {axis_paths()}")
    if isinstance(raw, list | tuple):
        raw = {"choices": list(raw)}
    raw = ctx.mapping(key, raw)
    ctx.keys(key, raw, AXIS_KEYS)
    when = _parse_when(ctx, key, raw.get("when"), earlier, declared)
    if "choices" in raw:
        extra = [k for k in ("low", "high", "log", "int", "step") if k in raw]
        if extra:
            raise ctx.error(key, f"'choices' cannot be combined with {extra}")
        choices = _parse_choices(ctx, f"{key}.choices", raw["choices"], fld)
        return Axis(path, "categorical", choices=choices, when=when)
    if "low" not in raw or "high" not in raw:
        raise ctx.error(key, "needs either 'choices' or both 'low' and 'high'")
    if fld.kind in ("str", "bool"):
        raise ctx.error(
            key, f"is a {'name' if fld.kind == 'str' else 'boolean'} field: give 'choices'"
        )
    low = ctx.number(f"{key}.low", raw["low"])
    high = ctx.number(f"{key}.high", raw["high"])
    log = ctx.boolean(f"{key}.log", raw.get("log", False))
    as_int = raw.get("int")
    if as_int is not None:
        as_int = ctx.boolean(f"{key}.int", as_int)
    if fld.kind == "int":
        if as_int is False:
            raise ctx.error(f"{key}.int", f"'{path}' is an integer field")
        for bound, value in (("low", low), ("high", high)):
            if not isinstance(value, int):
                raise ctx.error(
                    f"{key}.{bound}",
                    f"must be an integer ('{path}' is an integer field), got {value!r}",
                )
        kind: AxisKind = "int"
    else:
        if as_int:
            raise ctx.error(f"{key}.int", f"'{path}' is a float field; remove 'int: true'")
        kind = "float"
        low, high = float(low), float(high)
    if not low < high:
        raise ctx.error(key, f"low ({low}) must be < high ({high})")
    if log and low <= 0:
        raise ctx.error(key, f"log: true needs low > 0, got low ({low})")
    if path == "optim.lr" and low <= 0:
        raise ctx.error(key, f"the learning rate must be > 0, got low ({low})")
    step = raw.get("step")
    if step is not None:
        if kind == "int":
            step = ctx.integer(f"{key}.step", step, 1)
        else:
            step = float(ctx.number(f"{key}.step", step))
            if step <= 0:
                raise ctx.error(f"{key}.step", f"must be > 0, got {step}")
        if log and step != 1:
            raise ctx.error(f"{key}.step", "cannot be combined with log: true")
        span = (high - low) / step
        if abs(span - round(span)) > 1e-9 * max(1.0, abs(span)):
            raise ctx.error(f"{key}.step", f"step ({step}) must divide high - low ({high - low:g})")
        if log:  # an int axis with step 1 and log: Optuna wants step 1, which is the default
            step = None
    return Axis(path, kind, low=low, high=high, log=log, step=step, when=when)


def _parse_choices(ctx: _Ctx, key: str, raw: Any, fld: _Field) -> tuple[Any, ...]:
    items = ctx.listing(key, raw)
    if not items:
        raise ctx.error(key, "must not be empty")
    out: list[Any] = []
    for item in items:
        if item is None and fld.names is not None and None in fld.names:
            value: Any = None
        elif fld.kind == "str":
            if not isinstance(item, str):
                raise ctx.error(key, f"must be strings, got {_type_name(item)} ({item!r})")
            if fld.names is not None and item not in fld.names:
                valid = [_fmt(n) for n in fld.names]
                raise ctx.error(key, f"unknown {fld.what} '{item}'; valid names: {valid}")
            value = item
        elif fld.kind == "bool":
            value = ctx.boolean(key, item)
        elif fld.kind == "int":
            value = ctx.integer(key, item)
        else:
            value = float(ctx.number(key, item))
        if _value_in(value, out):
            raise ctx.error(key, f"lists {_fmt(value)} twice")
        out.append(value)
    return tuple(out)


def _parse_when(
    ctx: _Ctx, key: str, raw: Any, earlier: Sequence[Axis], declared: Sequence[str]
) -> Condition:
    if raw is None:
        return ()
    raw = ctx.mapping(f"{key}.when", raw)
    if not raw:
        raise ctx.error(f"{key}.when", "must name at least one axis")
    by_path = {a.path: a for a in earlier}
    out: list[tuple[str, tuple[Any, ...]]] = []
    this = key.removeprefix("axes.")
    for path, allowed in raw.items():
        wkey = f"{key}.when.{path}"
        if path not in by_path:
            if path == this:
                raise ctx.error(wkey, "an axis cannot depend on itself")
            if _field_of(path) is None:
                raise ctx.error(wkey, f"'{path}' is not an axis path")
            if path in declared:
                raise ctx.error(
                    wkey,
                    f"'{path}' is declared after '{this}'; when may only refer to axes declared "
                    f"before it (declared before: {list(by_path)})",
                )
            raise ctx.error(
                wkey,
                f"'{path}' is not an axis of this space; when may only refer to axes declared "
                f"before '{this}' (declared before: {list(by_path)})",
            )
        target = by_path[path]
        if target.choices is None:
            raise ctx.error(wkey, f"'{path}' is not categorical; when can only test choices")
        if not isinstance(allowed, list | tuple):
            allowed = [allowed]
        if not allowed:
            raise ctx.error(wkey, "must list at least one value")
        for value in allowed:
            if not _value_in(value, target.choices):
                raise ctx.error(
                    wkey,
                    f"{_fmt(value)} is not a choice of '{path}'; choices: "
                    f"{[_fmt(c) for c in target.choices]}",
                )
        out.append((path, tuple(allowed)))
    return tuple(out)
