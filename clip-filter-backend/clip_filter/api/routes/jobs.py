"""Bulk ingest jobs: many uploaded files or a server-side folder, processed in the background.

An upload job is acknowledged (202) only after its files are spooled and fsynced and the job row is
committed (collections/jobs.py), so a crash after the answer never loses it; the runner resumes it at the
next start.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from clip_filter.api.bodies import parse, read_object
from clip_filter.api.deps import CollectionsDep, JobUploadGateDep
from clip_filter.api.inputs import read_form, request_kind
from clip_filter.api.multipart import file_parts
from clip_filter.api.schemas.collections import JOB_FILES_FORM, FolderJobBody, JobOut, request_body
from clip_filter.collections import views
from clip_filter.collections.jobs import Upload

router = APIRouter(tags=["jobs"])

MAX_UPLOAD_JOB_FILES = 100_000


@router.post(
    "/collections/{name}/jobs",
    status_code=202,
    summary="Start a bulk ingest job",
    response_model=JobOut,
    response_model_exclude_unset=True,
    openapi_extra=request_body(FolderJobBody, JOB_FILES_FORM),
)
async def create_job(
    name: str, request: Request, collections: CollectionsDep, job_uploads: JobUploadGateDep
) -> dict[str, Any]:
    """multipart: repeated `files` (+ optional repeated `metadata`, one JSON object per file);
    JSON: `{"path": "/folder/inside/CLIP_FILTER_INGEST_ROOTS"}`.

    Multipart uploads are admitted like item uploads (api/admission.py): a few spooled at once, a few more
    waiting unread, 429 beyond."""
    kind = request_kind(request)
    await run_in_threadpool(collections.get_collection, name)  # 404 before the body is read
    if kind == "json":
        body = parse(FolderJobBody, await read_object(request))
        job = await run_in_threadpool(collections.create_folder_job, name, body.path, body.include_hidden)
    else:
        async with job_uploads.admit():
            form = await read_form(request, max_files=MAX_UPLOAD_JOB_FILES + 1, max_fields=MAX_UPLOAD_JOB_FILES + 16)
            uploads = [
                Upload(part.filename, part.upload.content_type, part.metadata, stream=part.upload.file)
                for part in file_parts(form, MAX_UPLOAD_JOB_FILES)
            ]
            job = await run_in_threadpool(collections.create_upload_job, name, uploads)
    return views.job_view(job)


@router.get(
    "/jobs/{job_id}", summary="A job's state and progress", response_model=JobOut, response_model_exclude_unset=True
)
async def get_job(job_id: str, collections: CollectionsDep) -> dict[str, Any]:
    return views.job_view(await run_in_threadpool(collections.get_job, job_id))
