"""Registries of objective components.

Every component is a pure tensor function registered by name, together with:

* its *parameters*: the keyword arguments of the function that have defaults (read from the
  signature, so adding a variant is one decorated function);
* optional bounds per parameter (validated by the spec and read by the search space);
* its *symbolic form*: a function with the same parameters returning a sympy expression, used
  for reports and to spot equivalent candidates;
* optional *state*: keyword-only arguments of the function are not user parameters but values
  carried between calls (an EMA baseline, an adaptive KL coefficient). A component with state
  declares ``update_state(state, metrics, **params) -> state``; the built objective owns the state;
* optional *added* parameters: ones introduced after spec keys were published. Their default
  reproduces the component's earlier behaviour and ``ObjectiveSpec.key()`` leaves them out while
  they are at that default, so every spec that does not set them keeps its key;
* optional hooks for components whose parameters change what they are (an expression
  component's ``expr``): ``param_tags(**params)`` adds tags for those values, and
  ``key_params(**params)`` gives the parameter values that enter the spec's key.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

ParamValue = float | int | bool | str


class ObjectiveError(ValueError):
    """A user-facing error in an objective spec; the message names the field and the reason."""


@dataclass(frozen=True)
class Param:
    """One tunable parameter of a component.

    ``kind`` is the Python type of the default (float, int, bool, str). ``low``/``high`` are
    inclusive bounds for numbers; ``choices`` the allowed values for strings. ``log`` says the
    natural search scale is logarithmic. ``keyed_at_default`` is False for an *added* parameter
    (see the module docstring): spec keys omit it while it equals its default. ``check(value)``
    may return a message refusing a value that the type and bounds admit (an expression outside
    its grammar).
    """

    name: str
    default: ParamValue
    kind: type
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None
    log: bool = False
    keyed_at_default: bool = True
    check: Callable[[Any], str | None] | None = None

    def validate(self, owner: str, value: Any) -> ParamValue:
        """Return ``value`` coerced to this parameter's type, or raise ObjectiveError."""
        value = self._coerce(owner, value)
        problem = self.check(value) if self.check is not None else None
        if problem:
            raise ObjectiveError(f"{owner}: parameter '{self.name}': {problem}")
        return value

    def _coerce(self, owner: str, value: Any) -> ParamValue:
        where = f"{owner}: parameter '{self.name}'"
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ObjectiveError(f"{where} must be true or false, got {value!r}")
            return value
        if self.kind is str:
            if not isinstance(value, str):
                raise ObjectiveError(f"{where} must be a string, got {value!r}")
            if self.choices is not None and value not in self.choices:
                raise ObjectiveError(f"{where} must be one of {list(self.choices)}, got {value!r}")
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ObjectiveError(f"{where} must be a number, got {value!r}")
        if self.kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ObjectiveError(f"{where} must be an integer, got {value!r}")
            value = int(value)
        else:
            value = float(value)
            if not math.isfinite(value):
                raise ObjectiveError(f"{where} must be finite, got {value!r}")
        if self.low is not None and value < self.low:
            raise ObjectiveError(f"{where} must be >= {self.low}, got {value!r}")
        if self.high is not None and value > self.high:
            raise ObjectiveError(f"{where} must be <= {self.high}, got {value!r}")
        return value


@dataclass(frozen=True)
class Component:
    """A registered component: the tensor function, its parameters and its symbolic form."""

    kind: str
    name: str
    fn: Callable[..., Any]
    params: Mapping[str, Param]
    symbolic: Callable[..., Any]
    state: Mapping[str, Any] = field(default_factory=dict)
    update_state: Callable[..., dict[str, Any]] | None = None
    check: Callable[..., str | None] | None = None
    tags: frozenset[str] = frozenset()
    reference: str = ""
    param_tags: Callable[..., frozenset[str]] | None = None
    key_params: Callable[..., dict[str, ParamValue]] | None = None

    @property
    def summary(self) -> str:
        """First line of the function's docstring."""
        return (inspect.getdoc(self.fn) or "").splitlines()[0] if self.fn.__doc__ else ""

    def defaults(self) -> dict[str, ParamValue]:
        return {name: p.default for name, p in self.params.items()}

    def tags_for(self, params: Mapping[str, ParamValue]) -> frozenset[str]:
        """The static tags plus those the parameter values add (``param_tags``)."""
        extra = self.param_tags(**params) if self.param_tags is not None else frozenset()
        return self.tags | extra

    def key_values(self, params: Mapping[str, ParamValue]) -> dict[str, ParamValue]:
        """The parameter values as they enter the spec's key: an *added* parameter at its
        default is left out, and ``key_params`` (if any) rewrites the rest."""
        kept = {
            k: v
            for k, v in params.items()
            if k not in self.params
            or self.params[k].keyed_at_default
            or v != self.params[k].default
        }
        return kept if self.key_params is None else self.key_params(**kept)

    def validate_params(self, values: Mapping[str, Any]) -> dict[str, ParamValue]:
        """Defaults filled in and every value checked; unknown names raise ObjectiveError."""
        owner = f"{self.kind} '{self.name}'"
        unknown = sorted(set(values) - set(self.params))
        if unknown:
            valid = sorted(self.params) or ["(none)"]
            raise ObjectiveError(
                f"{owner}: unknown parameter(s) {unknown}; valid parameters: {valid}"
            )
        out = self.defaults()
        for name, value in values.items():
            out[name] = self.params[name].validate(owner, value)
        problem = self.check(**out) if self.check is not None else None
        if problem:
            raise ObjectiveError(f"{owner}: {problem}")
        return out


class Registry:
    """Name -> Component for one kind of component (advantage, surrogate, ...)."""

    def __init__(self, kind: str, n_positional: int) -> None:
        self.kind = kind
        self._n_positional = n_positional
        self._components: dict[str, Component] = {}

    def register(
        self,
        name: str,
        *,
        symbolic: Callable[..., Any],
        bounds: Mapping[str, tuple[float | None, float | None]] | None = None,
        choices: Mapping[str, tuple[str, ...]] | None = None,
        log: tuple[str, ...] = (),
        added: tuple[str, ...] = (),
        param_checks: Mapping[str, Callable[[Any], str | None]] | None = None,
        update_state: Callable[..., dict[str, Any]] | None = None,
        check: Callable[..., str | None] | None = None,
        tags: tuple[str, ...] = (),
        reference: str = "",
        param_tags: Callable[..., frozenset[str]] | None = None,
        key_params: Callable[..., dict[str, ParamValue]] | None = None,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator registering ``fn`` under ``name``.

        The first ``n_positional`` arguments of ``fn`` are the data (batch, tensors); every
        later positional-or-keyword argument with a default is a parameter; keyword-only
        arguments are state (see module docstring). ``param_checks[name](value)`` may refuse
        one parameter's value (it runs for dormant values too); ``check(**params)`` may return
        a message for a combination of parameter values that bounds alone cannot reject.
        ``tags`` are facts the spec and builder need: ``group_relative`` (needs group_size >= 2),
        ``token_rewards`` (consumes per-token rewards itself), ``critic`` (needs a value head),
        ``trust_region`` (the trainer takes a natural-gradient step instead of Adam's),
        ``kl_after_update`` (``update_state`` reads the KL the batch's updates moved by),
        ``expression`` (a formula parameter ``expr``, searched on its own axis);
        ``param_tags`` and ``key_params`` are the hooks of the module docstring. ``added``
        names parameters introduced after spec keys were published (module docstring).
        """

        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._components:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            sig = inspect.signature(fn)
            args = list(sig.parameters.values())
            params: dict[str, Param] = {}
            state: dict[str, Any] = {}
            for arg in args[self._n_positional :]:
                if arg.kind is inspect.Parameter.KEYWORD_ONLY:
                    state[arg.name] = arg.default
                    continue
                if arg.default is inspect.Parameter.empty:
                    raise ValueError(
                        f"{self.kind} '{name}': parameter '{arg.name}' needs a default"
                    )
                low, high = (bounds or {}).get(arg.name, (None, None))
                params[arg.name] = Param(
                    name=arg.name,
                    default=arg.default,
                    kind=type(arg.default),
                    low=low,
                    high=high,
                    choices=(choices or {}).get(arg.name),
                    log=arg.name in log,
                    keyed_at_default=arg.name not in added,
                    check=(param_checks or {}).get(arg.name),
                )
            stray = sorted(set(added) - set(params))
            if stray:
                raise ValueError(f"{self.kind} '{name}': added {stray} are not parameters")
            self._components[name] = Component(
                kind=self.kind,
                name=name,
                fn=fn,
                params=params,
                symbolic=symbolic,
                state=state,
                update_state=update_state,
                check=check,
                tags=frozenset(tags),
                reference=reference,
                param_tags=param_tags,
                key_params=key_params,
            )
            return fn

        return decorate

    def get(self, name: str) -> Component:
        try:
            return self._components[name]
        except KeyError:
            raise ObjectiveError(
                f"unknown {self.kind} '{name}'; valid names: {self.names()}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._components)

    def __contains__(self, name: object) -> bool:
        return name in self._components

    def __iter__(self):
        return iter(self._components.values())

    def all_param_names(self) -> set[str]:
        """Every parameter name used by some component of this kind."""
        return {p for c in self._components.values() for p in c.params}


ADVANTAGES = Registry("advantage", n_positional=1)
SURROGATES = Registry("surrogate", n_positional=4)
KL_ESTIMATORS = Registry("kl estimator", n_positional=2)
AGGREGATIONS = Registry("aggregation", n_positional=2)
PREFERENCE_LOSSES = Registry("preference", n_positional=1)
