"""Hostile and broken input: each gets one clear error at start, or a failed trial with its
reason; nothing crashes the campaign and nothing already recorded is lost."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from campaign_helpers import TINY_BUDGET
from optuna.trial import TrialState
from typer.testing import CliRunner

from grape_evo import cli
from grape_evo.objective.builder import Objective
from grape_evo.search.campaign import Campaign, budget_used
from grape_evo.search.space import parse_space
from grape_evo.tasks.addition import AdditionTask

SPACE: dict[str, Any] = {
    "name": "hostile",
    "tasks": ["addition"],
    "policy": {"preset": "tiny"},
    "budget": {**TINY_BUDGET, "seeds": 1, "reeval_seeds": 1, "top_k": 1},
    # Two updates per batch: the ratio moves, so every clip trains differently (at one update
    # they all train alike, and the campaign would evaluate them once).
    "base": {"group_size": 4, "advantage": "group_zscore", "surrogate": "ppo_clip", "epochs": 2},
    "axes": {"surrogate.clip_high": {"low": 0.1, "high": 0.4}},
    "baselines": [],
    "search": {"sampler": "random", "trials": 4, "pruner": "none"},
}
BASE = yaml.safe_dump(SPACE, sort_keys=False)
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdef", "bcdefg", strict=True)
)

# name -> (file text, text the one error line must contain)
HOSTILE: dict[str, tuple[str, str]] = {
    "alias_bomb": (BOMB, "alias bomb"),
    "recursive_alias": ("a: &a [*a]\n", "invalid YAML"),
    "python_tag": ("!!python/object/apply:os.system ['echo pwned']\n", "invalid YAML"),
    "python_tag_in_value": (
        BASE.replace("name: hostile", "name: !!python/object/apply:os.getcwd []"),
        "invalid YAML",
    ),
    "list_document": ("- a\n- b\n", "must be a mapping"),
    "scalar_document": ("42\n", "must be a mapping"),
    "empty_document": ("", "empty"),
    "huge_integer": (BASE.replace("steps: 2", "steps: 99999999999999999999"), "budget.steps"),
    "huge_float": (BASE.replace("steps: 2", "steps: 1e400"), "budget.steps"),
    "huge_trials": (BASE.replace("trials: 4", "trials: 1000000000"), "search.trials"),
    "nan_bound": (BASE.replace("low: 0.1", "low: .nan"), "clip_high.low"),
    "inf_bound": (BASE.replace("high: 0.4", "high: .inf"), "clip_high.high"),
    "string_for_int": (BASE.replace("steps: 2", "steps: many"), "budget.steps"),
    "bool_for_int": (BASE.replace("seeds: 1", "seeds: true"), "budget.seeds"),
    "list_for_mapping": (BASE.replace("budget:", "budget: [1]\nunused:"), "unused"),
    "unknown_top_key": (BASE + "frobnicate: 1\n", "frobnicate"),
    "unknown_budget_key": (BASE.replace("steps: 2", "steps: 2\n  stepz: 2"), "stepz"),
    "binary": ("\x00\x01\x02", "invalid YAML"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_space_is_one_clear_error(case: str, tmp_path: Path) -> None:
    text, needle = HOSTILE[case]
    space = tmp_path / "space.yaml"
    space.write_text(text)
    out = tmp_path / "run"
    result = CliRunner().invoke(cli.app, ["evolve", str(space), "--out", str(out)])
    assert result.exit_code == 2, (result.exit_code, repr(result.exception), result.output[-500:])
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    err = " ".join(result.stderr.split())
    assert err.count("error:") == 1, result.stderr
    assert needle in err, result.stderr
    assert not (out / "study.db").exists()


def test_no_unsafe_yaml_or_eval_in_the_package() -> None:
    """YAML is always loaded with a safe loader; nothing is passed to eval/exec."""
    root = Path(__file__).resolve().parents[2] / "grape_evo"
    unsafe = re.compile(
        r"yaml\.(load|load_all|unsafe_load|full_load)\(|Loader=yaml\.(Unsafe|Full)?Loader\b"
        r"|(?<![\w.])(?<!def )(eval|exec|compile)\(|__import__\("
    )
    hits = [
        f"{path.relative_to(root)}:{n}: {line.strip()}"
        for path in sorted(root.rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if unsafe.search(line)
    ]
    assert hits == []


def test_broken_rewards_and_models_fail_trials_not_the_campaign(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trial 1's reward is NaN, trial 2's reward raises, trial 3's model outputs NaN: each is a
    FAIL with its reason; trials 0 and 4 complete and the earlier records stay intact."""
    mode = {"now": ""}
    reward, call = AdditionTask.reward, Objective.__call__

    def hostile_reward(self: AdditionTask, prompts: Any, completions: Any) -> list[float]:
        if mode["now"] == "nan":
            return [float("nan")] * len(completions)
        if mode["now"] == "raise":
            raise RuntimeError("reward server exploded")
        return reward(self, prompts, completions)

    def hostile_model(self: Objective, batch: Any) -> Any:
        loss, stats = call(self, batch)
        return (loss * float("nan"), stats) if mode["now"] == "nan_model" else (loss, stats)

    real = Campaign.train_runs

    def train_runs(campaign: Campaign, runs: Any, *args: Any, **kw: Any) -> Any:
        (run,) = runs  # population 1: one candidate per batch
        number = int(Path(run.folder).name)
        mode["now"] = {1: "nan", 2: "raise", 3: "nan_model"}.get(number, "")
        try:
            return real(campaign, runs, *args, **kw)
        finally:
            mode["now"] = ""

    monkeypatch.setattr(AdditionTask, "reward", hostile_reward)
    monkeypatch.setattr(Objective, "__call__", hostile_model)
    monkeypatch.setattr(Campaign, "train_runs", train_runs)
    campaign = Campaign(parse_space(copy.deepcopy(SPACE)), tmp_path / "run")
    study = campaign.open(create=True)
    campaign.optimize(study, 1)
    first = study.get_trials()[0]
    campaign.optimize(study, 5)
    trials = {t.number: t for t in study.get_trials()}
    assert sorted(trials) == [0, 1, 2, 3, 4]
    assert budget_used(study) == 5
    assert [trials[n].state for n in (0, 4)] == [TrialState.COMPLETE] * 2
    assert trials[0].user_attrs == first.user_attrs and trials[0].values == first.values
    failures = {n: trials[n].user_attrs.get("failure", "") for n in (1, 2, 3)}
    states = {n: (t.state, t.user_attrs.get("reused_from"), t.params) for n, t in trials.items()}
    assert all(trials[n].state == TrialState.FAIL for n in failures), (failures, states)
    assert "non-finite rewards" in failures[1], failures[1]
    assert "reward server exploded" in failures[2], failures[2]
    assert failures[3].startswith("addition seed 0: "), failures[3]
    assert "diverged" in failures[3] or "nan" in failures[3].lower(), failures[3]
