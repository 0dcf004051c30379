"""The README's "Bring your own data, reward and model" walkthrough, end to end, as a new user
runs it: a JSONL file and a reward function tied together by a task file, a local Hugging Face
checkpoint (saved here, never downloaded) trained through a LoRA adapter, ``grape evolve
--report-to tensorboard`` on a space listing the task file, the study read back as
optuna-dashboard reads it, the TensorBoard event files of the runs, and ``grape export
RUN:best --to trl`` (and ``RUN:trial-N`` for the other trial)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import optuna
import pytest
from campaign_helpers import TINY_BUDGET, invoke, write_space
from cli_helpers import cli_text
from model_helpers import hf_char_tokenizer, tiny_gpt2
from optuna.trial import FrozenTrial, TrialState
from task_file_helpers import write_task

from grape_evo.policy import CharTokenizer
from grape_evo.search.space import load_space

REWARD = """
def score(prompts, completions, target, **kwargs):
    return [
        1.0 if c == t else 0.5 * sum(ch in c for ch in t) / len(t)
        for c, t in zip(completions, target)
    ]
"""
"""TRL's reward signature, as in the README: 1.0 for the row's ``target``, else partial credit
for each of its characters that the completion holds (so that even a barely trained policy's
samples differ in reward and every objective has a gradient)."""


@pytest.fixture(scope="module", autouse=True)
def _campaign_env(campaign_env: None) -> None:
    """The shared warm-start cache and one thread (tests/conftest.py)."""


def save_checkpoint(folder: Path) -> Path:
    """A 2-layer GPT-2 and its tokenizer (the character vocabulary as a
    ``PreTrainedTokenizerFast``), each written with ``save_pretrained``: a local HF checkpoint."""
    tok = CharTokenizer()
    ids = {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}
    tiny_gpt2(seed=1, **ids).save_pretrained(str(folder))
    hf_char_tokenizer().save_pretrained(str(folder))
    return folder


def tensorboard_scalars(run_dir: Path) -> dict[str, list[float]]:
    """The scalars of a run's TensorBoard event files by tag."""
    reader = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = reader.EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def expected_best(trials: list[FrozenTrial]) -> FrozenTrial:
    """What ``RUN:best`` documents: the completed trial with the best value, the first of
    equals (the study maximises its one value)."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    return max(sorted(complete, key=lambda t: t.number), key=lambda t: t.values[0])


def assert_trl_export(out: Path, trial: FrozenTrial) -> None:
    """``out`` holds the TRL export of ``trial``'s objective, as the README's export table and
    the GRPOTrainer mapping (`grape_evo.export.trl_rollout`) document it."""
    document = json.loads((out / "trl_config.json").read_text())
    assert {"trainer", "config"} <= document.keys()
    objective = trial.user_attrs["objective"]
    assert document["grape"]["objective"] == objective["name"]
    config = document["config"]
    # Both objectives keep GRPO's KL (k3 in the loss, coef 0.04: beta) and group of 8.
    assert config["beta"] == pytest.approx(0.04)
    assert config["num_generations"] == 8
    if trial.user_attrs.get("baseline") == "grpo":
        # The table: grpo -> "custom: advantage" (TRL divides by std + 1e-4, the preset by
        # std + 1e-6): a GRPOTrainer subclass computing grape's loss, shipped beside it.
        assert (objective["advantage"]["name"], objective["advantage"]["eps"]) == (
            "group_zscore",
            1e-6,
        )
        assert document["trainer"] == "custom"
        assert (out / "grape_objective_trainer.py").is_file()
    else:
        # GRPO with a group-mean advantage (R - mean_G R) is exact in TRL's GRPOTrainer:
        # scale_rewards "none", per-sequence token means (loss_type "grpo"), clip 0.2.
        assert objective["advantage"]["name"] == "group_mean"
        assert document["trainer"] == "GRPOTrainer"
        assert (config["scale_rewards"], config["loss_type"]) == ("none", "grpo")
        assert (config["epsilon"], config["epsilon_high"]) == (0.2, 0.2)
        assert not (out / "grape_objective_trainer.py").exists()


def test_bring_your_own_data_reward_and_checkpoint(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    # 1. Data, reward and task file; a local checkpoint.
    task = write_task(tmp_path / "task", reward_source=REWARD, name="byo", max_new_tokens=4)
    checkpoint = save_checkpoint(tmp_path / "my-lm")

    # 2. A space on them: the task file relative to the space, the checkpoint with LoRA (the
    # SFT warm start trains an adapter too). One candidate, GRPO with a group-mean advantage,
    # beside the GRPO baseline, which is the reference.
    space_data: dict[str, Any] = {
        "name": "byo",
        "tasks": ["task/task.yaml"],
        "policy": {"checkpoint": str(checkpoint), "lora_rank": 4},
        "budget": dict(TINY_BUDGET),
        "base": "grpo",
        "axes": {"advantage.name": {"choices": ["group_mean"]}},
        "baselines": ["grpo"],
        "search": {
            "trials": 1,
            "pruner": "none",
            "objectives": ["final_reward"],
            "reference": "grpo",
            "tune_lr": [],
        },
    }
    space = write_space(tmp_path, space_data)

    # 3. The campaign, every run logged to TensorBoard.
    run = tmp_path / "runs" / "byo"
    result = invoke("evolve", str(space), "--out", str(run), "--report-to", "tensorboard")
    assert result.exit_code == 0, cli_text(result)

    # 4. The study as optuna-dashboard opens it: its value named (final_reward against a
    # reference is the paired fitness), every trial complete with a value.
    study = optuna.load_study(study_name="byo", storage=f"sqlite:///{run / 'study.db'}")
    assert study.metric_names == ["fitness"]
    assert study.metric_names == load_space(space).search.metric_names
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2, [t.user_attrs for t in trials]
    assert all(math.isfinite(t.values[0]) for t in trials)
    assert sorted(t.user_attrs.get("baseline") or "" for t in trials) == ["", "grpo"]

    # 5. TensorBoard: every run the campaign trained (2 trials x 2 seeds, then the
    # re-evaluation) has its event files, with the train/ scalars of each step; every run
    # trained an adapter on the checkpoint.
    runs = sorted(p.parent for p in run.rglob("metrics.jsonl"))
    for n in (0, 1):
        folder = run / "trials" / f"{n:05d}"
        seeds = sorted(r.name for r in runs if folder in r.parents)
        assert seeds == ["seed0", "seed1"], runs
    assert any(run / "reeval" in r.parents for r in runs), runs
    moved = []
    for run_dir in runs:
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "ok", run_dir
        assert summary["task"]["name"] == "byo", run_dir
        assert Path(summary["task"]["file"]).resolve() == task.resolve(), run_dir
        policy = summary["policy"]
        assert (policy["checkpoint"], policy["lora_rank"]) == (str(checkpoint), 4), run_dir
        assert list((run_dir / "tensorboard").glob("events.out.tfevents.*")), run_dir
        logged = tensorboard_scalars(run_dir)
        for key in ("reward", "loss", "kl_to_ref", "grad_norm"):
            values = logged[f"train/{key}"]
            assert len(values) == TINY_BUDGET["steps"], (run_dir, key)
            assert all(math.isfinite(v) for v in values), (run_dir, key)
        assert "eval/reward" in logged, run_dir
        moved.append(logged["train/kl_to_ref"][-1] > 1e-9)
    assert any(moved), "no run moved its adapter away from the reference"

    # 6. The best objective to TRL, and the other trial by its number (RUN:trial-N).
    best = expected_best(trials)
    other = next(t for t in trials if t.number != best.number)
    for ref, trial in ((f"{run}:best", best), (f"{run}:trial-{other.number}", other)):
        out = tmp_path / "export" / f"trial-{trial.number}"
        result = invoke("export", ref, "--to", "trl", "--out", str(out))
        assert result.exit_code == 0, cli_text(result)
        assert_trl_export(out, trial)
