"""ObjectiveSpec: one point of the objective space, a frozen and validated value.

Written in YAML/JSON as (DESIGN.md section 2)::

    name: grpo
    data: on_policy                 # on_policy | demonstrations | preference_pairs
    group_size: 8
    advantage: {name: group_zscore, eps: 1.0e-6}
    surrogate: {name: ppo_clip, clip_low: 0.2, clip_high: 0.2}
    kl: {estimator: k3, placement: loss, coef: 0.04}
    aggregation: {name: seq_mean_token_mean}
    entropy_coef: 0.0
    preference: null                # or {name: sigmoid, beta: 0.1, pairing: best_worst}
    epochs: 1                       # optimisation passes over each batch
    minibatches: 1                  # optimiser steps per epoch (the batch split in as many parts)
    staleness: 0                    # rollouts come from the policy of this many steps ago

A component may carry *dormant* parameters that belong to a sibling of the same kind (the
search keeps a ``clip_high`` gene while the surrogate is ``reinforce``): they are validated,
kept by ``to_dict`` and dropped by ``canonical()``. A parameter no component of that kind has
is an error.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import sympy as sp
import yaml

from grape_evo.objective import advantages as _advantages  # noqa: F401 - registers components
from grape_evo.objective import aggregation as _aggregation  # noqa: F401
from grape_evo.objective import kl as _kl  # noqa: F401
from grape_evo.objective import preference as _preference  # noqa: F401
from grape_evo.objective import surrogates as _surrogates  # noqa: F401
from grape_evo.objective.expression import components as _expression  # noqa: F401
from grape_evo.objective.registry import (
    ADVANTAGES,
    AGGREGATIONS,
    KL_ESTIMATORS,
    PREFERENCE_LOSSES,
    SURROGATES,
    ObjectiveError,
    ParamValue,
    Registry,
)
from grape_evo.objective.symbolic import Symbols as S
from grape_evo.objective.symbolic import num, to_latex

DATA_MODES = ("on_policy", "demonstrations", "preference_pairs")
KL_PLACEMENTS = ("loss", "reward")
PAIRINGS = ("best_worst", "all_pairs")
SPEC_FIELDS = (
    "name",
    "data",
    "group_size",
    "advantage",
    "surrogate",
    "kl",
    "aggregation",
    "entropy_coef",
    "preference",
    "epochs",
    "minibatches",
    "staleness",
)
_LIMITS = {
    "group_size": (1, 1024),
    "epochs": (1, 64),
    "minibatches": (1, 64),
    "staleness": (0, 64),
    "entropy_coef": (0.0, 1.0),
    "kl.coef": (0.0, 100.0),
}


def _check_number(path: str, value: Any, integer: bool) -> int | float:
    low, high = _LIMITS[path]
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ObjectiveError(f"field '{path}' must be {kind}, got {value!r}")
    if integer and isinstance(value, float) and not value.is_integer():
        raise ObjectiveError(f"field '{path}' must be {kind}, got {value!r}")
    if not math.isfinite(value) or not low <= value <= high:
        raise ObjectiveError(f"field '{path}' must be in [{low}, {high}], got {value!r}")
    return int(value) if integer else float(value)


def _check_choice(path: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ObjectiveError(f"field '{path}' must be one of {list(choices)}, got {value!r}")
    return value


@dataclass(frozen=True)
class ComponentSpec:
    """A registered component name and its parameter values (defaults filled in)."""

    name: str
    params: tuple[tuple[str, ParamValue], ...] = ()

    def get(self, key: str) -> ParamValue:
        return dict(self.params)[key]

    def as_kwargs(self, registry: Registry) -> dict[str, ParamValue]:
        """The parameters the component's function takes (dormant ones left out)."""
        component = registry.get(self.name)
        return {**component.defaults(), **{k: v for k, v in self.params if k in component.params}}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dict(self.params)}

    @classmethod
    def parse(cls, registry: Registry, path: str, value: Any) -> ComponentSpec:
        """From ``"name"`` or ``{name: ..., param: value, ...}``; ``path`` names the field."""
        if isinstance(value, str):
            value = {"name": value}
        if not isinstance(value, Mapping):
            raise ObjectiveError(
                f"field '{path}' must be a component name or a mapping with 'name', got {value!r}"
            )
        if "name" not in value:
            raise ObjectiveError(f"field '{path}' needs a 'name'; valid names: {registry.names()}")
        try:
            component = registry.get(value["name"])
        except ObjectiveError as err:
            raise ObjectiveError(f"field '{path}': {err}") from None
        given = {k: v for k, v in value.items() if k != "name"}
        own = {k: v for k, v in given.items() if k in component.params}
        dormant = {k: v for k, v in given.items() if k not in component.params}
        try:
            params = component.validate_params(own)
        except ObjectiveError as err:
            raise ObjectiveError(f"field '{path}': {err}") from None
        siblings = {p: c for c in registry for p in c.params}
        for key, raw in dormant.items():
            if key not in siblings:
                raise ObjectiveError(
                    f"field '{path}': {registry.kind} '{component.name}' has no parameter "
                    f"'{key}'; valid parameters: {sorted(component.params) or ['(none)']}"
                )
            owner = siblings[key]
            try:
                params[key] = owner.params[key].validate(f"{registry.kind} '{owner.name}'", raw)
            except ObjectiveError as err:
                raise ObjectiveError(f"field '{path}': {err}") from None
        return cls(component.name, tuple(sorted(params.items())))

    def canonical(self, registry: Registry) -> ComponentSpec:
        return ComponentSpec(self.name, tuple(sorted(self.as_kwargs(registry).items())))

    def key_dict(self, registry: Registry) -> dict[str, Any]:
        """``to_dict`` of the canonical component with its parameters as they enter keys."""
        values = registry.get(self.name).key_values(self.as_kwargs(registry))
        return {"name": self.name, **values}


def _default_component(registry: Registry, name: str) -> ComponentSpec:
    return ComponentSpec.parse(registry, registry.kind, name)


@dataclass(frozen=True)
class KLSpec:
    """Reference KL: per-token estimator, where it enters (loss or reward), coefficient."""

    estimator: str = "k3"
    placement: str = "loss"
    coef: float = 0.0

    @property
    def active(self) -> bool:
        return self.coef > 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"estimator": self.estimator, "placement": self.placement, "coef": self.coef}

    @classmethod
    def parse(cls, value: Any) -> KLSpec:
        if value is None:
            return cls()
        if not isinstance(value, Mapping):
            raise ObjectiveError(f"field 'kl' must be a mapping, got {value!r}")
        unknown = sorted(set(value) - {"estimator", "placement", "coef"})
        if unknown:
            raise ObjectiveError(
                f"field 'kl': unknown key(s) {unknown}; valid keys: ['coef', 'estimator', "
                "'placement']"
            )
        estimator = value.get("estimator", "k3")
        if estimator not in KL_ESTIMATORS:
            raise ObjectiveError(
                f"field 'kl.estimator': unknown kl estimator {estimator!r}; "
                f"valid names: {KL_ESTIMATORS.names()}"
            )
        return cls(
            estimator=estimator,
            placement=_check_choice("kl.placement", value.get("placement", "loss"), KL_PLACEMENTS),
            coef=_check_number("kl.coef", value.get("coef", 0.0), integer=False),
        )


@dataclass(frozen=True)
class PreferenceSpec:
    """A pairwise loss, its parameters (``beta`` among them) and how online pairs are formed."""

    loss: ComponentSpec
    pairing: str = "best_worst"

    @property
    def name(self) -> str:
        return self.loss.name

    def to_dict(self) -> dict[str, Any]:
        return {**self.loss.to_dict(), "pairing": self.pairing}

    @classmethod
    def parse(cls, value: Any) -> PreferenceSpec | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = {"name": value}
        if not isinstance(value, Mapping):
            raise ObjectiveError(f"field 'preference' must be a mapping or null, got {value!r}")
        pairing = _check_choice("preference.pairing", value.get("pairing", "best_worst"), PAIRINGS)
        rest = {k: v for k, v in value.items() if k != "pairing"}
        return cls(ComponentSpec.parse(PREFERENCE_LOSSES, "preference", rest), pairing)


@dataclass(frozen=True)
class ObjectiveSpec:
    """One objective: how data is gathered and every component of the loss."""

    name: str = "custom"
    data: str = "on_policy"
    group_size: int = 1
    advantage: ComponentSpec = field(default_factory=lambda: ComponentSpec("reward"))
    surrogate: ComponentSpec = field(default_factory=lambda: ComponentSpec("reinforce"))
    kl: KLSpec = field(default_factory=KLSpec)
    aggregation: ComponentSpec = field(default_factory=lambda: ComponentSpec("token_mean"))
    entropy_coef: float = 0.0
    preference: PreferenceSpec | None = None
    epochs: int = 1
    minibatches: int = 1
    staleness: int = 0

    # ---- construction -------------------------------------------------------------------
    def __post_init__(self) -> None:
        self._check_coherent()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ObjectiveSpec:
        """Validate and build; every error names the field and the valid choices."""
        if not isinstance(d, Mapping):
            raise ObjectiveError(f"an objective must be a mapping, got {type(d).__name__}")
        unknown = sorted(set(d) - set(SPEC_FIELDS))
        if unknown:
            raise ObjectiveError(
                f"unknown objective field(s) {unknown}; valid fields: {list(SPEC_FIELDS)}"
            )
        name = d.get("name", "custom")
        if not isinstance(name, str):
            raise ObjectiveError(f"field 'name' must be a string, got {name!r}")
        return cls(
            name=name,
            data=_check_choice("data", d.get("data", "on_policy"), DATA_MODES),
            group_size=_check_number("group_size", d.get("group_size", 1), integer=True),
            advantage=ComponentSpec.parse(ADVANTAGES, "advantage", d.get("advantage", "reward")),
            surrogate=ComponentSpec.parse(SURROGATES, "surrogate", d.get("surrogate", "reinforce")),
            kl=KLSpec.parse(d.get("kl")),
            aggregation=ComponentSpec.parse(
                AGGREGATIONS, "aggregation", d.get("aggregation", "token_mean")
            ),
            entropy_coef=_check_number("entropy_coef", d.get("entropy_coef", 0.0), integer=False),
            preference=PreferenceSpec.parse(d.get("preference")),
            epochs=_check_number("epochs", d.get("epochs", 1), integer=True),
            minibatches=_check_number("minibatches", d.get("minibatches", 1), integer=True),
            staleness=_check_number("staleness", d.get("staleness", 0), integer=True),
        )

    @classmethod
    def from_yaml(cls, path: str | Path) -> ObjectiveSpec:
        """Load one spec from a YAML file; errors name the file."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as err:
            raise ObjectiveError(f"{path}: cannot read objective file ({err.strerror})") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ObjectiveError(f"{path}: invalid YAML: {err}") from None
        try:
            return cls.from_dict(data)
        except ObjectiveError as err:
            raise ObjectiveError(f"{path}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "data": self.data,
            "group_size": self.group_size,
            "advantage": self.advantage.to_dict(),
            "surrogate": self.surrogate.to_dict(),
            "kl": self.kl.to_dict(),
            "aggregation": self.aggregation.to_dict(),
            "entropy_coef": self.entropy_coef,
            "preference": None if self.preference is None else self.preference.to_dict(),
            "epochs": self.epochs,
            "minibatches": self.minibatches,
            "staleness": self.staleness,
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def with_name(self, name: str) -> ObjectiveSpec:
        return replace(self, name=name)

    # ---- meaning --------------------------------------------------------------------------
    @property
    def uses_preferences(self) -> bool:
        return self.preference is not None

    def _check_coherent(self) -> None:
        if self.data == "preference_pairs" and self.preference is None:
            raise ObjectiveError(
                "fields 'data' and 'preference' clash: data 'preference_pairs' needs a "
                f"preference loss (one of {PREFERENCE_LOSSES.names()})"
            )
        if self.data == "demonstrations" and self.preference is not None:
            raise ObjectiveError(
                "fields 'data' and 'preference' clash: data 'demonstrations' takes no "
                "preference loss (use data 'preference_pairs' or 'on_policy')"
            )
        if self.data == "demonstrations" and self.kl.active and self.kl.placement == "reward":
            raise ObjectiveError(
                "fields 'data' and 'kl.placement' clash: demonstrations have no reward to "
                "penalise; use kl.placement 'loss'"
            )
        if self.data != "on_policy":
            return
        if self.preference is not None and self.group_size < 2:
            raise ObjectiveError(
                "fields 'preference' and 'group_size' clash: online preference pairs are "
                "formed within a group, so group_size must be >= 2"
            )
        adv = ADVANTAGES.get(self.advantage.name)
        tags = adv.tags_for(self.advantage.as_kwargs(ADVANTAGES))
        if self.preference is None and "group_relative" in tags and self.group_size < 2:
            raise ObjectiveError(
                f"fields 'advantage' and 'group_size' clash: advantage '{adv.name}' compares "
                "completions of the same prompt, so group_size must be >= 2"
            )

    def canonical(self) -> ObjectiveSpec:
        """The same training behaviour with every irrelevant setting reset.

        Dormant parameters are dropped; a zero KL coefficient resets the estimator and
        placement; demonstrations train -log pi (advantage ``none``, surrogate ``reinforce``);
        preference objectives ignore advantage, surrogate, aggregation, KL and entropy (the
        reference enters through the pairwise loss); a trust-region surrogate takes one step
        on the whole batch (epochs 1, minibatches 1); offline data has no groups and no pairing
        rule; only sampled (on-policy) data can be stale.
        """
        advantage = self.advantage.canonical(ADVANTAGES)
        surrogate = self.surrogate.canonical(SURROGATES)
        aggregation = self.aggregation.canonical(AGGREGATIONS)
        kl = self.kl if self.kl.active else KLSpec()
        entropy_coef, group_size, epochs = self.entropy_coef, self.group_size, self.epochs
        minibatches, staleness = self.minibatches, self.staleness
        preference = self.preference
        if preference is not None:
            preference = PreferenceSpec(
                preference.loss.canonical(PREFERENCE_LOSSES), preference.pairing
            )
        if self.data == "demonstrations":
            advantage = _default_component(ADVANTAGES, "none")
            surrogate = _default_component(SURROGATES, "reinforce")
            group_size = 1
        if preference is not None:
            advantage = _default_component(ADVANTAGES, "none")
            surrogate = _default_component(SURROGATES, "reinforce")
            aggregation = _default_component(AGGREGATIONS, "token_mean")
            kl, entropy_coef = KLSpec(), 0.0
            if self.data == "preference_pairs":
                preference = PreferenceSpec(preference.loss, "best_worst")
                group_size = 1
        if "trust_region" in SURROGATES.get(surrogate.name).tags:
            epochs = minibatches = 1
        if self.data != "on_policy":
            staleness = 0
        return ObjectiveSpec(
            name=self.name,
            data=self.data,
            group_size=group_size,
            advantage=advantage,
            surrogate=surrogate,
            kl=kl,
            aggregation=aggregation,
            entropy_coef=entropy_coef,
            preference=preference,
            epochs=epochs,
            minibatches=minibatches,
            staleness=staleness,
        )

    def key(self) -> str:
        """Stable hash of the canonical spec without its name (16 hex chars).

        Components enter with their key values (``ComponentSpec.key_dict``): parameters added
        to a component after keys were published are left out while at their default (which
        reproduces the earlier behaviour), so a spec that does not use them keeps its key; an
        expression enters as its sympy canonical key, so formulas that are the same function by
        algebra share a key while ``canonical()`` keeps the written text (the trained function).
        The regime fields ``minibatches`` and ``staleness`` enter only when not 1 and 0.
        """
        spec = self.canonical()
        d = spec.to_dict()
        d.pop("name")
        for name, neutral in (("minibatches", 1), ("staleness", 0)):
            if d[name] == neutral:
                d.pop(name)
        d["advantage"] = spec.advantage.key_dict(ADVANTAGES)
        d["surrogate"] = spec.surrogate.key_dict(SURROGATES)
        d["aggregation"] = spec.aggregation.key_dict(AGGREGATIONS)
        if spec.preference is not None:
            d["preference"] = {
                **spec.preference.loss.key_dict(PREFERENCE_LOSSES),
                "pairing": spec.preference.pairing,
            }
        text = json.dumps(_round_floats(d), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    # ---- formulas -------------------------------------------------------------------------
    def to_sympy(self, aggregate: bool = False) -> sp.Expr:
        """The per-token loss (per-pair for preference objectives) as a sympy expression.

        With ``aggregate`` the aggregation over tokens (or the mean over pairs) is included.
        """
        spec = self.canonical()
        if spec.preference is not None:
            pair_loss = PREFERENCE_LOSSES.get(spec.preference.name).symbolic(
                **spec.preference.loss.as_kwargs(PREFERENCE_LOSSES)
            )
            if not aggregate:
                return pair_loss
            return sp.Sum(pair_loss, (S.i, 1, S.B)) / S.B
        kl_term = sp.Integer(0)
        if spec.kl.active:
            kl_term = sp.Mul(
                num(spec.kl.coef),
                KL_ESTIMATORS.get(spec.kl.estimator).symbolic(),
                evaluate=False,
            )
        advantage = ADVANTAGES.get(spec.advantage.name).symbolic(
            **spec.advantage.as_kwargs(ADVANTAGES)
        )
        if spec.kl.active and spec.kl.placement == "reward":
            per_token = KL_ESTIMATORS.get(spec.kl.estimator).symbolic()
            shaped = S.R - num(spec.kl.coef) * sp.Sum(per_token.subs(S.d, S.d_s), (S.s, 1, S.len_i))
            advantage = advantage.subs(S.R, shaped)
            kl_term = sp.Integer(0)
        token_loss = SURROGATES.get(spec.surrogate.name).symbolic(
            advantage, **spec.surrogate.as_kwargs(SURROGATES)
        )
        token_loss = token_loss + kl_term - num(spec.entropy_coef) * S.H
        if not aggregate:
            return token_loss
        return AGGREGATIONS.get(spec.aggregation.name).symbolic(
            token_loss, **spec.aggregation.as_kwargs(AGGREGATIONS)
        )

    def latex(self, aggregate: bool = True) -> str:
        """LaTeX of the loss, aggregated by default: ``\\mathcal{L} = ...``."""
        lhs = r"\mathcal{L}" if aggregate else r"\ell_{i,t}"
        if self.canonical().preference is not None and not aggregate:
            lhs = r"\ell_{(y_w, y_l)}"
        return f"{lhs} = {to_latex(self.to_sympy(aggregate=aggregate))}"


def _round_floats(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.10g}")
    if isinstance(value, dict):
        return {k: _round_floats(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_round_floats(v) for v in value]
    return value
