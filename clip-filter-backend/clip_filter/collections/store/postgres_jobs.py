"""The PostgreSQL store's jobs: job rows and progress, and the leases that share jobs between replicas (a mixin)."""

from __future__ import annotations

import json
from typing import Any

from clip_filter.collections.errors import job_not_found
from clip_filter.collections.store.postgres_common import PostgresStoreBase, _iso, _no_nul, job_lease_lost
from clip_filter.collections.store.records import (
    MAX_STORED_FAILURES,
    CollectionRecord,
    JobFile,
    JobProgress,
    JobRecord,
    utc_now,
)


class PostgresJobsMixin(PostgresStoreBase):
    """Job methods of `PostgresCollectionStore`, with `claim_job`/`claim_batch` leases across replicas."""

    @staticmethod
    def _job(row: dict[str, Any]) -> JobRecord:
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
            failures=row["failures"],
            error=row["error"] or None,
            attempts=row["attempts"],
            created_at=_iso(row["created_at"]),
            updated_at=_iso(row["updated_at"]),
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
        from psycopg.types.json import Jsonb

        now = utc_now()
        failures = failures or []
        for f in files:
            _no_nul(f.filename, "invalid_request", "filename")
            _no_nul(f.metadata, "invalid_metadata", "metadata")
        _no_nul(path, "invalid_request", "path")
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO jobs (id, collection_id, collection, source, path, state, total, done, failed, failures, "
                "created_at, updated_at) VALUES (%s, %s, %s, %s, %s, 'queued', %s, %s, %s, %s, %s, %s)",
                (
                    job_id,
                    collection.id,
                    collection.name,
                    source,
                    path,
                    len(files) + len(failures),
                    len(failures),
                    len(failures),
                    Jsonb(failures[:MAX_STORED_FAILURES]),
                    now,
                    now,
                ),
            )
            with (
                conn.cursor() as cursor,
                cursor.copy("COPY job_files (job_id, seq, filename, path, content_type, metadata) FROM STDIN") as copy,
            ):
                for f in files:
                    copy.write_row(
                        (job_id, f.seq, f.filename, f.path, f.content_type, json.dumps(f.metadata, ensure_ascii=False))
                    )
        return self.get_job(job_id)

    def get_job(self, job_id: str) -> JobRecord:
        with self._read() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id = %s", (job_id,)).fetchone()
        if row is None:
            raise job_not_found(job_id)
        return self._job(row)

    def job_files(self, job_id: str, after_seq: int, limit: int) -> list[JobFile]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT seq, filename, path, metadata, content_type FROM job_files WHERE job_id = %s AND seq > %s "
                "ORDER BY seq LIMIT %s",
                (job_id, after_seq, limit),
            ).fetchall()
        return [JobFile(r["seq"], r["filename"], r["path"], r["metadata"], r["content_type"]) for r in rows]

    def job_done_seq(self, job_id: str) -> int:
        """The seq of the last file a job has committed (files are numbered 0.. in order)."""
        with self._read(snapshot=True) as conn:
            job = conn.execute("SELECT total, done FROM jobs WHERE id = %s", (job_id,)).fetchone()
            if job is None:
                raise job_not_found(job_id)
            listed = conn.execute("SELECT count(*) AS n FROM job_files WHERE job_id = %s", (job_id,)).fetchone()["n"]
        return job["done"] - (job["total"] - listed) - 1

    def set_job_state(
        self, job_id: str, state: str, error: dict[str, Any] | None = None, crashed: bool = False
    ) -> None:
        """`crashed`: the job was found running at startup, i.e. a crash interrupted it (counted in attempts)."""
        from psycopg.types.json import Jsonb

        owner = self._claimed.get(job_id)
        with self._transaction() as conn:
            conn.execute(
                "UPDATE jobs SET state = %s, error = COALESCE(%s, error), attempts = attempts + %s, updated_at = %s, "
                "lease_owner = CASE WHEN %s = 'running' THEN lease_owner END, "
                "lease_expires_at = CASE WHEN %s = 'running' THEN lease_expires_at END "
                "WHERE id = %s" + (" AND (lease_owner = %s OR lease_owner IS NULL)" if owner else ""),
                (
                    state,
                    Jsonb(error) if error else None,
                    int(crashed),
                    utc_now(),
                    state,
                    state,
                    job_id,
                    *((owner,) if owner else ()),
                ),
            )
        if state != "running":
            self._claimed.pop(job_id, None)

    def _add_progress(self, conn: Any, progress: JobProgress, now: str) -> None:
        from psycopg.types.json import Jsonb

        row = conn.execute("SELECT failures FROM jobs WHERE id = %s FOR UPDATE", (progress.job_id,)).fetchone()
        failures = list(row["failures"]) if row else []
        room = MAX_STORED_FAILURES - len(failures)
        if progress.failures and room > 0:
            failures.extend(progress.failures[:room])
        owner = self._claimed.get(progress.job_id)
        lease = ""
        params: list[Any] = [progress.done, progress.added, progress.duplicates, progress.failed, Jsonb(failures), now]
        if owner is not None:
            # Only the lease holder's batches count, and each one renews the lease in the same transaction:
            # a replica that lost its lease (stalled past it, another took over) rolls its batch back.
            lease = ", lease_expires_at = now() + make_interval(secs => %s)"
            params.append(self.job_lease_s)
        params.append(progress.job_id)
        cursor = conn.execute(
            "UPDATE jobs SET done = done + %s, added = added + %s, duplicates = duplicates + %s, failed = failed + %s, "
            f"failures = %s, updated_at = %s{lease} WHERE id = %s" + (" AND lease_owner = %s" if owner else ""),
            (*params, owner) if owner else params,
        )
        if owner is not None and cursor.rowcount == 0:
            raise job_lease_lost(progress.job_id)

    def unfinished_jobs(self) -> list[JobRecord]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT * FROM jobs WHERE state IN ('queued', 'running') ORDER BY created_at, id"
            ).fetchall()
        return [self._job(row) for row in rows]

    # ---- jobs across replicas ------------------------------------------------------------------------
    def claim_job(self, owner: str) -> tuple[JobRecord, bool] | None:
        """Claim the oldest job no live replica works on: (job, taken_over) or None.

        `SELECT ... FOR UPDATE SKIP LOCKED`: replicas claiming at the same moment get different jobs. A
        `running` job whose lease expired was left by a replica that died (taken_over: counted in attempts).
        """
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT id, state FROM jobs WHERE state = 'queued' OR (state = 'running' AND "
                "(lease_expires_at IS NULL OR lease_expires_at < now())) ORDER BY created_at, id "
                "FOR UPDATE SKIP LOCKED LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            taken_over = row["state"] == "running"
            job = conn.execute(
                "UPDATE jobs SET state = 'running', lease_owner = %s, "
                "lease_expires_at = now() + make_interval(secs => %s), attempts = attempts + %s, updated_at = %s "
                "WHERE id = %s RETURNING *",
                (owner, self.job_lease_s, int(taken_over), utc_now(), row["id"]),
            ).fetchone()
        self._claimed[job["id"]] = owner
        return self._job(job), taken_over

    def claim_batch(self, job_id: str, owner: str, after_seq: int, limit: int) -> list[JobFile]:
        """The job's next files after `after_seq`, if `owner` still holds its lease (renewed here)."""
        with self._transaction() as conn:
            renewed = conn.execute(
                "UPDATE jobs SET lease_expires_at = now() + make_interval(secs => %s) "
                "WHERE id = %s AND state = 'running' AND lease_owner = %s",
                (self.job_lease_s, job_id, owner),
            ).rowcount
            if renewed == 0:
                self._claimed.pop(job_id, None)
                raise job_lease_lost(job_id)
            rows = conn.execute(
                "SELECT seq, filename, path, metadata, content_type FROM job_files WHERE job_id = %s AND seq > %s "
                "ORDER BY seq LIMIT %s",
                (job_id, after_seq, limit),
            ).fetchall()
        return [JobFile(r["seq"], r["filename"], r["path"], r["metadata"], r["content_type"]) for r in rows]

    def running_job_owners(self) -> dict[str, str]:
        """job id -> lease owner of the jobs some replica holds (running)."""
        with self._read() as conn:
            rows = conn.execute("SELECT id, lease_owner FROM jobs WHERE state = 'running' AND lease_owner IS NOT NULL")
            return {row["id"]: row["lease_owner"] for row in rows}

    def expire_leases(self, job_ids: list[str], owners: list[str]) -> None:
        """End these owners' leases on these jobs now (their processes are known dead): claimable at once."""
        if job_ids:
            with self._transaction() as conn:
                conn.execute(
                    "UPDATE jobs SET lease_expires_at = now() - interval '1 second' "
                    "WHERE id = ANY(%s) AND lease_owner = ANY(%s) AND state = 'running'",
                    (job_ids, owners),
                )

    def release_job(self, job_id: str, owner: str) -> None:
        """Give a claimed job back (clean shutdown): queued again, for any replica."""
        with self._transaction() as conn:
            conn.execute(
                "UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_expires_at = NULL, updated_at = %s "
                "WHERE id = %s AND state = 'running' AND lease_owner = %s",
                (utc_now(), job_id, owner),
            )
        self._claimed.pop(job_id, None)
