"""Experiment tables: paired effects, cell statistics and verdicts, against hand-worked values."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from grape_evo.experiment.tables import (
    agreement,
    cell_table,
    fmt_ci,
    fmt_effect,
    markdown,
    paired_effects,
    verdict,
)


def frame(rows: list[tuple[str, str, int, str, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "task": task,
                "label": label,
                "seed": seed,
                "status": status,
                "reward": reward,
                "accuracy": reward,
                "kl_to_ref": 0.1,
                "initial_reward": 0.5,
            }
            for task, label, seed, status, reward in rows
        ]
    )


def test_paired_effect_is_the_mean_of_per_seed_differences() -> None:
    # Seeds differ a lot (0.2 vs 0.8 start) but b is 0.1 above a on every seed.
    finals = frame(
        [
            ("t", "a", 0, "ok", 0.2),
            ("t", "a", 1, "ok", 0.8),
            ("t", "a", 2, "ok", 0.5),
            ("t", "b", 0, "ok", 0.3),
            ("t", "b", 1, "ok", 0.9),
            ("t", "b", 2, "ok", 0.6),
        ]
    )
    effects = paired_effects(finals, reference="a")
    row = effects.iloc[0]
    assert row["label"] == "b" and row["n"] == 3 and row["wins"] == 3
    assert row["effect"] == pytest.approx(0.1)
    # Every difference is 0.1: sd 0, a zero-width t-interval at 0.1.
    assert row["low"] == pytest.approx(0.1) and row["high"] == pytest.approx(0.1)
    assert verdict(row["low"], row["high"]) == "better"


def test_paired_effect_interval_is_bonferroni_adjusted_over_the_comparisons() -> None:
    # differences 0.1, 0.2, 0.3: mean 0.2, sd 0.1, se 0.1 / sqrt(3) = 0.057735; over 4
    # comparisons each interval is at level 1 - 0.05 / 4: t_{0.99375, 2} = 8.8600
    finals = frame(
        [("t", "a", s, "ok", 0.5) for s in range(3)]
        + [("t", "b", s, "ok", 0.5 + d) for s, d in enumerate((0.1, 0.2, 0.3))]
    )
    row = paired_effects(finals, reference="a", comparisons=4).iloc[0]
    half = 8.8600 * 0.057735
    assert row["effect"] == pytest.approx(0.2)
    assert (row["low"], row["high"]) == pytest.approx((0.2 - half, 0.2 + half), abs=2e-4)


def test_paired_effect_drops_seeds_without_a_pair() -> None:
    finals = frame(
        [
            ("t", "a", 0, "ok", 0.5),
            ("t", "a", 1, "ok", 0.5),
            ("t", "b", 0, "ok", 0.2),
            ("t", "b", 1, "diverged", math.nan),
        ]
    )
    row = paired_effects(finals, reference="a").iloc[0]
    assert row["n"] == 1 and row["effect"] == pytest.approx(-0.3) and row["wins"] == 0


def test_cell_table_counts_runs_that_did_not_end_ok() -> None:
    finals = frame(
        [("t", "a", 0, "ok", 0.4), ("t", "a", 1, "ok", 0.6), ("t", "a", 2, "failed", math.nan)]
    )
    cell = cell_table(finals).iloc[0]
    assert (cell["n"], cell["not_ok"]) == (2, 1)
    assert cell["reward"] == pytest.approx(0.5)
    # t interval of two values 0.4, 0.6: mean 0.5, sd 0.141421, se 0.1, t_{0.975, 1} 12.7062
    assert cell["reward_low"] == pytest.approx(0.5 - 1.270620, abs=1e-5)
    assert cell["reward_high"] == pytest.approx(0.5 + 1.270620, abs=1e-5)


@pytest.mark.parametrize(
    ("sign", "low", "high", "expected"),
    [
        ("= 0", 0.0, 0.0, "confirmed"),
        ("= 0", 0.01, 0.02, "contradicted"),
        (">= 0", -0.05, 0.01, "confirmed"),
        (">= 0", -0.05, -0.01, "contradicted"),
        ("> 0", 0.01, 0.05, "confirmed"),
        ("> 0", -0.01, 0.05, "inconclusive"),
        ("> 0", -0.05, -0.01, "contradicted"),
        ("< 0", -0.05, -0.01, "confirmed"),
        ("< 0", 0.01, 0.05, "contradicted"),
    ],
)
def test_agreement_with_the_published_direction(
    sign: str, low: float, high: float, expected: str
) -> None:
    assert agreement(sign, low, high) == expected


def test_verdict_and_formatting() -> None:
    assert verdict(-0.2, -0.1) == "worse"
    assert verdict(-0.1, 0.1) == "no clear effect"
    assert verdict(math.nan, 0.1) == "n/a"
    assert fmt_ci(0.5, 0.25, 0.75) == "0.500 [0.250, 0.750]"
    assert fmt_ci(0.05, -0.01, 0.1, signed=True) == "+0.050 [-0.010, +0.100]"
    assert fmt_ci(math.nan, 0, 0) == "n/a"
    assert fmt_effect(0.017, 0.002, 0.036) == "+0.017 [+0.002, +0.036] better"
    table = markdown(pd.DataFrame([{"a": 1, "b": "x"}]))
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | x |"]
