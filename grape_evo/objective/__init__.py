"""The objective space: components, the spec that composes them, presets and formulas."""

from grape_evo.objective import presets
from grape_evo.objective.batch import PreferenceBatch, RolloutBatch
from grape_evo.objective.builder import Objective, build_objective
from grape_evo.objective.registry import (
    ADVANTAGES,
    AGGREGATIONS,
    KL_ESTIMATORS,
    PREFERENCE_LOSSES,
    SURROGATES,
    ObjectiveError,
)
from grape_evo.objective.spec import ComponentSpec, KLSpec, ObjectiveSpec, PreferenceSpec
from grape_evo.objective.surrogates import KL_AFTER_UPDATE, old_to_new_kl

REGISTRIES = {
    "advantage": ADVANTAGES,
    "surrogate": SURROGATES,
    "kl": KL_ESTIMATORS,
    "aggregation": AGGREGATIONS,
    "preference": PREFERENCE_LOSSES,
}

__all__ = [
    "ADVANTAGES",
    "AGGREGATIONS",
    "KL_AFTER_UPDATE",
    "KL_ESTIMATORS",
    "PREFERENCE_LOSSES",
    "REGISTRIES",
    "SURROGATES",
    "ComponentSpec",
    "KLSpec",
    "Objective",
    "ObjectiveError",
    "ObjectiveSpec",
    "PreferenceBatch",
    "PreferenceSpec",
    "RolloutBatch",
    "build_objective",
    "old_to_new_kl",
    "presets",
]
