"""`grape export RUN:trial-N` and `RUN:best` (issue 17): a campaign trial's stored objective
exported as if it were given as a YAML file; bad references exit 2 with one line. The campaign
trains nothing (fake training, tests/campaign_helpers.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna
import pytest
import yaml
from campaign_helpers import TINY_BUDGET, fake_result, fake_training, invoke, write_space
from optuna.trial import TrialState

from grape_evo.objective import ObjectiveSpec

SPACE = {
    "name": "exp",
    "tasks": ["addition"],
    "policy": {"preset": "tiny"},
    "budget": dict(TINY_BUDGET),
    "base": "grpo",
    "axes": {
        "advantage.name": {"choices": ["group_zscore", "rank"]},
        "kl.coef": {"low": 1.0e-4, "high": 0.1, "log": True},
        "optim.lr": {"low": 1.0e-5, "high": 1.0e-3, "log": True},
    },
    "baselines": ["grpo"],
    "search": {"sampler": "random", "trials": 4, "pruner": "none", "tune_lr": []},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished campaign of a baseline and four candidates (one failed)."""
    folder = tmp_path_factory.mktemp("campaign")

    def fake(spec, configs, out_dir):
        if spec.name == "candidate-2":
            return fake_result(spec, configs, out_dir, status="failed", reason="boom")
        return fake_result(spec, configs, out_dir)

    with pytest.MonkeyPatch.context() as mp:
        fake_training(mp, fake)
        out = folder / "run"
        result = invoke("evolve", str(write_space(folder, SPACE)), "--out", str(out))
    assert result.exit_code == 0, result.output
    return out


def study_of(run: Path) -> optuna.Study:
    return optuna.load_study(study_name="exp", storage=f"sqlite:///{run / 'study.db'}")


def export(ref: str, out: Path, target: str = "trl") -> str:
    result = invoke("export", ref, "--to", target, "--out", str(out))
    assert result.exit_code == 0, result.output
    return result.stdout


def test_a_trial_exports_as_its_objective_in_a_yaml_file(run: Path, tmp_path: Path) -> None:
    trial = study_of(run).trials[3]
    assert trial.user_attrs["objective"]["name"] == "candidate-3"
    spec_file = tmp_path / "candidate.yaml"
    spec_file.write_text(yaml.safe_dump(trial.user_attrs["objective"]))
    for target, config in (("trl", "trl_config.json"), ("verl", "verl_config.yaml")):
        from_trial, from_file = tmp_path / f"{target}-trial", tmp_path / f"{target}-file"
        output = export(f"{run}:trial-3", from_trial, target)
        lr = trial.user_attrs["overrides"]["lr"]  # a gene: not carried into the export
        assert f"trial-3 (COMPLETE, score {trial.values[0]:.4f}); it trained at lr {lr:g}" in output
        export(str(spec_file), from_file, target)
        names = sorted(p.name for p in from_trial.iterdir())
        assert names == sorted(p.name for p in from_file.iterdir()) and config in names
        for name in names:
            assert (from_trial / name).read_text() == (from_file / name).read_text(), name
    document = json.loads((tmp_path / "trl-trial" / "trl_config.json").read_text())
    assert document["grape"]["objective"] == "candidate-3"
    assert document["grape"]["key"] == ObjectiveSpec.from_yaml(spec_file).key()
    assert "learning_rate" not in document["config"]


def test_best_is_the_completed_trial_with_the_highest_value(run: Path, tmp_path: Path) -> None:
    """The study maximises the paired fitness; a failed trial has no value."""
    trials = study_of(run).get_trials(states=(TrialState.COMPLETE,))
    best = max(trials, key=lambda t: (t.values[0], -t.number))
    assert len({t.values[0] for t in trials}) > 1  # a real choice
    output = export(f"{run}:best", tmp_path / "best")
    label = best.user_attrs.get("baseline") or f"trial-{best.number}"
    assert f"{run}:best: {label} (COMPLETE, score {best.values[0]:.4f})" in output, output
    document = json.loads((tmp_path / "best" / "trl_config.json").read_text())
    assert document["grape"]["objective"] == best.user_attrs["objective"]["name"]
    export(f"{run}:trial-{best.number}", tmp_path / "same")
    same = json.loads((tmp_path / "same" / "trl_config.json").read_text())
    assert same == document


def one_line_error(ref: str, out: Path) -> str:
    result = invoke("export", ref, "--to", "trl", "--out", str(out))
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_bad_references_exit_2_with_one_line(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    line = one_line_error(f"{tmp_path / 'nowhere'}:trial-0", out)
    assert "nowhere" in line and "no campaign" in line and "study.db" in line
    line = one_line_error(f"{run}:trial-99", out)
    assert "trial-99" in line and "no such trial" in line and "trials 0-4" in line
    # A trial without an objective: one whose worker died before it decided one.
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    study = study_of(copy)
    study.tell(study.ask(), state=TrialState.FAIL)
    line = one_line_error(f"{copy}:trial-5", out)
    assert "trial-5" in line and "no objective" in line and "FAIL" in line
    assert not out.exists()  # nothing written for a bad reference
