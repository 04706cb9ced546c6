"""File durability for the collections store: originals, thumbnails and job spools beside the database.

Rules (the same for every database backend, which is why they live apart from it):
- Originals are written atomically (temp file, fsync, rename, fsync of the folder) *before* the transaction
  that references them. Every file name carries a random token, so no two items ever share a file and
  deleting one never races with adding the same content again. A crash between the file and the commit
  leaves an unreferenced file, which garbage collection (`gc.py`) removes later.
- A new folder is durable only once its parent is fsynced: `ensure_dir` does that for each folder it makes.
- Thumbnails are a cache (no fsync of their folder); job spools are fsynced once per job, before the job
  row that lists them commits.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make the entries (renames, new files) of a folder durable; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # e.g. Windows: folders cannot be opened; the rename is what we can do there
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def ensure_dir(path: Path) -> None:
    """mkdir -p, fsyncing the parent of each folder we create (a new folder is durable only then)."""
    missing = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            folder.mkdir()
        fsync_dir(folder.parent)


def write_file_atomic(path: Path, data: bytes, sync_dir: bool = True) -> None:
    """Write `data` to `path` so that after a crash the path holds either nothing or all of it."""
    ensure_dir(path.parent)
    tmp = path.parent / f".tmp-{secrets.token_hex(8)}"
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    if sync_dir:
        fsync_dir(path.parent)


class DataFiles:
    """The files of a data folder: originals/<collection>/<sha[:2]>/, thumbnails/<collection>/, jobs/<job>/."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.originals_dir = self.data_dir / "originals"
        self.thumbnails_dir = self.data_dir / "thumbnails"
        self.jobs_dir = self.data_dir / "jobs"
        ensure_dir(self.data_dir)

    # ---- originals -----------------------------------------------------------------------------------
    def write_original(self, collection_id: int, sha256: str, extension: str, data: bytes) -> str:
        """Store an original atomically and durably; returns its path relative to the data dir (unique per call)."""
        relative = Path("originals", str(collection_id), sha256[:2], f"{sha256}-{secrets.token_hex(4)}{extension}")
        write_file_atomic(self.data_dir / relative, data)
        return relative.as_posix()

    def original_file(self, original_path: str | None) -> Path | None:
        return self.data_dir / original_path if original_path else None

    def remove_files(self, relative_paths: list[str | None]) -> None:
        """Remove originals no committed row references (missing ones are fine)."""
        for relative in relative_paths:
            if relative:
                with contextlib.suppress(FileNotFoundError):
                    (self.data_dir / relative).unlink()

    def thumbnail_path(self, collection_id: int, item_id: int, size: int) -> Path:
        return self.thumbnails_dir / str(collection_id) / f"{item_id}-{size}.jpg"

    def remove_thumbnails(self, collection_id: int, item_id: int) -> None:
        for thumbnail in (self.thumbnails_dir / str(collection_id)).glob(f"{item_id}-*.jpg"):
            thumbnail.unlink(missing_ok=True)

    def remove_collection_files(self, collection_id: int) -> None:
        """After a collection's rows are gone (a crash before this leaves folders that gc removes)."""
        shutil.rmtree(self.originals_dir / str(collection_id), ignore_errors=True)
        shutil.rmtree(self.thumbnails_dir / str(collection_id), ignore_errors=True)

    # ---- job spools ----------------------------------------------------------------------------------
    def spool_dir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    def spool_file(self, job_id: str, seq: int, data: bytes) -> Path:
        """Write one uploaded file of a job; `sync_spool` once after the last one makes them all durable."""
        path = self.spool_dir(job_id) / f"{seq:07d}"
        write_file_atomic(path, data, sync_dir=False)
        return path

    def sync_spool(self, job_id: str) -> None:
        fsync_dir(self.spool_dir(job_id))  # one folder fsync for all the renames

    def remove_spool(self, job_id: str) -> None:
        shutil.rmtree(self.spool_dir(job_id), ignore_errors=True)
