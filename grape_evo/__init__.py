"""grape-evo: Generalized Relative Advantage Policy Evolution.

Every RL post-training objective as one point in a space of small components, and a search
engine that trains small policies to find which objective works best.

The public API (imported on first use, so ``import grape_evo`` stays light)::

    import grape_evo as ge

    spec = ge.presets.get("grpo")                       # or ge.ObjectiveSpec.from_yaml(path)
    summary = ge.train(spec, ge.get_task("addition"), ge.TrainConfig(steps=50), out_dir="runs/x")
    runs = ge.train_members([ge.Member(spec, 1e-4), ge.Member(ge.presets.get("ppo"), 1e-4)],
                            ge.get_task("addition"), ge.TrainConfig(steps=50))

    space = ge.load_space("search_spaces/quickstart.yaml")
    campaign = ge.Campaign(space, "runs/quickstart", population=8)
    study = campaign.open(create=True)
    campaign.optimize(study, budget=space.search.trials + len(space.baselines))
    campaign.reevaluate(study)
    ge.write_report("runs/quickstart")

New components are registered on the registries (``ADVANTAGES.register(name, symbolic=...)``
and its siblings) and new tasks with ``register_task(name)``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    # the objective space
    "ObjectiveSpec": "grape_evo.objective",
    "ObjectiveError": "grape_evo.objective",
    "build_objective": "grape_evo.objective",
    "presets": "grape_evo.objective",
    "ADVANTAGES": "grape_evo.objective",
    "SURROGATES": "grape_evo.objective",
    "KL_ESTIMATORS": "grape_evo.objective",
    "AGGREGATIONS": "grape_evo.objective",
    "PREFERENCE_LOSSES": "grape_evo.objective",
    # tasks and policies
    "Task": "grape_evo.tasks",
    "get_task": "grape_evo.tasks",
    "register_task": "grape_evo.tasks",
    "PolicyConfig": "grape_evo.policy",
    # training
    "TrainConfig": "grape_evo.training",
    "Member": "grape_evo.training",
    "Engine": "grape_evo.training",
    "RunSummary": "grape_evo.training",
    "train": "grape_evo.training",
    "train_members": "grape_evo.training",
    # search and reports
    "SearchSpace": "grape_evo.search.space",
    "load_space": "grape_evo.search.space",
    "parse_space": "grape_evo.search.space",
    "Campaign": "grape_evo.search.campaign",
    "write_report": "grape_evo.analysis",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'grape_evo' has no attribute {name!r}")
