"""Population mode in a campaign (``Campaign(population=P)``, ``grape evolve --population P``).

* The same trials (same seeded sampler, same enqueued baselines) get the same states, genes and
  values as in a sequential campaign, up to float rounding; each keeps its own folder with
  verified checksums and records how many members it was trained with.
* Every preset, TRPO and SFT included, trains as a member of one population.
* A pruned member leaves the population while the others complete; baselines are never
  pruned (in either mode); Ctrl-C records every trial of the round as FAIL, queues each again
  (a resumed campaign trains them and spends its whole budget) and nothing stays RUNNING; a
  SIGKILLed population campaign resumes, retrying each of its P trials once; a LoRA policy
  trains in populations too.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import pytest
from campaign_helpers import TINY_BUDGET, cli_env, db_states, integrity, invoke, write_space
from optuna.trial import FrozenTrial, TrialState

from grape_evo.objective import presets
from grape_evo.policy import PolicyConfig
from grape_evo.search.campaign import Campaign, CampaignError, budget_used
from grape_evo.search.campaign.scheduler import run_round, step_cost
from grape_evo.search.campaign.storage import fail_and_retry
from grape_evo.search.evaluator import CandidateRun, run_candidates, verify_artifacts
from grape_evo.search.records import TrialRecord
from grape_evo.search.space import parse_space
from grape_evo.search.space.task_ref import TaskRef
from grape_evo.training import TrainConfig

SPACE: dict[str, Any] = {
    "name": "pop",
    "tasks": ["addition"],
    "policy": {"preset": "tiny"},
    "budget": dict(TINY_BUDGET),
    "base": "grpo",
    "axes": {
        "advantage.name": {"choices": ["group_zscore", "group_mean", "rloo"]},
        "surrogate.name": {"choices": ["reinforce", "ppo_clip"]},
        "optim.lr": {"low": 1e-4, "high": 3e-3, "log": True},
    },
    "baselines": ["grpo", "ppo"],
    "search": {"sampler": "random", "trials": 3, "pruner": "none", "seed": 11},
}
BUDGET = 5  # 3 candidates + 2 baselines


@pytest.fixture(scope="module", autouse=True)
def _campaign_env(campaign_env: None) -> None:
    """Every test here runs with the shared cache and one thread (tests/conftest.py)."""


def run(tmp_path: Path, name: str, population: int, **space: Any) -> optuna.Study:
    campaign = Campaign(parse_space({**SPACE, **space}), tmp_path / name, population=population)
    study = campaign.open(create=True)
    campaign.optimize(study, BUDGET, wait_for_running=True)
    return study


class PruneTrial(optuna.pruners.BasePruner):
    """Prunes one trial number at its first report; ``interrupt`` raises Ctrl-C instead."""

    def __init__(self, number: int, interrupt: bool = False) -> None:
        self.number, self.interrupt = number, interrupt

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if trial.number == self.number and self.interrupt:
            raise KeyboardInterrupt
        return trial.number == self.number


def run_and_reevaluate(tmp_path: Path, name: str, population: int) -> tuple[Any, list[Any]]:
    campaign = Campaign(parse_space(SPACE), tmp_path / name, population=population)
    study = campaign.open(create=True)
    campaign.optimize(study, BUDGET, wait_for_running=True)
    return study.get_trials(), campaign.reevaluate(study)


def test_population_campaign_matches_the_sequential_one(tmp_path: Path) -> None:
    sequential, sequential_rows = run_and_reevaluate(tmp_path, "sequential", population=1)
    together, together_rows = run_and_reevaluate(tmp_path, "population", population=4)
    assert [t.number for t in together] == [t.number for t in sequential] == list(range(BUDGET))
    for ours, theirs in zip(together, sequential, strict=True):
        assert ours.state == theirs.state == TrialState.COMPLETE, ours.number
        assert ours.params == theirs.params
        assert ours.user_attrs["key"] == theirs.user_attrs["key"]
        assert ours.value == pytest.approx(theirs.value, abs=1e-6), ours.number
        assert ours.intermediate_values.keys() == theirs.intermediate_values.keys()
        for step, value in theirs.intermediate_values.items():
            assert ours.intermediate_values[step] == pytest.approx(value, abs=1e-6)
        folder = tmp_path / "population" / "trials" / f"{ours.number:05d}"
        assert verify_artifacts(folder, ours.user_attrs["artifacts"]) == []
        summary = json.loads((folder / "addition" / "seed1" / "summary.json").read_text())
        # Round 1 asks trials 0 and 1, the two baselines (grpo, ppo: never pruned), and no
        # more after PPO (16 updates with a critic: the cost of more than 4 one-update
        # candidates); they train their two seeds as one population of 4 (PPO's group size 1
        # beside GRPO's 8). Round 2 asks the candidates 2-4, whose pruner judges them seed by
        # seed: one engine of 3 per seed.
        expected = {0: 4, 1: 4, 2: 3, 3: 3, 4: 3}[ours.number]
        assert summary["trained_with"] == expected, ours.number
        assert TrialRecord.of(ours).trained_with == expected
        assert TrialRecord.of(theirs).trained_with == 1
    # Re-evaluation on fresh seeds: the top 2, GRPO and PPO together; the same numbers.
    assert [r["label"] for r in together_rows] == [r["label"] for r in sequential_rows]
    for ours, theirs in zip(together_rows, sequential_rows, strict=True):
        assert ours["rewards"] == pytest.approx(theirs["rewards"], abs=1e-6), ours["label"]
        folder = tmp_path / "population" / "reeval" / ours["label"] / "addition" / "seed1001"
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["trained_with"] == ours["trained_with"] == 4
    # Run again, the re-evaluation reads every run back instead of training it.
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "population" / "reeval").rglob("*")}
    campaign = Campaign(parse_space(SPACE), tmp_path / "population", population=4)
    again = campaign.reevaluate(campaign.open(create=False))
    assert [r["rewards"] for r in again] == [r["rewards"] for r in together_rows]
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_two_objective_trials_train_their_seeds_together(tmp_path: Path) -> None:
    """Optuna cannot prune a trial of a two-objective study, so no pruner needs its seeds one
    after another: in population mode each trial's seeds are packed, with the values of the
    sequential campaign."""
    search = {**SPACE["search"], "objectives": ["final_reward", "kl_to_ref"]}
    sequential = run(tmp_path, "sequential", population=1, search=search).get_trials()
    together = run(tmp_path, "population", population=4, search=search).get_trials()
    for ours, theirs in zip(together, sequential, strict=True):
        assert ours.state == theirs.state == TrialState.COMPLETE, ours.number
        # the fitness (from rewards: fractions of 64 prompts) agrees exactly; the KL up to
        # float rounding (other matmul shapes) carried through the steps. (It was 1e-4 to 1e-3
        # while a member scored its reference with other arithmetic than the reference's own:
        # a KL gradient of rounding noise at the warm start, which Adam made into a step.)
        assert ours.values[0] == pytest.approx(theirs.values[0], abs=1e-6), ours.number
        assert ours.values[1] == pytest.approx(theirs.values[1], rel=1e-5), ours.number
    # Round 1: trials 0-3 on 2 seeds, 8 runs cut candidate by candidate into 2 engines of 4;
    # round 2: trial 4's 2 seeds in one engine; sequentially every run trains alone.
    assert [TrialRecord.of(t).trained_with for t in together] == [4, 4, 4, 4, 2]
    assert [TrialRecord.of(t).trained_with for t in sequential] == [1] * BUDGET


def test_offline_preference_campaign_matches_the_sequential_one(tmp_path: Path) -> None:
    """A DPO-family space (offline pairs): the same trial values as a sequential campaign, and
    the first round's four trials trained as one population."""
    offline = {
        "base": "dpo",
        "axes": {
            "preference.name": {"choices": ["sigmoid", "ipo", "hinge", "robust"]},
            "preference.beta": {"low": 0.05, "high": 0.5, "log": True},
        },
        "baselines": ["dpo", "ipo"],
    }
    sequential = run(tmp_path, "sequential", population=1, **offline).get_trials()
    together = run(tmp_path, "population", population=4, **offline).get_trials()
    for ours, theirs in zip(together, sequential, strict=True):
        assert ours.state == theirs.state == TrialState.COMPLETE, ours.number
        assert ours.params == theirs.params
        assert ours.value == pytest.approx(theirs.value, abs=1e-6), ours.number
    folder = tmp_path / "population" / "trials" / "00000" / "addition" / "seed0"
    assert json.loads((folder / "summary.json").read_text())["trained_with"] == 4


def test_a_pruned_member_leaves_and_the_others_complete(tmp_path: Path) -> None:
    space = parse_space({**SPACE, "baselines": ["grpo"]})
    campaign = Campaign(space, tmp_path / "run", population=4)
    study = campaign.open(create=True)
    study.pruner = PruneTrial(2)
    campaign.optimize(study, 4, wait_for_running=True)
    states = {t.number: t.state for t in study.get_trials()}
    assert states == {
        0: TrialState.COMPLETE,
        1: TrialState.COMPLETE,
        2: TrialState.PRUNED,
        3: TrialState.COMPLETE,
    }
    pruned = study.trials[2]
    assert list(pruned.intermediate_values) == [1]  # its first report (global step 1)
    assert pruned.value == pruned.intermediate_values[1]
    folder = tmp_path / "run" / "trials" / "00002" / "addition"
    stopped = json.loads((folder / "seed0" / "summary.json").read_text())
    assert stopped["status"] == "stopped" and "pruned at global step 1" in stopped["reason"]
    assert stopped["steps"] == 1 and not (folder / "seed1").exists()
    for n in (0, 1, 3):  # two seeds of two steps each: global steps 1, 2 and 3, 4
        assert list(study.trials[n].intermediate_values) == [1, 2, 3, 4]


@pytest.mark.parametrize("population", [1, 4])
def test_baselines_are_never_pruned(tmp_path: Path, population: int) -> None:
    """With a pruner that prunes every report, the candidates stop at their first evaluation
    and the baselines complete (their curves are still reported), in both modes; the
    re-evaluation has every baseline."""
    campaign = Campaign(parse_space(SPACE), tmp_path / "run", population=population)
    study = campaign.open(create=True)
    study.pruner = PruneAll()
    campaign.optimize(study, BUDGET, wait_for_running=True)
    for trial in study.get_trials():
        if trial.user_attrs.get("baseline"):
            assert trial.state == TrialState.COMPLETE, trial.number
            assert list(trial.intermediate_values) == [1, 2, 3, 4]
        else:
            assert trial.state == TrialState.PRUNED and list(trial.intermediate_values) == [1]
    labels = {row["label"] for row in campaign.reevaluate(study)}
    assert labels == {"grpo", "ppo"}  # no candidate completed; both baselines did


class PruneAll(optuna.pruners.BasePruner):
    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return True


def test_ctrl_c_fails_every_trial_of_the_round_and_the_resumed_campaign_retrains_them(
    tmp_path: Path,
) -> None:
    space = parse_space({**SPACE, "baselines": ["grpo"]})
    campaign = Campaign(space, tmp_path / "run", population=3)
    study = campaign.open(create=True)
    study.pruner = PruneTrial(1, interrupt=True)
    with pytest.raises(KeyboardInterrupt):
        campaign.optimize(study, 4)
    # the round's 3 trials are FAIL, each queued again; none of them counts toward the budget
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL] * 3 + [TrialState.WAITING] * 3
    assert budget_used(study) == 0
    # The baseline (trial 0) trained its two seeds together before the candidates' first
    # engine, in which trial 1's first report raised: those runs end interrupted.
    for n, status in [(0, "ok"), (1, "failed"), (2, "failed")]:
        summary = tmp_path / "run" / "trials" / f"{n:05d}" / "addition" / "seed0" / "summary.json"
        assert json.loads(summary.read_text())["status"] == status
        if status == "failed":
            assert json.loads(summary.read_text())["reason"] == "interrupted"
    interrupted = study.get_trials()[:3]
    study.pruner = optuna.pruners.NopPruner()
    campaign.optimize(study, 4, wait_for_running=True)  # resumes: the 3 retries, then 1 more
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL] * 3 + [TrialState.COMPLETE] * 4
    assert budget_used(study) == 4
    for original, retry in zip(interrupted, trials[3:6], strict=True):
        assert retry.system_attrs["failed_trial"] == original.number
        assert retry.params == original.params
    assert trials[3].user_attrs.get("baseline") == "grpo"  # the enqueued baseline, retried


def test_a_trial_interrupted_more_often_than_max_retry_stays_failed(tmp_path: Path) -> None:
    # MAX_RETRY = 3 retries per trial: the 4th interruption of the same candidate is final
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}")
    study.enqueue_trial({"x": 1.0})
    for _ in range(4):
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0.0, 2.0)})
        assert trial.params == {"x": 1.0}
        fail_and_retry(study, trial)
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.FAIL] * 4
    assert study.get_trials()[-1].system_attrs["retry_history"] == [0, 1, 2]


def test_lora_policy_trains_in_populations(tmp_path: Path) -> None:
    study = run(tmp_path, "lora", population=4, policy={"preset": "tiny", "lora_rank": 2})
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * BUDGET
    for n in range(BUDGET):
        folder = tmp_path / "lora" / "trials" / f"{n:05d}" / "addition" / "seed0"
        summary = json.loads((folder / "summary.json").read_text())
        # A LoRA policy trains one engine per seed: the two baselines' of round 1 (which asks
        # no more after PPO), then the three candidates' of round 2.
        assert summary["trained_with"] == (2 if n < 2 else 3)


def test_every_preset_trains_in_a_population_from_the_command_line(tmp_path: Path) -> None:
    """``grape evolve --population 20`` with every preset as a baseline: one round trains all
    of them, TRPO and SFT included, as members of populations: their 2 x 19 runs, packed
    candidate by candidate, in one engine of 20 members and one of 18."""
    names = presets.names()
    data = {
        **SPACE,
        "axes": {"advantage.name": {"choices": ["group_zscore"]}},
        "baselines": names,
        "budget": {**SPACE["budget"], "reeval_seeds": 1, "top_k": 1},
        "search": {**SPACE["search"], "trials": 1},
    }
    out = tmp_path / "run"
    result = invoke(
        "evolve", str(write_space(tmp_path, data)), "--out", str(out), "--population", "20"
    )
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="pop", storage=f"sqlite:///{out / 'study.db'}")
    records = {TrialRecord.of(t).baseline: (t.state, TrialRecord.of(t)) for t in study.get_trials()}
    assert set(names) <= set(records)
    for name in names:
        state, record = records[name]
        assert state == TrialState.COMPLETE, (name, record.failure)
    sizes = [r.trained_with for name in names for r in records[name][1].runs]
    assert len(names) == 19 and sorted(sizes) == [18] * 18 + [20] * 20


def test_evolve_population_from_the_command_line(tmp_path: Path) -> None:
    space = write_space(tmp_path, {**SPACE, "budget": {**SPACE["budget"], "reeval_seeds": 1}})
    out = tmp_path / "run"
    result = invoke("evolve", str(space), "--out", str(out), "--population", "4")
    assert result.exit_code == 0, result.output
    assert "(population 4)" in result.output and "5/5" in result.output
    assert json.loads((out / "discoveries.json").read_text())["candidates"]
    bad = invoke("evolve", str(space), "--out", str(tmp_path / "bad"), "--population", "0")
    assert bad.exit_code == 2 and "Invalid value for '--population'" in bad.output
    with pytest.raises(CampaignError, match="population must be an integer >= 1"):
        Campaign(parse_space(SPACE), tmp_path / "x", population=0)


def test_killed_population_campaign_resumes(tmp_path: Path, grape_cache: Path) -> None:
    """SIGKILL while three trials train together: each sent its own heartbeats, so on
    ``--resume`` each is failed as stale and retried once, and the retries complete."""
    longer = {**SPACE["budget"], "steps": 8, "eval_every": 4, "batch_size": 16}
    space = write_space(tmp_path, {**SPACE, "budget": longer, "baselines": ["grpo"]})
    out = tmp_path / "run"
    args = [sys.executable, "-m", "grape_evo.cli", "evolve", str(space), "--out", str(out)]
    args += ["--population", "3", "--heartbeat", "1"]
    proc = subprocess.Popen(
        args, env=cli_env(grape_cache), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 240
        while True:
            rows = db_states(out / "study.db")
            beating = [n for n, state, beat in rows if state == "RUNNING" and beat is not None]
            if len(beating) == 3:
                break
            assert proc.poll() is None, f"ended before the kill: {proc.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, f"never three trials training: {rows}"
            time.sleep(0.05)
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    time.sleep(2.5)  # past the grace period (2 heartbeats)
    resumed = subprocess.run(
        [*args, "--resume"], env=cli_env(grape_cache), capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    study = optuna.load_study(study_name="pop", storage=f"sqlite:///{out / 'study.db'}")
    trials = study.get_trials()
    killed = {n for n in beating}
    assert {t.number for t in trials if t.state == TrialState.FAIL} == killed
    retried = [t.system_attrs.get("failed_trial") for t in trials]
    assert sorted(n for n in retried if n is not None) == sorted(killed)
    assert all(t.state == TrialState.COMPLETE for t in trials if t.number not in killed)
    assert budget_used(study) == 4 and integrity(out / "study.db") == "ok"


def test_reevaluation_with_jobs_matches_the_one_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fresh-seed re-evaluation packs a candidate's seeds into one population and reports
    what it reports trained one run at a time; with --jobs 2 it trains its seeds in two
    worker processes (one thread each, as here) and reports the same numbers in the same
    order."""
    import multiprocessing

    pools: list[int] = []
    spawn = multiprocessing.get_context("spawn")  # one context object per method
    pool = spawn.Pool

    def counted(processes: int, *args: Any) -> Any:
        pools.append(processes)
        return pool(processes, *args)

    reeval = {**SPACE, "budget": {**SPACE["budget"], "reeval_seeds": 3}}
    campaign = Campaign(parse_space(reeval), tmp_path / "one", population=4)
    study = campaign.open(create=True)
    campaign.optimize(study, BUDGET, wait_for_running=True)
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    shutil.copytree(tmp_path / "one", tmp_path / "alone")
    one = campaign.reevaluate(study)
    alone_campaign = Campaign(parse_space(reeval), tmp_path / "alone", population=1)
    alone = alone_campaign.reevaluate(alone_campaign.open(create=False))
    assert [r["label"] for r in alone] == [r["label"] for r in one]
    for ours, theirs in zip(one, alone, strict=True):
        assert ours["rewards"] == pytest.approx(theirs["rewards"], abs=1e-6), ours["label"]
    # Packed: a candidate's 3 seeds train in at most 2 engines of 4 members (one engine's
    # runs share its wall time); one run at a time, each seed is an engine of its own.
    for row in one:
        folder = tmp_path / "one" / "reeval" / row["label"] / "addition"
        summaries = [
            json.loads((folder / f"seed{s}" / "summary.json").read_text())
            for s in (1000, 1001, 1002)
        ]
        assert len({s["wall_seconds"] for s in summaries}) <= 2, row["label"]
        assert all(s["trained_with"] > 1 for s in summaries)
    two_campaign = Campaign(parse_space(reeval), tmp_path / "two", population=4, jobs=2)
    monkeypatch.setattr(spawn, "Pool", counted)
    two = two_campaign.reevaluate(two_campaign.open(create=False))
    assert pools == [2]  # the re-evaluation ran in a pool of two worker processes
    assert [r["label"] for r in two] == [r["label"] for r in one]
    for ours, theirs in zip(two, one, strict=True):
        assert len(ours["rewards"]) == 3 and ours["status"] == "ok"
        assert ours["rewards"] == pytest.approx(theirs["rewards"], abs=1e-6), ours["label"]
        assert ours["paired_effect"] == pytest.approx(theirs["paired_effect"], abs=1e-6)
    # Seeds 1000 and 1001 trained in one process, 1002 in the other, each part packed.
    for row in two:
        for seed in (1000, 1001, 1002):
            folder = tmp_path / "two" / "reeval" / row["label"] / "addition" / f"seed{seed}"
            assert json.loads((folder / "summary.json").read_text())["status"] == "ok"


@pytest.mark.parametrize("population", [None, 2])
def test_each_task_trains_from_its_own_warm_start(tmp_path: Path, population: int | None) -> None:
    """A task's ``warm_start_steps`` replaces the budget's in its runs only, one engine per
    seed or candidate-packed alike."""
    config = TrainConfig(steps=1, warm_start_steps=3, batch_size=8, eval_prompts=4, eval_every=1)
    tasks = [TaskRef("addition", warm_start_steps=5), TaskRef("reverse")]
    candidates = [CandidateRun(presets.get("grpo"), [config, replace(config, seed=1)], tmp_path)]
    (result,) = run_candidates(candidates, tasks, PolicyConfig(), population=population)
    assert [(r.task, r.seed) for r in result.runs] == [
        ("addition", 0), ("addition", 1), ("reverse", 0), ("reverse", 1)
    ]  # fmt: skip
    steps = {
        (run_dir.parent.name, run_dir.name): json.loads((run_dir / "summary.json").read_text())[
            "train_config"
        ]["warm_start_steps"]
        for run_dir in sorted(tmp_path.glob("*/seed*"))
    }
    assert steps == {
        ("addition", "seed0"): 5,
        ("addition", "seed1"): 5,
        ("reverse", "seed0"): 3,
        ("reverse", "seed1"): 3,
    }


def test_a_round_asks_no_more_after_a_candidate_as_costly_as_a_whole_round(
    tmp_path: Path,
) -> None:
    """PPO (4 epochs x 4 minibatches, a value model of its own: 1 + 16 x 2 = 33 passes over
    the batch per step) costs more than 8 one-update candidates (2 passes each), so a round of
    population 8 that asks it asks nothing after it: another worker takes the next trials.
    GRPO and DPO (one update each) leave room for the next."""
    assert [step_cost(presets.get(n)) for n in ("ppo", "grpo", "dpo")] == [33, 2, 2]
    campaign = Campaign(
        parse_space({**SPACE, "baselines": ["ppo", "grpo", "dpo"]}),
        tmp_path / "run",
        population=8,
    )
    study = campaign.open(create=True)

    def trials() -> list[tuple[str | None, TrialState]]:
        return [(t.user_attrs.get("baseline"), t.state) for t in study.get_trials()]

    done, waiting = TrialState.COMPLETE, TrialState.WAITING
    run_round(campaign, study, 10, None)
    assert trials() == [("ppo", done), ("grpo", waiting), ("dpo", waiting)]
    run_round(campaign, study, 4, None)
    assert trials() == [("ppo", done), ("grpo", done), ("dpo", done), (None, done)]


def test_runs_read_back_leave_no_gap_in_the_engines(tmp_path: Path) -> None:
    """A resumed call reads its finished runs back before cutting the engines: with grpo's 2
    runs on disk, dr_grpo's and rloo's 4 runs (population 4) train as one engine of 4 members
    (reading back after the cut would leave two engines of 2). The runs read back are the
    ones on disk, untouched."""
    config = TrainConfig(steps=1, warm_start_steps=3, batch_size=8, eval_prompts=4, eval_every=1)
    configs = [replace(config, seed=s) for s in range(2)]
    names = ("grpo", "dr_grpo", "rloo")
    candidates = [CandidateRun(presets.get(n), configs, tmp_path / n) for n in names]
    run_candidates(candidates[:1], [TaskRef("addition")], PolicyConfig(), population=4)
    first = [(tmp_path / "grpo" / "addition" / f"seed{s}" / "summary.json") for s in (0, 1)]
    written = [(f.read_bytes(), f.stat().st_mtime_ns) for f in first]
    results = run_candidates(
        candidates, [TaskRef("addition")], PolicyConfig(), reuse_existing=True, population=4
    )
    assert [(f.read_bytes(), f.stat().st_mtime_ns) for f in first] == written
    for name, result in zip(names, results, strict=True):
        assert [r.seed for r in result.runs] == [0, 1]
        for seed in (0, 1):
            summary = json.loads(
                (tmp_path / name / "addition" / f"seed{seed}" / "summary.json").read_text()
            )
            assert summary["trained_with"] == (2 if name == "grpo" else 4)


def test_a_part_of_the_seeds_fills_whole_engines(tmp_path: Path) -> None:
    """Candidates that train some of their seeds (a rung, one worker's share of the
    re-evaluation) are cut into engines from those seeds alone: 2 candidates x seeds 2..3 of
    4, population 4, are one engine of 4 members (cutting every seed first and dropping the
    others would leave two engines of 2)."""
    config = TrainConfig(steps=1, warm_start_steps=3, batch_size=8, eval_prompts=4, eval_every=1)
    configs = [replace(config, seed=s) for s in range(4)]
    candidates = [
        CandidateRun(presets.get(name), configs, tmp_path / name, seeds=range(2, 4))
        for name in ("grpo", "dr_grpo")
    ]
    results = run_candidates(candidates, [TaskRef("addition")], PolicyConfig(), population=4)
    for name, result in zip(("grpo", "dr_grpo"), results, strict=True):
        assert [r.seed for r in result.runs] == [2, 3]
        for seed in (2, 3):
            summary = json.loads(
                (tmp_path / name / "addition" / f"seed{seed}" / "summary.json").read_text()
            )
            assert summary["trained_with"] == 4
