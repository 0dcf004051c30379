"""docs/algorithms.md is what `grape docs algorithms` generates, and holds what it promises."""

from __future__ import annotations

from pathlib import Path

from grape_evo.docs import algorithms_markdown
from grape_evo.docs.algorithms import axes_row
from grape_evo.objective import presets

DOC = Path(__file__).resolve().parents[2] / "docs" / "algorithms.md"


def test_committed_doc_is_the_generated_one() -> None:
    assert DOC.read_text() == algorithms_markdown(), (
        "docs/algorithms.md is stale: run `grape docs algorithms --out docs/algorithms.md`"
    )


def test_every_preset_has_a_reason_formula_and_row() -> None:
    text = algorithms_markdown()
    for name in presets.names():
        entry = presets.describe(name)
        assert len(entry.why) > 40, name
        assert f"### `{name}`" in text and entry.why in text
        assert presets.get(name).latex() in text
    for algorithm in ("SFT", "Rejection sampling", "REINFORCE", "TRPO", "PPO", "GRPO", "DPO"):
        assert f"**{algorithm}.**" in text


def test_rows_and_nearest_presets_worked_out_by_hand() -> None:
    assert axes_row("dapo") == [
        "`dapo`", "on_policy", "8", "group_zscore(eps=1e-06, unbiased_std=True)",
        "ppo_clip(clip_high=0.28, clip_low=0.2, dual_clip=0.0)", "-", "token_mean", "-", "1 x 1",
    ]  # fmt: skip
    assert axes_row("dpo")[1:4] == ["preference_pairs", "-", "-"]
    text = algorithms_markdown()
    # DAPO = GRPO with clip_high 0.28, token mean and no KL: three leaves apart.
    assert (
        "**Nearest preset:** `grpo`, 3 differing fields (`surrogate.clip_high`, `kl.coef`, "
        "`aggregation.name`)" in text.split("### `dapo`")[1].split("###")[0]
    )
    # SLiC = DPO with the hinge loss (DPO's label_smoothing leaf has no hinge counterpart).
    assert "**Nearest preset:** `dpo`, 2 differing fields" in text.split("### `slic`")[1]
