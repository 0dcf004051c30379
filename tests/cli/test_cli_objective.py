"""`grape presets` and `grape show`: every preset listed and shown; bad input exits 2."""

from __future__ import annotations

import yaml
from typer.testing import CliRunner

from grape_evo.cli import app
from grape_evo.objective import ObjectiveSpec, presets

DESIGN_PRESETS = [
    "sft", "rejection_sampling", "reinforce", "reinforce_baseline", "rloo", "trpo", "ppo",
    "grpo", "dr_grpo", "dapo", "gspo", "cispo", "reinforce_pp", "dpo", "online_dpo", "ipo",
    "slic", "simpo", "discopop",
]  # fmt: skip


def test_presets_table_lists_every_design_preset() -> None:
    result = CliRunner().invoke(app, ["presets"])
    assert result.exit_code == 0, result.output
    for name in DESIGN_PRESETS:
        assert name in result.output


def test_show_prints_a_yaml_spec_equal_to_the_preset_and_its_formula() -> None:
    runner = CliRunner()
    for name in DESIGN_PRESETS:
        result = runner.invoke(app, ["show", name])
        assert result.exit_code == 0, (name, result.output)
        yaml_part = result.output.split("\npaper:")[0]
        assert ObjectiveSpec.from_dict(yaml.safe_load(yaml_part)) == presets.get(name)
        assert "\\mathcal{L} =" in result.output
        assert presets.get(name).key() in result.output


def test_show_accepts_a_yaml_file(tmp_path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\ngroup_size: 4\nadvantage: rloo\nsurrogate: reinforce\n")
    result = CliRunner().invoke(app, ["show", str(path)])
    assert result.exit_code == 0, result.output
    assert "rloo" in result.output


def test_show_bad_input_exits_2_without_traceback(tmp_path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["show", "nope"])
    assert result.exit_code == 2
    assert "grpo" in result.output and "Traceback" not in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("surrogate: {name: ppo_clip, clip_hgh: 0.3}\n")
    result = runner.invoke(app, ["show", str(bad)])
    assert result.exit_code == 2
    assert "bad.yaml" in result.output and "clip_hgh" in result.output
