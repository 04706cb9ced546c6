"""Garbage collection of the data folder: files no database row references any more.

They come from crashed writes (an original written, its transaction never committed), from deletes
interrupted between the commit and the file removal, and from finished jobs' spools. Any backend calls
`collect_garbage` with what its database references (`FileReferences`).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable

from clip_filter.collections.store.files import DataFiles
from clip_filter.collections.store.records import FileReferences


def collect_garbage(
    files: DataFiles, references: FileReferences, item_ids: Callable[[], set[int]], min_age_s: float
) -> dict[str, int]:
    """Remove unreferenced originals, thumbnails, temp files and job spools; returns counts per kind.

    Only files older than `min_age_s` go: another process (the CLI) may have written an original
    whose transaction has not committed yet. `item_ids` is called at most once, and only when there
    are thumbnails to check.
    """
    removed = {"originals": 0, "thumbnails": 0, "temp": 0, "job_spools": 0}
    cutoff = time.time() - min_age_s
    collection_ids = references.collection_ids
    known_items: set[int] | None = None

    def old(path: Path) -> bool:
        try:
            return path.stat().st_mtime < cutoff
        except FileNotFoundError:
            return False

    if files.originals_dir.is_dir():
        for path in files.originals_dir.rglob("*"):
            if not path.is_file() or not old(path):
                continue
            relative = path.relative_to(files.data_dir).as_posix()
            if path.name.startswith(".tmp-"):
                path.unlink(missing_ok=True)
                removed["temp"] += 1
            elif relative not in references.originals:
                path.unlink(missing_ok=True)
                removed["originals"] += 1
    if files.thumbnails_dir.is_dir():
        for folder in files.thumbnails_dir.iterdir():
            if folder.is_dir() and folder.name.isdigit() and int(folder.name) not in collection_ids:
                shutil.rmtree(folder, ignore_errors=True)
                continue
            for path in folder.glob("*") if folder.is_dir() else []:
                if path.name.startswith(".tmp-") and old(path):
                    path.unlink(missing_ok=True)
                    removed["temp"] += 1
                    continue
                if known_items is None:
                    known_items = item_ids()
                head = path.name.split("-", 1)[0]
                if head.isdigit() and int(head) not in known_items:
                    path.unlink(missing_ok=True)
                    removed["thumbnails"] += 1
    if files.jobs_dir.is_dir():
        for folder in files.jobs_dir.iterdir():
            if folder.name not in references.live_jobs and old(folder):
                shutil.rmtree(folder, ignore_errors=True)
                removed["job_spools"] += 1
    # Empty per-collection folders of deleted collections.
    if files.originals_dir.is_dir():
        for folder in files.originals_dir.iterdir():
            if folder.is_dir() and folder.name.isdigit() and int(folder.name) not in collection_ids:
                shutil.rmtree(folder, ignore_errors=True)
    return removed
