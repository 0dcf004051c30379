"""``make demo``: the quickstart campaign end to end on CPU, then its report.

Runs ``grape evolve search_spaces/quickstart.yaml --out runs/quickstart --resume`` (an
embedded SQLite study; re-running continues where it stopped) and ``grape report`` on it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grape_evo.cli import app

SPACE = Path(__file__).resolve().parent.parent / "search_spaces" / "quickstart.yaml"


def main(out: Path = Path("runs/quickstart")) -> None:
    for argv in (
        ["evolve", str(SPACE), "--out", str(out), "--resume"],
        ["report", str(out)],
    ):
        try:
            app(argv, standalone_mode=False)
        except SystemExit as stop:  # typer exits 0 on success
            if stop.code:
                sys.exit(stop.code)
    print(f"\nReport: {(out / 'report' / 'report.md').resolve()}")


if __name__ == "__main__":
    main()
