"""The SQLite store's jobs: a mixin with the job rows (create, read, progress, state), kept apart from items."""

from __future__ import annotations

import json
import sqlite3
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from clip_filter.collections.errors import job_not_found
from clip_filter.collections.store.records import (
    MAX_STORED_FAILURES,
    CollectionRecord,
    JobFile,
    JobProgress,
    JobRecord,
    utc_now,
)


class SqliteJobsMixin:
    """Job methods of `SqliteCollectionStore`; they use only the store's connection helpers declared below."""

    if TYPE_CHECKING:

        def _transaction(self) -> AbstractContextManager[sqlite3.Connection]: ...
        def _select(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[sqlite3.Row]: ...
        def _select_one(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> sqlite3.Row | None: ...

    @staticmethod
    def _job(row: sqlite3.Row) -> JobRecord:
        return JobRecord(
            id=row["id"],
            collection_id=row["collection_id"],
            collection=row["collection"],
            source=row["source"],
            path=row["path"],
            state=row["state"],
            total=row["total"],
            done=row["done"],
            added=row["added"],
            duplicates=row["duplicates"],
            failed=row["failed"],
            failures=json.loads(row["failures"]),
            error=json.loads(row["error"]) if row["error"] else None,
            attempts=row["attempts"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )

    def create_job(
        self,
        job_id: str,
        collection: CollectionRecord,
        source: str,
        path: str | None,
        files: list[JobFile],
        failures: list[dict[str, Any]] | None = None,
    ) -> JobRecord:
        """A queued job and its file list, in one transaction (files already spooled when uploaded)."""
        now = utc_now()
        failures = failures or []
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO jobs (id, collection_id, collection, source, path, state, total, failed, failures, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?)",
                (
                    job_id,
                    collection.id,
                    collection.name,
                    source,
                    path,
                    len(files) + len(failures),
                    len(failures),
                    json.dumps(failures[:MAX_STORED_FAILURES]),
                    now,
                    now,
                ),
            )
            conn.executemany(
                "INSERT INTO job_files (job_id, seq, filename, path, content_type, metadata) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (job_id, f.seq, f.filename, f.path, f.content_type, json.dumps(f.metadata, ensure_ascii=False))
                    for f in files
                ],
            )
            if failures:  # files refused up front count as done
                conn.execute("UPDATE jobs SET done = ? WHERE id = ?", (len(failures), job_id))
        return self.get_job(job_id)

    def get_job(self, job_id: str) -> JobRecord:
        row = self._select_one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if row is None:
            raise job_not_found(job_id)
        return self._job(row)

    def job_files(self, job_id: str, after_seq: int, limit: int) -> list[JobFile]:
        rows = self._select(
            "SELECT seq, filename, path, metadata, content_type FROM job_files WHERE job_id = ? AND seq > ? "
            "ORDER BY seq LIMIT ?",
            (job_id, after_seq, limit),
        )
        return [JobFile(row[0], row[1], row[2], json.loads(row[3]), row[4]) for row in rows]

    def job_done_seq(self, job_id: str) -> int:
        """The seq of the last file a job has committed (files are numbered 0.. in order)."""
        job = self.get_job(job_id)
        pending = self._select_one("SELECT COUNT(*) FROM job_files WHERE job_id = ?", (job_id,))
        assert pending is not None  # COUNT(*) always answers one row
        failed_up_front = job.total - pending[0]
        return job.done - failed_up_front - 1

    def set_job_state(
        self, job_id: str, state: str, error: dict[str, Any] | None = None, crashed: bool = False
    ) -> None:
        """`crashed`: the job was found running at startup, i.e. a crash interrupted it (counted in attempts)."""
        with self._transaction() as conn:
            conn.execute(
                "UPDATE jobs SET state = ?, error = COALESCE(?, error), attempts = attempts + ?, updated_at = ? "
                "WHERE id = ?",
                (state, json.dumps(error) if error else None, int(crashed), utc_now(), job_id),
            )

    def _add_progress(self, conn: sqlite3.Connection, progress: JobProgress, now: str) -> None:
        row = conn.execute("SELECT failures FROM jobs WHERE id = ?", (progress.job_id,)).fetchone()
        failures = json.loads(row[0]) if row else []
        room = MAX_STORED_FAILURES - len(failures)
        if progress.failures and room > 0:
            failures.extend(progress.failures[:room])
        conn.execute(
            "UPDATE jobs SET done = done + ?, added = added + ?, duplicates = duplicates + ?, failed = failed + ?, "
            "failures = ?, updated_at = ? WHERE id = ?",
            (
                progress.done,
                progress.added,
                progress.duplicates,
                progress.failed,
                json.dumps(failures),
                now,
                progress.job_id,
            ),
        )

    def unfinished_jobs(self) -> list[JobRecord]:
        rows = self._select("SELECT * FROM jobs WHERE state IN ('queued', 'running') ORDER BY created_at")
        return [self._job(row) for row in rows]
