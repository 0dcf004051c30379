"""The README's table of presets against TRL and verl is the one the mappings generate."""

from __future__ import annotations

from pathlib import Path

from grape_evo.export import export_table
from grape_evo.export.table import readme_block

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_table_is_generated_from_the_mappings() -> None:
    assert readme_block(README.read_text()) == export_table(), (
        "README's export table is stale: run `grape docs export-table`"
    )


def test_table_cells_worked_out_by_hand() -> None:
    rows = {line.split(" | ")[0].strip("| `"): line for line in export_table().splitlines()}
    assert rows["dpo"] == "| `dpo` | `DPOTrainer` loss_type=`sigmoid` | custom: data |"
    # PPO's 4 minibatches need a batch size (grape export --batch-size) to become verl's
    # ppo_mini_batch_size; the table is written without one.
    assert rows["ppo"] == "| `ppo` | unsupported: advantage | custom: minibatches |"
    assert rows["rloo"].startswith("| `rloo` | `RLOOTrainer` | adv_estimator=`rloo`")
