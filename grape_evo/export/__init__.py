"""Take an objective out of grape: TRL 1.16 and verl configs that compute the same loss, or a
TRL trainer subclass computing grape's loss where no stock setting does.

    from grape_evo.export import ExportSettings, export
    export(spec, "trl", Path("out/trl"), ExportSettings(lr=1e-6, batch_size=256))

``map_objective`` returns the :class:`Mapping` without writing; ``export`` writes the folder
(see :mod:`grape_evo.export.files` for its layout). Importing this package does not import TRL.
"""

from __future__ import annotations

from pathlib import Path

from grape_evo.export.common import (
    CUSTOM,
    EXACT,
    TARGETS,
    UNSUPPORTED,
    ExportSettings,
    Mapping,
    check_target,
)
from grape_evo.export.files import Export, write_export
from grape_evo.export.table import export_table, update_readme
from grape_evo.export.trl import to_trl
from grape_evo.export.verl import to_verl
from grape_evo.objective.spec import ObjectiveSpec


def map_objective(
    spec: ObjectiveSpec, target: str, settings: ExportSettings | None = None
) -> Mapping:
    """``spec`` (with optional training ``settings``) mapped onto ``target`` (trl | verl)."""
    mapper = to_trl if check_target(target) == "trl" else to_verl
    return mapper(spec, settings)


def export(
    spec: ObjectiveSpec, target: str, out_dir: Path, settings: ExportSettings | None = None
) -> Export:
    """Map ``spec`` onto ``target`` and write the export folder ``out_dir`` (which must exist)."""
    return write_export(spec, map_objective(spec, target, settings), out_dir)


__all__ = [
    "CUSTOM",
    "EXACT",
    "TARGETS",
    "UNSUPPORTED",
    "Export",
    "ExportSettings",
    "Mapping",
    "check_target",
    "export",
    "export_table",
    "map_objective",
    "to_trl",
    "to_verl",
    "update_readme",
]
