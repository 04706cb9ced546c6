"""Garbage collection of the data folder: files no database row references any more.

They come from crashed writes (an original written, its transaction never committed), from deletes
interrupted between the commit and the file removal, and from finished jobs' spools. Any backend calls
`collect_garbage` with what its database references (`FileReferences`).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Protocol

from clip_filter.collections.store.files import DataFiles
from clip_filter.collections.store.records import FileReferences


class GcGuard(Protocol):
    """How a backend re-checks candidates while nothing can commit (SQLite: a BEGIN IMMEDIATE transaction)."""

    def locked(self) -> AbstractContextManager[None]: ...

    def referenced(self, paths: list[str]) -> set[str]: ...  # those of `paths` some item row references now

    def collection_ids(self) -> set[int]: ...

    def live_jobs(self) -> set[str]: ...


def _young(path: Path, cutoff: float) -> bool:
    try:
        return path.lstat().st_mtime >= cutoff
    except FileNotFoundError:
        return False


def _tree_is_old(folder: Path, cutoff: float) -> bool:
    """Whether the folder and everything in it is older than the cutoff (a new upload makes it young)."""
    if _young(folder, cutoff):
        return False
    for directory, subdirs, names in os.walk(folder):
        for name in subdirs + names:
            if _young(Path(directory, name), cutoff):
                return False
    return True


def collect_garbage(
    files: DataFiles,
    references: FileReferences,
    item_ids: Callable[[], set[int]],
    min_age_s: float,
    guard: GcGuard | None = None,
) -> dict[str, int]:
    """Remove unreferenced originals, thumbnails, temp files and job spools; returns counts per kind.

    Durability rules (an acknowledged upload is never lost, whatever runs meanwhile):
    - only files (and folders whose whole tree is) older than `min_age_s` go: another process (the CLI) may
      have written an original whose transaction has not committed yet;
    - `references` is a snapshot taken before the walk; every candidate is re-checked against the database
      inside `guard.locked()` (the writer lock), and removed there, so a row committed meanwhile keeps its file.
    `item_ids` is called at most once, and only when there are thumbnails to check.
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

    temp: list[Path] = []
    originals: list[tuple[Path, str]] = []
    if files.originals_dir.is_dir():
        for path in files.originals_dir.rglob("*"):
            if not path.is_file() or not old(path):
                continue
            relative = path.relative_to(files.data_dir).as_posix()
            if path.name.startswith(".tmp-"):
                temp.append(path)
            elif relative not in references.originals:
                originals.append((path, relative))
    thumbnail_folders: list[Path] = []
    thumbnails: list[Path] = []
    if files.thumbnails_dir.is_dir():
        for folder in files.thumbnails_dir.iterdir():
            if folder.is_dir() and folder.name.isdigit() and int(folder.name) not in collection_ids:
                thumbnail_folders.append(folder)
                continue
            for path in folder.glob("*") if folder.is_dir() else []:
                if path.name.startswith(".tmp-"):
                    if old(path):
                        temp.append(path)
                    continue
                if known_items is None:
                    known_items = item_ids()
                head = path.name.split("-", 1)[0]
                if head.isdigit() and int(head) not in known_items:
                    thumbnails.append(path)
    spools: list[Path] = []
    if files.jobs_dir.is_dir():
        spools = [
            folder for folder in files.jobs_dir.iterdir() if folder.name not in references.live_jobs and old(folder)
        ]
    # Per-collection folders of deleted collections: only when nothing in them is new.
    collection_folders: list[Path] = []
    if files.originals_dir.is_dir():
        collection_folders = [
            folder
            for folder in files.originals_dir.iterdir()
            if folder.is_dir()
            and folder.name.isdigit()
            and int(folder.name) not in collection_ids
            and _tree_is_old(folder, cutoff)
        ]

    for path in temp:
        path.unlink(missing_ok=True)
        removed["temp"] += 1
    if not (originals or thumbnail_folders or thumbnails or spools or collection_folders):
        return removed
    with guard.locked() if guard is not None else nullcontext():
        if guard is not None:  # the truth now, with every writer waiting
            still = guard.referenced([relative for _, relative in originals])
            originals = [(path, relative) for path, relative in originals if relative not in still]
            live_ids = guard.collection_ids()
            live_jobs = guard.live_jobs()
            collection_folders = [f for f in collection_folders if int(f.name) not in live_ids]
            thumbnail_folders = [f for f in thumbnail_folders if int(f.name) not in live_ids]
            spools = [f for f in spools if f.name not in live_jobs]
        for path, _ in originals:
            path.unlink(missing_ok=True)
            removed["originals"] += 1
        for folder in thumbnail_folders:
            shutil.rmtree(folder, ignore_errors=True)
        for path in thumbnails:
            path.unlink(missing_ok=True)
            removed["thumbnails"] += 1
        for folder in spools:
            shutil.rmtree(folder, ignore_errors=True)
            removed["job_spools"] += 1
        for folder in collection_folders:
            shutil.rmtree(folder, ignore_errors=True)
    return removed
