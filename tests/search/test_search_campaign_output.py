"""What a campaign shows outside its folder (issue 17): the study's Optuna metric names (what
optuna-dashboard labels its axes with) and, when stdout is not a terminal, one plain line per
finished trial and per re-evaluated objective. Training is faked (tests/campaign_helpers.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
from campaign_helpers import TINY_BUDGET, fake_result, fake_training, invoke, write_space
from optuna.trial import TrialState

from grape_evo.cli_campaign import trial_line
from grape_evo.search.records import TrialRecord


def space(**search: Any) -> dict[str, Any]:
    """A three-point space on GRPO (without an entropy bonus it is GRPO itself), GRPO the
    baseline and so the reference."""
    return {
        "name": "out",
        "tasks": ["addition"],
        "policy": {"preset": "tiny"},
        "budget": dict(TINY_BUDGET),
        "base": "grpo",
        "axes": {"entropy_coef": {"choices": [0.0, 0.001, 0.01]}},
        "baselines": ["grpo"],
        "search": {"sampler": "grid", "trials": 3, "pruner": "none", "tune_lr": [], **search},
    }


def evolve(tmp_path: Path, data: dict[str, Any]) -> tuple[Any, optuna.Study]:
    out = tmp_path / "run"
    result = invoke("evolve", str(write_space(tmp_path, data)), "--out", str(out))
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="out", storage=f"sqlite:///{out / 'study.db'}")
    return result, study


@pytest.mark.parametrize(
    ("objectives", "baselines", "names"),
    [
        (["final_reward"], ["grpo"], ["fitness"]),
        (["final_reward"], [], ["final_reward"]),
        (["final_reward", "kl_to_ref"], ["grpo"], ["fitness", "kl_to_ref"]),
        (["final_reward", "kl_to_ref"], [], ["final_reward", "kl_to_ref"]),
    ],
)
def test_study_names_its_metrics(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    objectives: list[str],
    baselines: list[str],
    names: list[str],
) -> None:
    """With a reference (GRPO, when it is a baseline) the first value is the paired fitness,
    not the raw reward; without one it is the mean final reward."""
    fake_training(monkeypatch, fake_result)
    data = {**space(objectives=objectives), "baselines": baselines}
    _, study = evolve(tmp_path, data)
    assert study.metric_names == names
    assert len(study.directions) == len(names)


def test_plain_lines_per_trial_and_per_reevaluated_objective(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CliRunner's stdout is not a terminal: no progress bar, one line per finished trial
    (here a completed baseline, a candidate reusing its result, another candidate and a
    failed one) and one per row of discoveries.json."""

    def fake(spec: Any, configs: Any, out_dir: Path) -> Any:
        if spec.entropy_coef == 0.01:
            return fake_result(spec, configs, out_dir, status="failed", reason="boom")
        return fake_result(spec, configs, out_dir)

    fake_training(monkeypatch, fake)
    result, study = evolve(tmp_path, space())
    lines = result.stdout.splitlines()
    assert not any("━" in line for line in lines), result.stdout  # no bar drawn

    trials = study.get_trials()
    assert len(trials) == 4 and all(t.state.is_finished() for t in trials)
    trial_lines = [line for line in lines if line.startswith("trial ")]
    assert len(trial_lines) == len(trials), result.stdout
    states = []
    for t in trials:
        (line,) = [x for x in trial_lines if x.startswith(f"trial {t.number} ")]
        label = t.user_attrs.get("baseline") or f"trial-{t.number}"
        assert line.startswith(f"trial {t.number} {label}: {t.state.name}"), line
        seeds = {run["seed"] for run in t.user_attrs.get("runs", [])}
        assert f"| seeds {len(seeds)} |" in line, line
        if t.state == TrialState.COMPLETE:
            assert f"fitness {t.values[0]:.4f}" in line, line
        else:
            assert "(addition seed 0: failed: boom)" in line, line
        if "reused_from" in t.user_attrs:
            assert f"(reused from trial {t.user_attrs['reused_from']})" in line, line
        states.append(t.state)
    assert sorted(s.name for s in states) == ["COMPLETE", "COMPLETE", "COMPLETE", "FAIL"]
    assert sum("reused from trial 0" in line for line in trial_lines) == 1
    assert "campaign out: 4/4 trials;" in result.stdout

    rows = json.loads((tmp_path / "run" / "discoveries.json").read_text())["candidates"]
    reeval_lines = [line for line in lines if line.startswith("reevaluated ")]
    assert len(reeval_lines) == len(rows) == 3, result.stdout
    assert any(row["paired_effect"] not in (None, 0.0) for row in rows)
    for row, line in zip(rows, reeval_lines, strict=True):  # in the ranked order
        assert line.startswith(f"reevaluated {row['label']}"), line
        if row["paired_effect"] is None:  # the reference itself
            assert row["label"] == "grpo" and "effect - CI [-, -] verdict -" in line, line
        else:
            expected = (
                f"effect {row['paired_effect']:+.3f} "
                f"CI [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}] verdict {row['verdict']}"
            )
            assert expected in line, line
        assert f"| seeds {row['n_seeds']} | ok" in line, line


def test_trial_line_of_a_trial_without_a_value_names_why() -> None:
    """A surplus trial (failed unstarted: the budget was claimed elsewhere) has no failure
    text; its line says what it is."""
    study = optuna.create_study()
    trial = study.ask()
    trial.set_user_attr("surplus", True)
    frozen = study.tell(trial, state=TrialState.FAIL)
    line = trial_line(study, frozen)
    assert line.startswith("trial 0 trial-0: FAIL (surplus: the budget was claimed elsewhere")
    assert TrialRecord.of(frozen).runs == [] and "| seeds 0 |" in line


def test_a_campaign_stored_elsewhere_is_reported_and_exported_from_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --storage outside the run folder, RUN/storage.json says where the study is, so
    `grape report RUN` and `grape export RUN:best` find it (no study.db in RUN)."""
    fake_training(monkeypatch, fake_result)
    out, journal = tmp_path / "run", tmp_path / "shared" / "studies.log"
    journal.parent.mkdir()
    path = write_space(tmp_path, space())
    result = invoke("evolve", str(path), "--out", str(out), "--storage", f"journal:{journal}")
    assert result.exit_code == 0, result.output
    assert not (out / "study.db").exists()
    assert json.loads((out / "storage.json").read_text()) == {
        "storage": f"journal:{journal}",
        "study": "out",
    }
    report = invoke("report", str(out))
    assert report.exit_code == 0, report.output
    trials = (out / "report" / "trials.csv").read_text().splitlines()
    assert len(trials) == 1 + 4  # header, the baseline and the three candidates
    exported = invoke("export", f"{out}:best", "--to", "trl", "--out", str(tmp_path / "x"))
    assert exported.exit_code == 0, exported.output
    assert (tmp_path / "x" / "trl_config.json").is_file()


def test_no_campaign_in_a_folder_is_a_clear_error(tmp_path: Path) -> None:
    result = invoke("report", str(tmp_path))
    assert result.exit_code == 2
    assert "holds no campaign" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("url", "stored"),
    [
        ("postgresql://grape:s3cret@db.lab:5432/studies", "postgresql://grape@db.lab:5432/studies"),
        ("postgresql://grape@db.lab/studies", "postgresql://grape@db.lab/studies"),
        ("mysql+pymysql://u:p:q@h/d", "mysql+pymysql://u@h/d"),
        ("journal:/shared/log", "journal:/shared/log"),
    ],
)
def test_the_storage_pointer_leaves_out_the_password(url: str, stored: str) -> None:
    from grape_evo.search.campaign.storage import redacted

    assert redacted(url) == stored
