"""Write the report of a campaign folder: ``python analysis/make_report.py RUN_DIR [OUT]``."""

from __future__ import annotations

import sys
from pathlib import Path

from grape_evo.analysis import write_report


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    out = Path(argv[1]) if len(argv) == 2 else None
    path = write_report(Path(argv[0]), out)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
