"""Search: YAML search spaces, the evolution sampler, campaigns over an Optuna study."""

from grape_evo.search.campaign import Campaign, CampaignError, budget_used
from grape_evo.search.sampler import EvolutionSampler, Gene
from grape_evo.search.space import SearchSpace, SpaceError, load_space, parse_space

__all__ = [
    "Campaign",
    "CampaignError",
    "EvolutionSampler",
    "Gene",
    "SearchSpace",
    "SpaceError",
    "budget_used",
    "load_space",
    "parse_space",
]
