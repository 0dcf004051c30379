"""The candidates an experiment takes from its campaign's re-evaluation."""

from __future__ import annotations

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import create_trial

from grape_evo.experiment.campaign import discovered
from grape_evo.objective import presets


def study_with_rates(rates: list[float | None]) -> optuna.Study:
    """A study whose trial i searched learning rate ``rates[i]`` (None: not searched)."""
    study = optuna.create_study(direction="maximize")
    for rate in rates:
        attrs = {} if rate is None else {"overrides": {"lr": rate}}
        study.add_trial(
            create_trial(
                value=0.0,
                params={"x": 0.5},
                distributions={"x": FloatDistribution(0, 1)},
                user_attrs=attrs,
            )
        )
    return study


def row(trial: int, label: str, effect: float | None, reward: float, **kw: object) -> dict:
    return {
        "trial": trial,
        "label": label,
        "objective": presets.get("grpo").to_dict(),
        "baseline": False,
        "status": "ok",
        "paired_effect": effect,
        "reward": reward,
        **kw,
    }


def test_the_top_candidates_by_paired_effect_with_their_rates() -> None:
    study = study_with_rates([None, 3e-4, None, 5e-5, None])
    rows = [
        row(0, "trial-0", 0.01, 0.90),
        row(1, "trial-1", 0.05, 0.20),
        row(2, "grpo", None, 0.95, baseline=True),
        row(3, "trial-3", 0.08, 0.10, status="seed 2: diverged"),
        row(4, "trial-4", 0.03, 0.50),
    ]
    found = discovered(study, rows, top=2, default_lr=1e-4, by="paired_effect")
    # trial-3 has the largest effect but did not end ok; baselines are never picked
    assert [(d.row["label"], d.spec.name, d.lr) for d in found] == [
        ("trial-1", "trial-1", 3e-4),
        ("trial-4", "trial-4", 1e-4),
    ]
    by_reward = discovered(study, rows, top=2, default_lr=1e-4)
    assert [d.row["label"] for d in by_reward] == ["trial-0", "trial-4"]
