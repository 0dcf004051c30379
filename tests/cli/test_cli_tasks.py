"""`grape tasks`: every registered task listed with its reward type and answer length."""

from __future__ import annotations

from typer.testing import CliRunner

from grape_evo.cli import app
from grape_evo.tasks import task_names


def test_tasks_table_lists_every_task() -> None:
    result = CliRunner().invoke(app, ["tasks"], terminal_width=250)
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if "│" in line}
    assert set(task_names()) <= set(rows)
    # name | reward | answer tokens | budget | warm start | summary
    cells = [c.strip() for c in rows["long_addition"].split("│")[1:-1]]
    assert cells[:5] == ["long_addition", "0/1 exact", "5-6", "8", "1000"]
    cells = [c.strip() for c in rows["preference"].split("│")[1:-1]]
    assert cells[2:4] == ["8", "12"]
    assert "hidden" in rows["proxy"]
