"""create_app(): the FastAPI application with its model service, collections, errors and UI."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI
from fastapi.staticfiles import StaticFiles

from clip_filter import __version__
from clip_filter.api import metrics
from clip_filter.api.admission import UploadGate
from clip_filter.api.errors import install_error_handlers
from clip_filter.api.limits import BodySizeLimit
from clip_filter.api.protocols import enabled_routers
from clip_filter.api.ratelimit import RequestRateLimiter, enforce_rate_limit
from clip_filter.api.request_id import RequestIdMiddleware
from clip_filter.api.routes import embeddings, health, match
from clip_filter.api.security import install_security, require_access
from clip_filter.core.config import Settings, get_settings
from clip_filter.ml.service import ModelService

log = logging.getLogger(__name__)

API_ROUTERS = [health.router, metrics.router, match.router, embeddings.router]


def _collection_routers() -> list[APIRouter]:
    from clip_filter.api.routes import collections, jobs
    from clip_filter.api.routes import map as map_routes

    return [collections.router, jobs.router, map_routes.router]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from clip_filter.collections.service import open_collections

        model = ModelService(settings)
        app.state.model = model
        model.start()  # loads in the background: liveness answers at once, readiness once loaded
        app.state.collections = open_collections(settings, model)
        metrics.watch(model, app.state.collections, settings.max_queue)
        try:
            yield
        finally:
            metrics.unwatch()
            app.state.collections.close()
            model.close()
            app.state.access.close()

    app = FastAPI(
        title="clip-filter",
        version=__version__,
        description="Image-text matching, embeddings and collection search on OpenCLIP.",
        lifespan=lifespan,
        # App-wide, so every route (also those added later, the protocol adapters) is checked. Access first: it
        # finds the key and scope (health, /.well-known, /ping and / stay public, see api/security.py) and sets
        # request.state.principal, which the rate limit keys on.
        dependencies=[Depends(require_access), Depends(enforce_rate_limit)],
    )
    app.state.settings = settings
    app.state.rate_limiter = RequestRateLimiter(settings)
    # A few uploads at a time read and processed, a few more waiting, the rest 429 (api/admission.py); bulk-job
    # uploads have their own places, so a long job upload does not hold up small ones.
    app.state.upload_gate = UploadGate("uploads", settings.upload_concurrency, settings.upload_backlog)
    app.state.job_upload_gate = UploadGate("job uploads", settings.upload_concurrency, settings.upload_backlog)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    # Keys, CORS (off unless CLIP_FILTER_CORS_ORIGINS), Host/cross-site/content-type checks and security headers;
    # refuses to start when keys are needed and none exist (docs/security.md).
    install_security(app, settings)
    # Added last, so outermost: they see every request and answer, also those refused by the middlewares above.
    app.add_middleware(metrics.MetricsMiddleware)
    app.add_middleware(RequestIdMiddleware)

    for router in API_ROUTERS + _collection_routers():
        app.include_router(router)
        # The UI calls the API under /api (nginx strips the prefix in Docker; here both work).
        app.include_router(router, prefix="/api", include_in_schema=False)
    # Other ecosystems' wire protocols (CLIP_FILTER_PROTOCOLS), at their own paths only; before the UI's mount at "/".
    for router in enabled_routers(settings):
        app.include_router(router)

    ui_dir = settings.ui_dir
    if ui_dir is not None and Path(ui_dir, "index.html").is_file():
        app.mount("/", StaticFiles(directory=ui_dir, html=True), name="ui")
    else:
        if ui_dir is not None:
            log.warning("CLIP_FILTER_UI_DIR=%s has no index.html; the UI is not served", ui_dir)

        # immich's server expects {"message": "Immich ML"} here; with the UI mounted at "/" it cannot have it
        # (immich points at the backend's port, not the UI's): see docs/protocols.md.
        immich = {"message": "Immich ML"} if "immich" in settings.protocol_set else {}

        @app.get("/", include_in_schema=False)
        async def root() -> dict[str, str]:
            return {**immich, "service": "clip-filter", "version": __version__, "docs": "/docs", "info": "/info"}

    return app
