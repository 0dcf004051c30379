"""Every shipped search space trains: its baselines and sampled points, one tiny step each.

A space that loads but produces an objective the trainer cannot run would only fail an hour
into a campaign; this catches it in seconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from grape_evo.search.space import load_space
from grape_evo.training import RunStatus, TrainConfig, train

SPACES = sorted((Path(__file__).parents[2] / "search_spaces").glob("*.yaml"))
TINY = TrainConfig(
    steps=1, batch_size=8, eval_prompts=4, eval_every=1, warm_start_steps=3, offline_pairs=8
)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_the_four_spaces_are_shipped() -> None:
    assert {p.stem for p in SPACES} >= {"quickstart", "grpo_family", "full", "preference"}


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_baselines_and_sampled_points_train(path: Path, tmp_path: Path) -> None:
    space = load_space(path)
    specs = list(space.baseline_specs().values())
    specs += [space.to_spec(point)[0] for point in space.sample_points(4, seed=1)]
    for index, spec in enumerate(specs):
        for task_ref in space.tasks:
            summary = train(
                spec,
                task_ref.build(),
                TINY,
                space.policy,
                progress=False,
                cache_dir=tmp_path / "cache",
            )
            assert summary.status == RunStatus.OK, (path.stem, index, spec.to_dict(), summary)
