"""The PostgreSQL store's garbage collection: files no row references, safe while other replicas write (a mixin)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from clip_filter.collections.store.postgres_common import PostgresStoreBase
from clip_filter.collections.store.records import CollectionRecord, JobRecord
from clip_filter.core.errors import ClipFilterError


class PostgresGcMixin(PostgresStoreBase):
    """`collect_garbage` of `PostgresCollectionStore`: originals, thumbnails and job spools no row references."""

    data_dir: Path

    if TYPE_CHECKING:

        def get_collection_by_id(self, collection_id: int) -> CollectionRecord | None: ...
        def get_job(self, job_id: str) -> JobRecord: ...

    def _referenced(self, paths: list[str]) -> set[str]:
        if not paths:
            return set()
        with self._read() as conn:
            rows = conn.execute("SELECT original_path FROM items WHERE original_path = ANY(%s)", (paths,)).fetchall()
        return {row["original_path"] for row in rows}

    def collect_garbage(self, min_age_s: float = 3600.0) -> dict[str, int]:
        """Remove files no row references: originals and thumbnails of crashed writes or deleted rows.

        Safe while other replicas write: only files older than `min_age_s` are candidates (a replica may
        have written an original whose transaction has not committed yet), and the candidates are looked
        up again right before they are unlinked (a row may have committed since the first read).
        """
        removed = {"originals": 0, "thumbnails": 0, "temp": 0, "job_spools": 0}
        cutoff = time.time() - min_age_s
        with self._read(snapshot=True) as conn:
            collection_ids = {row["id"] for row in conn.execute("SELECT id FROM collections")}
            referenced = {
                row["original_path"]
                for row in conn.execute("SELECT original_path FROM items WHERE original_path IS NOT NULL")
            }
            item_ids = {row["id"] for row in conn.execute("SELECT id FROM items")}
            live_jobs = {row["id"] for row in conn.execute("SELECT id FROM jobs WHERE state IN ('queued', 'running')")}

        def old(path: Path) -> bool:
            try:
                return path.stat().st_mtime < cutoff
            except FileNotFoundError:
                return False

        if self.files.originals_dir.is_dir():
            candidates: list[tuple[str, Path]] = []
            for path in self.files.originals_dir.rglob("*"):
                if not path.is_file() or not old(path):
                    continue
                relative = path.relative_to(self.data_dir).as_posix()
                if path.name.startswith(".tmp-"):
                    path.unlink(missing_ok=True)
                    removed["temp"] += 1
                elif relative not in referenced:
                    candidates.append((relative, path))
            for start in range(0, len(candidates), 1000):
                chunk = candidates[start : start + 1000]
                still = self._referenced([relative for relative, _ in chunk])
                for relative, path in chunk:
                    if relative not in still:
                        path.unlink(missing_ok=True)
                        removed["originals"] += 1
        if self.files.thumbnails_dir.is_dir():
            for folder in self.files.thumbnails_dir.iterdir():
                if (
                    folder.is_dir()
                    and folder.name.isdigit()
                    and int(folder.name) not in collection_ids
                    and self.get_collection_by_id(int(folder.name)) is None
                ):
                    shutil.rmtree(folder, ignore_errors=True)
                    continue
                for path in folder.glob("*") if folder.is_dir() else []:
                    if path.name.startswith(".tmp-") and old(path):
                        path.unlink(missing_ok=True)
                        removed["temp"] += 1
                        continue
                    head = path.name.split("-", 1)[0]
                    if head.isdigit() and int(head) not in item_ids and old(path):
                        path.unlink(missing_ok=True)
                        removed["thumbnails"] += 1
        if self.files.jobs_dir.is_dir():
            for folder in self.files.jobs_dir.iterdir():
                if folder.name not in live_jobs and old(folder):
                    try:
                        state = self.get_job(folder.name).state
                    except ClipFilterError:
                        state = None
                    if state not in ("queued", "running"):
                        shutil.rmtree(folder, ignore_errors=True)
                        removed["job_spools"] += 1
        if self.files.originals_dir.is_dir():
            for folder in self.files.originals_dir.iterdir():
                if (
                    folder.is_dir()
                    and folder.name.isdigit()
                    and int(folder.name) not in collection_ids
                    and self.get_collection_by_id(int(folder.name)) is None
                ):
                    shutil.rmtree(folder, ignore_errors=True)
        return removed
