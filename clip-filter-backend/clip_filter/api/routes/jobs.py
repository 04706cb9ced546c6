"""Bulk ingest jobs: many uploaded files or a server-side folder, processed in the background.

An upload job is acknowledged (202) only after its files are spooled and fsynced and the job row is
committed, so a crash after the answer never loses it; the runner resumes it at the next start.
"""

from __future__ import annotations

import shutil
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from clip_filter.api.deps import get_model_service, get_settings_dep, get_store
from clip_filter.api.inputs import read_form, request_kind
from clip_filter.api.routes.collections import clean_filename, get_collection, invalid, parse_metadata_field, read_object
from clip_filter.collections.jobs import create_path_job, new_job_id, spool_upload
from clip_filter.collections.service import Collections
from clip_filter.collections.store import _fsync_dir
from clip_filter.core.config import Settings
from clip_filter.ml.service import ModelService

router = APIRouter(tags=["jobs"])

MAX_UPLOAD_JOB_FILES = 100_000


@router.post("/collections/{name}/jobs", status_code=202, summary="Start a bulk ingest job")
async def create_job(
    name: str,
    request: Request,
    store: Collections = Depends(get_store),
    service: ModelService = Depends(get_model_service),
    settings: Settings = Depends(get_settings_dep),
) -> JSONResponse:
    """multipart: repeated `files` (+ optional repeated `metadata`, one JSON object per file);
    JSON: `{"path": "/folder/inside/CLIP_FILTER_INGEST_ROOTS"}`."""
    kind = request_kind(request)
    collection = await get_collection(store, name)
    if service.ready:
        store.check_model(collection)  # refuse now rather than fail at the first batch
    if kind == "json":
        body = await read_object(request)
        job = await run_in_threadpool(
            create_path_job, store.store, collection, body.get("path"), settings.ingest_root_paths
        )
    else:
        form = await read_form(request, max_files=MAX_UPLOAD_JOB_FILES + 1, max_fields=MAX_UPLOAD_JOB_FILES + 16)
        files = form.getlist("files")
        if not files:
            raise invalid("No files: send one or more in the repeated `files` field.", "no_files")
        if len(files) > MAX_UPLOAD_JOB_FILES:
            raise invalid(f"At most {MAX_UPLOAD_JOB_FILES} files per job.", "too_many_files", 413)
        metadata_parts = form.getlist("metadata")
        if metadata_parts and len(metadata_parts) != len(files):
            raise invalid("Send one `metadata` part per file, in the same order, or none.", "invalid_metadata")
        metadata = [parse_metadata_field(raw, i) for i, raw in enumerate(metadata_parts)] or [{} for _ in files]
        if not all(isinstance(f, UploadFile) for f in files):
            raise invalid("Every `files` part must be a file upload.")
        job_id = new_job_id()
        try:
            spooled = []
            for seq, (upload, meta) in enumerate(zip(files, metadata)):
                data = await upload.read()
                spooled.append(await run_in_threadpool(
                    spool_upload, store.store.jobs_dir, job_id, seq, clean_filename(upload.filename), data,
                    upload.content_type, meta,
                ))
            await run_in_threadpool(_fsync_dir, store.store.jobs_dir / job_id)
            job = await run_in_threadpool(store.store.create_job, job_id, collection, "upload", None, spooled)
        except BaseException:
            shutil.rmtree(store.store.jobs_dir / job_id, ignore_errors=True)
            raise
    store.jobs.submit(job.id)
    return JSONResponse(job.to_dict(), status_code=202)


@router.get("/jobs/{job_id}", summary="A job's state and progress")
async def get_job(job_id: str, store: Collections = Depends(get_store)) -> dict[str, Any]:
    return (await run_in_threadpool(store.store.get_job, job_id)).to_dict()
