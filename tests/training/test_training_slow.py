"""GRPO actually learns addition (minutes; run with ``-m slow``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from grape_evo.objective import presets
from grape_evo.tasks import get_task
from grape_evo.training import TrainConfig, train


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grpo_improves_addition_and_lr0_control_does_not(seed: int, cache_dir: Path) -> None:
    task = get_task("addition")
    cfg = TrainConfig(steps=100, eval_prompts=128, seed=seed)
    run = train(presets.get("grpo"), task, cfg, progress=False, cache_dir=cache_dir)
    assert run.status == "ok", run.reason
    gain = run.final_eval.accuracy - run.initial_eval.accuracy
    control = train(
        presets.get("grpo"),
        task,
        TrainConfig(steps=100, eval_prompts=128, seed=seed, lr=0.0),
        progress=False,
        cache_dir=cache_dir,
    )
    assert control.status == "ok", control.reason
    drift = control.final_eval.accuracy - control.initial_eval.accuracy
    print(
        f"seed {seed}: accuracy {run.initial_eval.accuracy:.3f} -> "
        f"{run.final_eval.accuracy:.3f} (gain {gain:+.3f}); lr=0 control drift {drift:+.3f}"
    )
    assert abs(drift) < 0.02
    assert gain >= 0.05
