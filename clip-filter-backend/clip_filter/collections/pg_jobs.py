"""Bulk jobs shared by several replicas on one PostgreSQL: any replica claims the next job under a lease.

The single-process `JobRunner` keeps a local queue and, at startup, resumes every job found `running`
(a crash of *this* process left it so). With replicas a `running` job may belong to a live peer, so
this runner instead polls the database:
- `claim_job` takes the oldest queued job, or a running one whose lease expired (its replica died),
  with `SELECT ... FOR UPDATE SKIP LOCKED`, so two replicas never claim the same job;
- each batch is fetched with `claim_batch`, which renews the lease, and each batch's commit checks and
  renews it in the same transaction (the store's `_add_progress`): a replica that lost its lease cannot
  commit, and the unique (collection, sha256) constraint keeps every item stored once anyway;
- the job resumes after its last committed batch (progress commits with the items), on whichever
  replica took it over.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from clip_filter.collections.ingest import PreparedBatch
from clip_filter.collections.jobs import MAX_CRASHES, JobRunner
from clip_filter.collections.store import CollectionStore, JobFile, JobRecord
from clip_filter.core.errors import ClipFilterError

if TYPE_CHECKING:
    from clip_filter.collections.store.postgres import PostgresCollectionStore

log = logging.getLogger(__name__)

POLL_S = 1.0  # how often an idle replica looks for claimable jobs (submit() wakes it at once)


class ReplicaJobRunner(JobRunner):
    store: PostgresCollectionStore  # job_runner_class hands it only that store (leases, claims)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def start(self) -> None:
        """Start polling; nothing to requeue: the database is the queue. (A clean stop re-queues the job
        in the base class, which drops its lease: any replica may continue it.)"""
        try:
            self._expire_dead_local_owners()
        except Exception:  # noqa: BLE001 - their leases expire anyway
            log.warning("could not check the jobs left by earlier processes", exc_info=True)
        self._thread.start()

    def _expire_dead_local_owners(self) -> None:
        """Jobs held by an earlier process on this host that is gone (killed, this container restarted):
        claimable now instead of after the lease, as a restart resumes a job on SQLite at once.

        An owner is `host:pid:token`. Same host and that pid not running, or the pid is ours (a restarted
        container runs as the same pid) but the token is not: that process is dead. A wrong guess
        (containers sharing the host's name in separate pid namespaces) only moves the job: the holder's
        next commit is refused by the lease check, nothing is stored twice.
        """
        host = socket.gethostname()
        dead = {}
        for job_id, owner in self.store.running_job_owners().items():
            owner_host, _, rest = owner.partition(":")
            pid_text = rest.split(":", 1)[0]
            if owner_host != host or not pid_text.isdigit() or owner == self.owner:
                continue
            pid = int(pid_text)
            if pid == os.getpid() or not _process_alive(pid):
                dead[job_id] = owner
        if dead:
            log.info("jobs left by dead processes of this host, resumed now: %s", sorted(dead))
            self.store.expire_leases(list(dead), list(set(dead.values())))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                claimed = self.store.claim_job(self.owner)
            except Exception:  # noqa: BLE001 - the database may be restarting: try again later
                log.warning("could not claim a job", exc_info=True)
                claimed = None
            if claimed is None:
                try:
                    if self._queue.get(timeout=POLL_S) is None:
                        return
                except queue.Empty:
                    pass
                continue
            job, taken_over = claimed
            if taken_over:
                if job.attempts >= MAX_CRASHES:
                    self.store.set_job_state(
                        job.id,
                        "interrupted",
                        {
                            "code": "interrupted",
                            "message": f"Replicas stopped during this job {MAX_CRASHES} times; it was not resumed. "
                            "Start it again to ingest the remaining files (added ones are skipped).",
                        },
                    )
                    continue
                log.info(
                    "taking over job %s from a replica whose lease expired (%d/%d files done)",
                    job.id,
                    job.done,
                    job.total,
                )
            try:
                self._process(job.id)
            except ClipFilterError as exc:
                if exc.code == "job_lease_lost":
                    log.warning("job %s: %s", job.id, exc.message)
                    continue
                self._failed(job.id, exc)
            except Exception as exc:  # noqa: BLE001 - one broken job must not stop the worker
                if self._stop.is_set():
                    self._release(job.id)
                    return
                self._failed(job.id, exc)

    def _release(self, job_id: str) -> None:
        with contextlib.suppress(Exception):  # its lease expires anyway
            self.store.release_job(job_id, self.owner)

    def _failed(self, job_id: str, exc: Exception) -> None:
        log.error("job %s failed", job_id, exc_info=exc)
        error = (
            exc.to_dict()
            if isinstance(exc, ClipFilterError)
            else {"code": "internal_error", "message": f"The job stopped on an unexpected error: {exc}"}
        )
        try:
            self.store.set_job_state(job_id, "failed", error)
        except Exception:  # noqa: BLE001
            log.exception("could not mark job %s failed", job_id)

    def _prefetch(
        self, pool: ThreadPoolExecutor, job: JobRecord, after: int
    ) -> tuple[list[JobFile], Future[PreparedBatch]] | None:
        files = self.store.claim_batch(job.id, self.owner, after, self.batch_size)  # renews the lease
        if not files:
            return None
        sources = [self._source(job, f) for f in files]
        return files, pool.submit(self.ingestor.prepare_batch, self._collection(job), sources)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, another user's
    return True


def job_runner_class(store: CollectionStore) -> type[JobRunner]:
    """The runner for a store: replicas share jobs through PostgreSQL; SQLite keeps the in-process queue."""
    from clip_filter.collections.store.postgres import PostgresCollectionStore  # no psycopg import at module level

    return ReplicaJobRunner if isinstance(store, PostgresCollectionStore) else JobRunner
