"""Bulk ingest jobs: persisted in SQLite, run one at a time on a worker thread, resumed after a restart.

A job is a numbered list of files (uploaded files are first spooled to disk, fsynced, under
DATA_DIR/jobs/<id>/, so an acknowledged job survives a crash). The worker ingests them in batches;
each batch's items and the job's progress commit in one transaction, so after kill -9 the job
resumes exactly after its last committed batch: nothing is lost or added twice.

A job found `running` at startup was interrupted by a crash; it is resumed, unless that already
happened MAX_CRASHES times (a file that kills the process must not crash-loop the server): then it is
marked `interrupted` and its progress stays visible.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from clip_filter.collections.embedder import Embedder
from clip_filter.collections.ingest import Ingestor, PreparedBatch, Source, is_supported_filename
from clip_filter.collections.roots import (  # noqa: F401 - re-exported for callers of the old names
    MAX_JOB_FILES,
    inside_roots,
    list_folder,
    path_not_allowed,
    resolve_allowed,
    root_of,
)
from clip_filter.collections.store import CollectionRecord, CollectionStore, JobFile, JobRecord
from clip_filter.core.errors import ClipFilterError, ModelUnavailableError, OverloadedError

log = logging.getLogger(__name__)

MAX_CRASHES = 3


def new_job_id() -> str:
    return uuid.uuid4().hex


@dataclass
class Upload:
    """One uploaded file of a job: its bytes, or a file object read when it is spooled."""

    filename: str | None
    content_type: str | None
    metadata: dict[str, Any]
    data: bytes | None = None
    stream: BinaryIO | None = None

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.stream is not None
        return self.stream.read()


# A batch being prepared on the prefetch thread: its files and the future of its preparation.
Upcoming = tuple[list[JobFile], Future[PreparedBatch]]


class JobRunner:
    def __init__(
        self,
        store: CollectionStore,
        ingestor: Ingestor,
        embedder: Callable[[], Embedder],
        batch_size: int,
        roots: list[Path],
    ) -> None:
        self.store = store
        self.ingestor = ingestor
        self.embedder = embedder
        self.batch_size = batch_size
        self.roots = roots
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="collections-jobs", daemon=True)

    def start(self) -> None:
        """Requeue jobs a restart interrupted, then start the worker."""
        for job in self.store.unfinished_jobs():
            if job.state == "running":  # it was running when the process died
                if job.attempts + 1 >= MAX_CRASHES:
                    self.store.set_job_state(
                        job.id,
                        "interrupted",
                        {
                            "code": "interrupted",
                            "message": f"The server stopped during this job {MAX_CRASHES} times; it was not resumed. "
                            "Start it again to ingest the remaining files (added ones are skipped).",
                        },
                        crashed=True,
                    )
                    continue
                self.store.set_job_state(job.id, "queued", crashed=True)
                log.info("resuming job %s after a restart (%d/%d files done)", job.id, job.done, job.total)
            self._queue.put(job.id)
        self._thread.start()

    def submit(self, job_id: str) -> None:
        self._queue.put(job_id)

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ---- the worker ----------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            job_id = self._queue.get()
            if job_id is None:
                return
            try:
                self._process(job_id)
            except Exception as exc:  # noqa: BLE001 - one broken job must not stop the worker
                if self._stop.is_set():
                    with contextlib.suppress(Exception):  # best effort while shutting down
                        self.store.set_job_state(job_id, "queued")  # shutting down: resumed at the next start
                    return
                log.exception("job %s failed", job_id)
                error = (
                    exc.to_dict()
                    if isinstance(exc, ClipFilterError)
                    else {"code": "internal_error", "message": f"The job stopped on an unexpected error: {exc}"}
                )
                try:
                    self.store.set_job_state(job_id, "failed", error)
                except Exception:  # noqa: BLE001
                    log.exception("could not mark job %s failed", job_id)
                    continue
                self.store.files.remove_spool(job_id)  # a failed job is never resumed: its spool is garbage

    def _wait_for_model(self) -> Embedder | None:
        while not self._stop.is_set():
            embedder = self.embedder()
            try:
                embedder.info  # noqa: B018 - raises while the model loads
                return embedder
            except ModelUnavailableError:
                self._stop.wait(0.5)
        return None

    def _process(self, job_id: str) -> None:
        job = self.store.get_job(job_id)
        if job.state not in ("queued", "running"):
            self.store.files.remove_spool(job_id)  # e.g. failed when its collection was deleted: spool not needed
            return
        embedder = self._wait_for_model()
        if embedder is None:
            return
        self.store.set_job_state(job_id, "running")
        # Two stages overlap: while the model embeds batch n, a prefetch thread reads, hashes, decodes and
        # stores the originals of batch n+1, so the model does not wait for the disk or the decoder.
        with ThreadPoolExecutor(1, thread_name_prefix="collections-prefetch") as prefetch:
            upcoming = self._prefetch(prefetch, job, self.store.job_done_seq(job_id))
            try:
                while upcoming is not None and not self._stop.is_set():
                    current, upcoming = upcoming, None
                    try:
                        upcoming = self._prefetch(prefetch, job, current[0][-1].seq)
                        self._commit_batch(job, current[0], current[1].result(), embedder)
                    except BaseException:
                        self._drop(current)
                        raise
            finally:
                self._drop(upcoming)  # prepared but not committed (stop or error): its originals go
        if self._stop.is_set():
            self.store.set_job_state(job_id, "queued")  # a clean stop: resumed at the next start
            return
        # Spool first: every file is committed, so a crash in between resumes to nothing left to read.
        self.store.files.remove_spool(job_id)
        self.store.set_job_state(job_id, "done")

    def _collection(self, job: JobRecord) -> CollectionRecord:
        collection = self.store.get_collection_by_id(job.collection_id) if job.collection_id is not None else None
        if collection is None:
            raise ClipFilterError("collection_not_found", f"Collection {job.collection!r} was deleted.", 404)
        return collection

    def _source(self, job: JobRecord, file: JobFile) -> Source:
        path = Path(file.path)
        if job.source != "path":
            return Source(filename=file.filename, path=path, metadata=file.metadata, content_type=file.content_type)
        root = root_of(path, self.roots)  # file.path was resolved once, when the job was listed
        if root is None:  # the roots changed since the job was listed
            return Source(filename=file.filename, metadata=file.metadata, error=path_not_allowed(file.path))
        # Read beneath the root without following links: a component swapped for a symlink is refused then.
        return Source(filename=file.filename, path=path, root=root, metadata=file.metadata)

    def _prefetch(self, pool: ThreadPoolExecutor, job: JobRecord, after: int) -> Upcoming | None:
        """The next batch of the job's files after `after`, being prepared on the prefetch thread."""
        files = self.store.job_files(job.id, after, self.batch_size)
        if not files:
            return None
        sources = [self._source(job, f) for f in files]
        return files, pool.submit(self.ingestor.prepare_batch, self._collection(job), sources)

    def _drop(self, upcoming: Upcoming | None) -> None:
        """A prepared batch that will not be committed now: remove the originals it wrote."""
        if upcoming is None:
            return
        with contextlib.suppress(Exception):  # its preparation failed: nothing was kept
            self.ingestor.discard(upcoming[1].result())

    def _commit_batch(self, job: JobRecord, files: list[JobFile], batch: PreparedBatch, embedder: Embedder) -> None:
        while True:
            try:
                self.ingestor.commit_batch(batch, embedder, job_id=job.id)
                return
            except (ModelUnavailableError, OverloadedError):
                if self._stop.wait(0.5):
                    raise
                # commit_batch discarded the batch's originals: prepare it again from its files.
                batch = self.ingestor.prepare_batch(self._collection(job), [self._source(job, f) for f in files])


def create_upload_job(store: CollectionStore, collection: CollectionRecord, uploads: list[Upload]) -> JobRecord:
    """Spool the files durably (one at a time, then one folder fsync), then commit the job: acknowledged
    only once both are on disk. A failure removes the spool unless the job row committed (then the spool is
    its input, and the job runs); when that cannot be told, the spool stays for startup GC to judge."""
    job_id = new_job_id()
    try:
        files = []
        for seq, upload in enumerate(uploads):
            path = store.files.spool_file(job_id, seq, upload.read())
            files.append(JobFile(seq, upload.filename, str(path), upload.metadata, upload.content_type))
        store.files.sync_spool(job_id)
        return store.create_job(job_id, collection, "upload", None, files)
    except BaseException:
        if not _job_may_exist(store, job_id):
            store.files.remove_spool(job_id)
        raise


def _job_may_exist(store: CollectionStore, job_id: str) -> bool:
    try:
        store.get_job(job_id)
    except ClipFilterError as exc:
        return exc.code != "job_not_found"
    except Exception:  # noqa: BLE001 - the database cannot say: keep the files
        return True
    return True


def create_path_job(
    store: CollectionStore,
    collection: CollectionRecord,
    path_text: str,
    roots: list[Path],
    include_hidden: bool = False,
) -> JobRecord:
    real = resolve_allowed(path_text, roots)
    started = time.monotonic()
    files, failures = list_folder(real, roots, is_supported_filename, include_hidden)
    log.info("job for %s: %d files listed in %.1fs", real, len(files), time.monotonic() - started)
    return store.create_job(new_job_id(), collection, "path", str(real), files, failures)
