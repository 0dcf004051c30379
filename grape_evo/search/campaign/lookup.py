"""A campaign's trial named from outside, as `grape export` takes it: ``RUN:trial-N`` (trial
number N of the campaign folder RUN) or ``RUN:best`` (its completed trial with the best score,
`grape_evo.search.campaign.ledger.best_trial`), and the objective stored with it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial

from grape_evo.objective import ObjectiveError, ObjectiveSpec
from grape_evo.search.campaign.ledger import best_trial
from grape_evo.search.campaign.storage import CampaignError, load_run_study
from grape_evo.search.records import TrialRecord

__all__ = ["TrialObjective", "is_trial_ref", "trial_objective"]

_REF = re.compile(r"^(?P<run>.+):(?:trial-(?P<number>\d+)|best)$")


@dataclass(frozen=True)
class TrialObjective:
    """The objective of one campaign trial: its number, label (``trial-N`` or a baseline's
    preset name), state, score, spec and training overrides (e.g. ``{"lr": ...}``)."""

    number: int
    label: str
    state: str
    score: float | None
    spec: ObjectiveSpec
    overrides: dict[str, Any]


def is_trial_ref(text: str) -> bool:
    """Whether ``text`` names a campaign's trial (``RUN:trial-N`` or ``RUN:best``)."""
    return _REF.match(text) is not None


def trial_objective(ref: str) -> TrialObjective:
    """The trial ``ref`` names and its stored objective; a `CampaignError` naming ``ref`` when
    RUN is no campaign folder, the trial does not exist or it has no (valid) objective."""
    match = _REF.match(ref)
    if match is None:
        raise CampaignError(f"'{ref}' names no campaign trial; expected RUN:trial-N or RUN:best")
    run = Path(match["run"])
    study = load_run_study(run)
    trials = study.get_trials(deepcopy=False)
    if match["number"] is None:
        trial = best_trial(study)
        if trial is None:
            raise CampaignError(f"'{ref}': the campaign in {run} has no completed trial yet")
    else:
        trial = next((t for t in trials if t.number == int(match["number"])), None)
        if trial is None:
            numbers = f"trials 0-{len(trials) - 1}" if trials else "no trials"
            raise CampaignError(f"'{ref}': the campaign in {run} has no such trial ({numbers})")
    return _objective_of(ref, trial)


def _objective_of(ref: str, trial: FrozenTrial) -> TrialObjective:
    record = TrialRecord.of(trial)
    label = record.label(trial.number)
    if record.objective is None:
        why = record.failure or ("surplus: never started" if record.surplus else trial.state.name)
        raise CampaignError(f"'{ref}': {label} has no objective stored with it ({why})")
    try:
        spec = ObjectiveSpec.from_dict(record.objective)
    except ObjectiveError as err:
        raise CampaignError(f"'{ref}': {label}'s stored objective is invalid: {err}") from None
    return TrialObjective(
        trial.number, label, trial.state.name, record.score, spec, dict(record.overrides)
    )
