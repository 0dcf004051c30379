"""Search: YAML search spaces, their samplers, campaigns over an Optuna study.

``Campaign``, ``CampaignError`` and ``budget_used`` are imported on first use: the campaign
pulls in the training engine, which reading a space or building a sampler does not need.
"""

from typing import Any

from grape_evo.search.samplers import EvolutionSampler, make_pruner, make_sampler
from grape_evo.search.space import SearchSpace, SpaceError, load_space, parse_space

_CAMPAIGN_NAMES = ("Campaign", "CampaignError", "budget_used")

__all__ = [
    "Campaign",
    "CampaignError",
    "EvolutionSampler",
    "SearchSpace",
    "SpaceError",
    "budget_used",
    "load_space",
    "make_pruner",
    "make_sampler",
    "parse_space",
]


def __getattr__(name: str) -> Any:
    if name in _CAMPAIGN_NAMES:
        from grape_evo.search import campaign

        return getattr(campaign, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
