"""experiments/discovery/repair_interrupted_trials.py: queues a retry for exactly the trials an
interrupted round left FAIL with nothing recorded, once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
from optuna.trial import TrialState

from grape_evo.search.campaign.storage import STUDY_FILE

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "experiments" / "discovery" / "repair_interrupted_trials.py"


def repair(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(folder)], capture_output=True, text=True, check=False
    )


def test_only_interrupted_trials_are_queued_again_and_only_once(tmp_path: Path) -> None:
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / STUDY_FILE}")
    x = optuna.distributions.FloatDistribution(0.0, 1.0)
    kinds = {  # user attributes each FAIL trial holds, by what happened to it
        "interrupted": {},
        "diverged": {"failure": "addition seed 1: diverged"},
        "finished badly": {"reward": 0.1},
        "rejected": {"rejected": True},
        "surplus": {"surplus": True},
    }
    for number, attrs in enumerate(kinds.values()):
        study.add_trial(
            optuna.create_trial(
                state=TrialState.FAIL, params={"x": number / 10}, distributions={"x": x},
                user_attrs=attrs,
            )
        )  # fmt: skip
    study.add_trial(optuna.create_trial(value=1.0, params={"x": 0.9}, distributions={"x": x}))
    first = repair(tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == ["trial 0 (trial-0): retry queued"]
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [(t.params, t.system_attrs["failed_trial"]) for t in waiting] == [({"x": 0.0}, 0)]
    assert repair(tmp_path).stdout == ""  # trial 0 is retried now


def test_a_folder_without_a_campaign_is_an_error(tmp_path: Path) -> None:
    result = repair(tmp_path)
    assert result.returncode == 2
    assert "holds no campaign" in result.stderr and "Traceback" not in result.stderr
