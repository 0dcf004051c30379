"""An experiment's search campaign: a shipped space with the experiment's overrides, run to its
budget and re-evaluated on fresh seeds, and the candidates it discovered."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import optuna

from grape_evo.experiment.config import ExperimentConfigError, field
from grape_evo.objective import ObjectiveSpec
from grape_evo.search.campaign import Campaign
from grape_evo.search.space import SearchSpace, SpaceError, load_yaml_text, parse_space


def campaign_space(config: Mapping[str, Any], path: Path) -> SearchSpace:
    """The space file ``config["space"]`` names (relative to ``path``'s folder) with
    ``space_overrides`` merged per top-level key (a mapping is updated key by key, anything
    else replaced)."""
    space_path = (path.parent / field(config, "space", str, path)).resolve()
    try:
        data = load_yaml_text(space_path.read_text(), str(space_path))
    except OSError as err:
        raise ExperimentConfigError(f"{path}: space: cannot read {space_path}") from err
    for key, value in (config.get("space_overrides") or {}).items():
        old = data.get(key)
        data[key] = {**old, **value} if isinstance(old, dict) and isinstance(value, dict) else value
    try:
        return parse_space(data, f"{space_path} (with space_overrides from {path})")
    except SpaceError as err:
        raise ExperimentConfigError(str(err)) from err


def run_campaign(
    space: SearchSpace, out: Path, jobs: int = 1, population: int = 1
) -> tuple[Campaign, optuna.Study, list[dict[str, Any]]]:
    """Run (or resume) the campaign in ``out`` to its budget (every candidate and baseline),
    then re-evaluate its best on fresh seeds (``grape evolve``'s two phases). Returns the
    campaign (its ``lr`` is the rate the search used), the study and the re-evaluated rows."""
    campaign = Campaign(space, out, jobs=jobs, population=population)
    study = campaign.open(create=True)
    budget = space.search.trials + len(space.baselines)
    study.set_user_attr("candidates", space.search.trials)
    study.set_user_attr("budget", budget)
    campaign.optimize(study, budget, wait_for_running=True)
    return campaign, study, campaign.reevaluate(study)


def run_minutes(folder: Path) -> float:
    """Minutes of training recorded by the run summaries under ``folder`` (their
    ``wall_seconds``; a campaign's trials, tuning and re-evaluation)."""
    return sum(
        float(json.loads(p.read_text()).get("wall_seconds") or 0.0) / 60
        for p in folder.rglob("summary.json")
    )


class Discovery(NamedTuple):
    """A re-evaluated candidate: its row of ``discoveries.json``, its objective (named after
    its label) and the learning rate it trained with."""

    row: dict[str, Any]
    spec: ObjectiveSpec
    lr: float


def discovered(
    study: optuna.Study,
    rows: list[dict[str, Any]],
    top: int,
    default_lr: float,
    by: str = "reward",
) -> list[Discovery]:
    """The ``top`` re-evaluated candidates that ended ok (not baselines), best first by the
    row field ``by`` (``reward``, or ``paired_effect`` against the campaign's reference), each
    with its genome's learning rate (``default_lr`` when the rate was not searched)."""
    ok = [r for r in rows if not r["baseline"] and r["status"] == "ok" and r.get(by) is not None]
    out = []
    for r in sorted(ok, key=lambda row: row[by], reverse=True)[:top]:
        overrides = study.trials[r["trial"]].user_attrs.get("overrides") or {}
        spec = ObjectiveSpec.from_dict(r["objective"]).with_name(r["label"])
        out.append(Discovery(r, spec, float(overrides.get("lr", default_lr))))
    return out
