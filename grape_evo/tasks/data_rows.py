"""Reading a task's data: JSON Lines, CSV, or a directory saved by HF ``datasets``.

Every format gives a list of rows (dicts of field -> value) in file order, numbered from 0
(the index ``datasets`` shows): row ``i`` is the ``i``-th JSON object of a ``.jsonl`` file
(blank lines skipped), the ``i``-th record after a ``.csv`` file's header, or ``dataset[i]``.
JSON values keep their types; CSV values are strings. A directory is read with
``datasets.load_from_disk``, an optional dependency (``pip install 'grape-evo[data]'``).

The digest is a sha256 of the bytes read (of every file of a directory, with its relative
path), so any edit to the data changes it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATASET_MARKERS: tuple[str, ...] = ("state.json", "dataset_dict.json")
"""Files that ``datasets.save_to_disk`` writes at the top of a Dataset / DatasetDict folder."""


class TaskFileError(ValueError):
    """A bad task file, data file or reward function: one line naming the file, the field (and
    the row, for row errors) and the reason."""


@dataclass(frozen=True)
class DataRows:
    """The rows of a data file or folder and the sha256 (hex) of its bytes."""

    rows: list[dict[str, Any]]
    digest: str


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_bytes(path: Path, where: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TaskFileError(f"{where}: cannot read {path}: {exc.strerror}") from exc


def _decode(blob: bytes, path: Path, where: str) -> str:
    try:
        return blob.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TaskFileError(
            f"{where}: {path.name} is not UTF-8 text (byte {exc.start}: {exc.reason})"
        ) from exc


def _jsonl_rows(text: str, path: Path, where: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TaskFileError(
                f"{where}: {path.name} line {number}: invalid JSON: {exc.msg}"
            ) from exc
        if not isinstance(row, dict):
            raise TaskFileError(
                f"{where}: {path.name} line {number}: expected a JSON object, "
                f"got {type(row).__name__}"
            )
        rows.append(row)
    return rows


def _csv_rows(text: str, path: Path, where: str) -> list[dict[str, Any]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            return []
        duplicates = sorted({h for h in header if header.count(h) > 1})
        if duplicates or not all(h.strip() for h in header):
            what = f"duplicate column {duplicates[0]!r}" if duplicates else "an empty column name"
            raise TaskFileError(f"{where}: {path.name}: the header has {what}")
        rows: list[dict[str, Any]] = []
        for record in reader:
            if not record:
                continue
            if len(record) != len(header):
                raise TaskFileError(
                    f"{where}: {path.name} row {len(rows)} (line {reader.line_num}): "
                    f"{len(record)} fields, the header has {len(header)}"
                )
            rows.append(dict(zip(header, record, strict=True)))
    except csv.Error as exc:
        raise TaskFileError(
            f"{where}: {path.name} line {reader.line_num}: invalid CSV: {exc}"
        ) from exc
    return rows


def _folder_digest(folder: Path, where: str) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(file.relative_to(folder).as_posix().encode("utf-8") + b"\0")
        digest.update(hashlib.sha256(_read_bytes(file, where)).digest())
    return digest.hexdigest()


def _dataset_rows(folder: Path, where: str) -> list[dict[str, Any]]:
    if not any((folder / marker).is_file() for marker in DATASET_MARKERS):
        raise TaskFileError(
            f"{where}: {folder} is a folder but not one saved by datasets' save_to_disk "
            f"(it has no {' or '.join(DATASET_MARKERS)})"
        )
    try:
        import datasets
    except ImportError as exc:
        raise TaskFileError(
            f"{where}: {folder} is a folder saved by HF datasets, which needs the optional "
            "dependency 'datasets' (pip install 'grape-evo[data]')"
        ) from exc
    try:
        loaded = datasets.load_from_disk(str(folder))
    except Exception as exc:  # datasets raises many types for a damaged folder
        raise TaskFileError(
            f"{where}: datasets.load_from_disk({folder}) raised {type(exc).__name__}: "
            f"{first_line(exc)}"
        ) from exc
    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded)
        raise TaskFileError(
            f"{where}: {folder} holds the splits {splits}; point data at one of them "
            f"(e.g. {folder.name}/{splits[0] if splits else 'train'})"
        )
    return [dict(row) for row in loaded]


def read_rows(path: Path, where: str) -> DataRows:
    """The rows of ``path`` (a ``.jsonl`` or ``.csv`` file, or a ``datasets`` folder).

    ``where`` (e.g. ``"task.yaml: data"``) starts every error message. Raises
    :class:`TaskFileError` when the path is missing, unreadable, malformed or has no rows.
    """
    if path.is_dir():
        rows, digest = _dataset_rows(path, where), _folder_digest(path, where)
    elif not path.exists():
        raise TaskFileError(f"{where}: no such file or folder: {path}")
    else:
        suffix = path.suffix.lower()
        if suffix not in (".jsonl", ".csv"):
            raise TaskFileError(
                f"{where}: {path.name}: expected a .jsonl or .csv file or a folder saved by "
                "datasets' save_to_disk"
            )
        blob = _read_bytes(path, where)
        text = _decode(blob, path, where)
        reader = _jsonl_rows if suffix == ".jsonl" else _csv_rows
        rows, digest = reader(text, path, where), hashlib.sha256(blob).hexdigest()
    if not rows:
        raise TaskFileError(f"{where}: {path.name} has no rows")
    return DataRows(rows, digest)
