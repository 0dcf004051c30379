"""A one-off repair of a campaign study stopped by SIGTERM before 2026-12-02 (run once on
``runs/discovery/campaign`` on 2026-12-02, before the campaign was resumed to its end).

Before `grape_evo.search.campaign.storage.fail_and_retry`, a round interrupted by Ctrl-C or
SIGTERM recorded its trials as FAIL without queuing a retry, so they counted toward the budget
and a resumed campaign never trained them. This queues the retry the fixed code queues, for
every FAIL trial that holds no result (``reward``), no failure record (``failure``: e.g. a run
that diverged), no rejection by the cheap checks and no surplus mark, and that was not retried
already. Idempotent: a second call finds every such trial retried.

    python experiments/discovery/repair_interrupted_trials.py runs/discovery/campaign
"""

from __future__ import annotations

import sys
from pathlib import Path

from optuna.trial import TrialState

from grape_evo.search.campaign.ledger import retried_numbers
from grape_evo.search.campaign.storage import CampaignError, load_run_study, queue_retry
from grape_evo.search.records import TrialRecord


def main() -> None:
    if len(sys.argv) != 2:
        print(f"usage: {Path(__file__).name} CAMPAIGN_FOLDER", file=sys.stderr)
        sys.exit(2)
    try:
        study = load_run_study(Path(sys.argv[1]))
    except CampaignError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    for trial in trials:
        if trial.state != TrialState.FAIL or trial.number in retried:
            continue
        record = TrialRecord.of(trial)
        if record.reward is not None or record.failure or record.rejected or record.surplus:
            continue
        queue_retry(study, trial)
        print(f"trial {trial.number} ({record.label(trial.number)}): retry queued")


if __name__ == "__main__":
    main()
