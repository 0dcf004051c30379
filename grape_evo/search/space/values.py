"""The value objects of a search space: axes, budget, search settings, tasks, the space.

All are frozen dataclasses built by :func:`~grape_evo.search.space.parse_space`; a
:class:`SearchSpace` answers questions about its axes (which are active, their Optuna
distributions, their points) and hands point <-> spec translation to
:mod:`grape_evo.search.space.translation`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Literal

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from grape_evo.objective import ObjectiveSpec, presets
from grape_evo.policy.config import PolicyConfig
from grape_evo.search.space import expressions, translation
from grape_evo.search.space.task_ref import TaskRef
from grape_evo.training.config import TrainConfig

if TYPE_CHECKING:
    import optuna

__all__ = [
    "OBJECTIVES",
    "PRUNERS",
    "SAMPLERS",
    "Axis",
    "AxisKind",
    "Budget",
    "Condition",
    "SearchSettings",
    "SearchSpace",
    "TaskRef",
    "active_axes",
    "is_number",
    "value_in",
]

SAMPLERS = ("evolution", "tpe", "nsga2", "cmaes", "random", "grid")
"""Valid ``search.sampler`` values."""
PRUNERS = ("median", "hyperband", "wilcoxon", "none")
"""Valid ``search.pruner`` values."""
OBJECTIVES = ("final_reward", "kl_to_ref")
"""Valid ``search.objectives`` entries (``final_reward`` is maximised, ``kl_to_ref`` minimised)."""

AxisKind = Literal["categorical", "float", "int", "expression"]
Condition = tuple[tuple[str, tuple[Any, ...]], ...]
"""An axis's ``when``: ``(axis path, allowed values)`` pairs, all of which must hold."""


def is_number(value: Any) -> bool:
    """An int or a float, not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _same(a: Any, b: Any) -> bool:
    """Equality that keeps booleans apart from numbers (``True`` is not ``1`` here)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if is_number(a) and is_number(b):
        return a == b
    return type(a) is type(b) and a == b


def value_in(value: Any, allowed: Sequence[Any]) -> bool:
    """Membership with :func:`_same`: ``True`` is not in ``(1,)``, ``2`` is in ``(2.0,)``."""
    return any(_same(value, a) for a in allowed)


@dataclass(frozen=True)
class Axis:
    """One searchable dimension: a dotted path into the objective spec (or ``optim.lr``).

    ``kind`` is ``categorical`` (``choices``), ``float`` or ``int`` (``low``/``high`` inclusive,
    optional ``log`` scale and ``step``) or ``expression`` (a formula grown from ``seeds`` to at
    most ``max_depth`` levels; see :mod:`grape_evo.search.space.expressions`). ``when`` is a
    tuple of ``(axis path, allowed values)`` pairs: the axis is active only when every named
    axis is active and holds an allowed value.
    """

    path: str
    kind: AxisKind
    choices: tuple[Any, ...] | None = None
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    when: Condition = ()
    seeds: tuple[str, ...] = ()
    max_depth: int = 0

    def is_active(self, params: Mapping[str, Any]) -> bool:
        """Whether this axis is active given the values of (active) earlier axes.

        An axis a condition names counts as inactive when it is missing from ``params``.
        """
        return all(
            path in params and value_in(params[path], allowed) for path, allowed in self.when
        )

    @property
    def numeric(self) -> bool:
        return self.kind in ("float", "int")

    @property
    def expression_kind(self) -> str | None:
        """The expression kind of an expression axis (``advantage``, ``drift``,
        ``preference``), else None."""
        return expressions.EXPRESSION_KINDS[self.path] if self.kind == "expression" else None

    @property
    def param_name(self) -> str:
        """The Optuna parameter of this axis: its path, or ``<path>#draw`` for an expression
        axis (whose text Optuna cannot store; see :mod:`~grape_evo.search.space.expressions`)."""
        return self.path + expressions.DRAW_SUFFIX if self.kind == "expression" else self.path

    def gene(self, param: Any, planned: Mapping[str, Any] | None = None) -> Any:
        """The gene an Optuna parameter value stands for. On an expression axis: the formula
        ``planned`` holds for this axis (a genome a sampler planned), when it holds one, else
        the formula of the draw (:func:`~grape_evo.search.space.expressions.from_draw`)."""
        if self.kind != "expression":
            return param
        text = (planned or {}).get(self.path)
        if self.contains(text):
            return text
        kind = expressions.EXPRESSION_KINDS[self.path]
        return expressions.from_draw(kind, self.seeds, self.max_depth, int(param))

    def values(self) -> list[Any]:
        """The grid of this axis: its choices; an expression axis's seeds; a numeric axis with
        ``step`` every step from ``low`` to ``high``; a numeric axis without ``step`` just
        ``[low, high]``."""
        if self.choices is not None:
            return list(self.choices)
        if self.kind == "expression":
            return list(self.seeds)
        assert self.low is not None and self.high is not None
        if self.step is None:
            return [self.low, self.high]
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1, int(self.step)))
        n = math.floor((self.high - self.low) / self.step + 1e-9)
        return [round(self.low + i * self.step, 12) for i in range(n + 1)]

    def extremes(self) -> list[Any]:
        """The values :meth:`SearchSpace.validate_points` tries: choices, seeds, or low and
        high."""
        if self.choices is not None or self.kind == "expression":
            return self.values()
        return [self.low, self.high]

    def distribution(self) -> BaseDistribution:
        """The Optuna distribution of :attr:`param_name` (an expression axis's draw)."""
        if self.choices is not None:
            return CategoricalDistribution(self.choices)
        if self.kind == "expression":
            return IntDistribution(0, expressions.DRAWS)
        if self.kind == "int":
            step = 1 if self.step is None else int(self.step)
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=step)  # type: ignore[arg-type]
        return FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)  # type: ignore[arg-type]

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a value this axis can take.

        A choice (compared with booleans kept apart from numbers); or a finite number in
        ``[low, high]`` (up to 1e-9 relative), an integer on an ``int`` axis, and with ``step``
        a whole number of steps from ``low`` (up to 1e-8 of a step, Optuna's tolerance); or,
        on an expression axis, a formula of its kind within the global limits.
        """
        if self.choices is not None:
            return value_in(value, self.choices)
        if self.kind == "expression":
            return expressions.is_formula(expressions.EXPRESSION_KINDS[self.path], value)
        if not is_number(value) or not math.isfinite(value):
            return False
        if self.kind == "int" and not float(value).is_integer():
            return False
        low, high = self.low, self.high
        assert low is not None and high is not None
        tol = 1e-9 * max(1.0, abs(low), abs(high))
        if not low - tol <= value <= high + tol:
            return False
        if self.step is None:
            return True
        steps = (value - low) / self.step
        return abs(steps - round(steps)) < 1e-8

    def to_dict(self) -> dict[str, Any]:
        """The axis as written in YAML (without its path)."""
        out: dict[str, Any] = {}
        if self.choices is not None:
            out["choices"] = list(self.choices)
        elif self.kind == "expression":
            out["expression"] = {"seeds": list(self.seeds), "max_depth": self.max_depth}
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


def active_axes(axes: Sequence[Axis], params: Mapping[str, Any]) -> list[Axis]:
    """The axes active under ``params``, in declaration order.

    ``params`` holds values of axes; a value counts only if its axis is itself active, so a
    stale value of an inactive axis (a child genome before repair) activates nothing.
    """
    active: list[Axis] = []
    seen: dict[str, Any] = {}
    for axis in axes:
        if axis.is_active(seen):
            active.append(axis)
            if axis.path in params:
                seen[axis.path] = params[axis.path]
    return active


@dataclass(frozen=True)
class Budget:
    """How long each candidate trains and how it is evaluated.

    ``steps``, ``eval_every``, ``batch_size``, ``warm_start_steps``, ``lr`` and ``eval_prompts``
    go into every run's :class:`~grape_evo.training.config.TrainConfig` (defaults are
    TrainConfig's). A candidate trains on up to ``seeds`` seeds per task; ``rungs`` are the
    seed counts at which successive halving decides whether it earns more (the last is
    ``seeds``; one rung: no halving). The ``top_k`` best candidates are re-evaluated on
    ``reeval_seeds`` fresh seeds before they are called discoveries.
    """

    steps: int = TrainConfig.steps
    seeds: int = 1
    rungs: tuple[int, ...] = ()
    eval_every: int = TrainConfig.eval_every
    batch_size: int = TrainConfig.batch_size
    warm_start_steps: int = TrainConfig.warm_start_steps
    lr: float = TrainConfig.lr
    eval_prompts: int = TrainConfig.eval_prompts
    reeval_seeds: int = 10
    top_k: int = 3

    def __post_init__(self) -> None:
        if not self.rungs:
            object.__setattr__(self, "rungs", (self.seeds,))

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
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "rungs"}
        if len(self.rungs) > 1:
            out["seeds"] = list(self.rungs)
        return out


@dataclass(frozen=True)
class SearchSettings:
    """How the study searches: sampler, number of trials, pruner and objectives.

    ``objectives`` holds one or two of :data:`OBJECTIVES`; ``final_reward`` is maximised and
    ``kl_to_ref`` minimised. ``population_size`` is the evolution sampler's (and NSGA-II's)
    generation size; ``seed`` seeds the sampler. ``reference`` is the preset every candidate
    is compared with on the same seeds (None: fitness is the raw mean reward);
    ``fitness`` the measure compared (``final`` reward or ``auc``, see
    :mod:`grape_evo.search.fitness`); ``keep`` the fraction of candidates successive halving
    promotes at each rung; ``tune_lr`` the multiples of the budget's learning rate the
    reference is tried at before the search (the best becomes every run's rate; empty: no
    tuning; see :mod:`grape_evo.search.campaign.tuning`).
    """

    sampler: str
    trials: int
    pruner: str
    objectives: tuple[str, ...]
    population_size: int = 8
    seed: int = 0
    reference: str | None = None
    fitness: str = "final"
    keep: float = 1 / 3
    tune_lr: tuple[float, ...] = (0.5, 1.0, 2.0)

    @property
    def directions(self) -> list[str]:
        """Optuna study directions, one per objective."""
        return ["maximize" if o == "final_reward" else "minimize" for o in self.objectives]

    @property
    def metric_names(self) -> list[str]:
        """Optuna metric names, one per objective (what optuna-dashboard shows): with a
        ``reference`` the study's reward value is the paired fitness against it
        (`grape_evo.search.fitness`), so ``final_reward`` is named ``fitness``."""
        return [
            "fitness" if o == "final_reward" and self.reference is not None else o
            for o in self.objectives
        ]

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["objectives"] = list(self.objectives)
        out["tune_lr"] = list(self.tune_lr)
        return out


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
        """The axes active under ``params``, in declaration order (see :func:`active_axes`)."""
        return active_axes(self.axes, params)

    def suggest(
        self, trial: optuna.Trial, planned: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Ask ``trial`` for a value of every active axis (Optuna parameter
        :attr:`Axis.param_name`).

        An expression axis takes its formula from ``planned`` (the genome a sampler planned
        for the trial) when that holds one, else from its draw (:meth:`Axis.gene`).
        """
        values: dict[str, Any] = {}
        for axis in self.axes:
            if not axis.is_active(values):
                continue
            if axis.kind == "expression":
                draw = trial.suggest_int(axis.param_name, 0, expressions.DRAWS)
                value = axis.gene(draw, planned)
            elif axis.choices is not None:
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
        """A search space for Optuna's GridSampler: every axis's :meth:`Axis.values` (an
        expression axis's seeds as their draws ``0 .. n-1``)."""
        return {
            a.param_name: list(range(len(a.seeds))) if a.kind == "expression" else a.values()
            for a in self.axes
        }

    # ---- points <-> specs (grape_evo.search.space.translation) ---------------------------
    def active_values(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The entries of ``params`` whose axes are active, in declaration order.

        Raises SpaceError for a key that is not an axis or a value its axis cannot take.
        """
        return translation.active_values(self, params)

    def to_spec(
        self, params: Mapping[str, Any], name: str = "candidate"
    ) -> tuple[ObjectiveSpec, dict[str, Any]]:
        """The objective at ``params`` and the training overrides (``{"lr": ...}``); see
        :func:`~grape_evo.search.space.translation.to_spec`."""
        return translation.to_spec(self, params, name)

    def project(self, spec: ObjectiveSpec) -> dict[str, Any]:
        """The genes of ``spec`` that lie in this space; see
        :func:`~grape_evo.search.space.translation.project`."""
        return translation.project(self, spec)

    def validate_points(self) -> None:
        """Check that every point the space can produce is a valid objective; see
        :func:`~grape_evo.search.space.translation.validate_points`."""
        translation.validate_points(self)

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
