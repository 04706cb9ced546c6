"""What `clip-filter ingest` is asked to add: folders walked, files, and CSV lists, turned into Sources.

Bad paths and CSVs fail here, before the model loads.
"""

from __future__ import annotations

import argparse
import csv
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clip_filter.collections.ingest import Source, is_supported_filename
from clip_filter.core.errors import ClipFilterError


@dataclass
class Planned:
    """Files (or CSV texts) to ingest, and the inputs refused before anything was read."""

    sources: list[Source] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)


def _walk_folder(folder: Path) -> Iterator[Path]:
    """Supported files under a folder, recursively, in a stable (sorted) order; symlinked folders are not
    followed (no cycles), symlinked files are."""
    for directory, subdirs, names in os.walk(folder, followlinks=False):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in sorted(names):
            if not name.startswith(".") and is_supported_filename(name):
                yield Path(directory, name)


def _csv_value(value: str | None) -> Any:
    return "" if value is None else value


def _plan_csv(path: Path, args: argparse.Namespace, planned: Planned) -> None:
    """A CSV with a `path` column (relative paths are relative to the CSV's folder); other columns are
    metadata (all of them, or those named with --metadata-column). A row with an empty path and a `text`
    column adds that text."""
    try:
        handle = open(path, newline="", encoding="utf-8-sig")  # noqa: SIM115 - `with` below; only open()'s OSError is file_unreadable
    except OSError as exc:
        raise ClipFilterError("file_unreadable", f"{path} cannot be read: {exc.strerror or exc}", 422) from None
    with handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        path_column = args.path_column
        if path_column not in columns:
            raise ClipFilterError(
                "invalid_csv",
                f"{path} has no {path_column!r} column (columns: {', '.join(columns) or 'none'}).",
                422,
                fix=f"Name the column with the file paths {path_column!r}, or pass --path-column NAME.",
            )
        wanted = args.metadata_column
        if wanted:
            unknown = [c for c in wanted if c not in columns]
            if unknown:
                raise ClipFilterError("invalid_csv", f"{path} has no column(s) {', '.join(map(repr, unknown))}.", 422)
            meta_columns = list(wanted)
        else:
            meta_columns = [c for c in columns if c not in (path_column, "text")]
        base = path.parent
        try:
            for row_number, row in enumerate(reader, start=2):
                metadata = {column: _csv_value(row.get(column)) for column in meta_columns}
                value = (row.get(path_column) or "").strip()
                text = row.get("text") if "text" in columns else None
                where = f"{path}:{row_number}"
                if not value:
                    if text and text.strip():
                        planned.sources.append(Source(filename=where, text=text, metadata=metadata))
                    else:
                        planned.failures.append(
                            {
                                "filename": where,
                                "code": "invalid_csv_row",
                                "message": f"The row has no {path_column!r} (nor a text).",
                            }
                        )
                    continue
                file = Path(value).expanduser()
                if not file.is_absolute():
                    file = base / file
                planned.sources.append(Source(filename=value, path=file, metadata=metadata))
        except csv.Error as exc:
            raise ClipFilterError(
                "invalid_csv", f"{path} is not valid CSV (line {reader.line_num}): {exc}", 422
            ) from None


def plan(args: argparse.Namespace) -> Planned:
    planned = Planned()
    for text in args.paths:
        path = Path(text).expanduser()
        if path.is_dir():
            for file in _walk_folder(path):
                planned.sources.append(Source(filename=file.relative_to(path).as_posix(), path=file))
        elif path.is_file() and path.suffix.lower() == ".csv":
            _plan_csv(path, args, planned)
        elif path.is_file():
            planned.sources.append(Source(filename=path.name, path=path))
        else:
            raise ClipFilterError("path_not_found", f"{text} does not exist.", 404)
    return planned
