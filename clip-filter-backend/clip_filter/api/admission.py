"""Admission of uploads: a few at a time do the work, a few more wait without their bodies read, the rest get 429.

Why: an upload's work is CPU-bound Python end to end: its multipart body is parsed on the event loop, then a
worker thread decodes, hashes and stores its files. With nothing in front of it, a flood of 48 concurrent
uploads had 48 bodies parsed on the event loop at once and up to 40 worker threads (anyio's default pool)
fighting for the GIL and the two cores, and `/health/ready` waited 0.3-0.5 s behind them. The model queue's
429 could not help: the queue is still empty while the bodies are read, and most of that work was thrown away
when the queue then turned out full.

`UploadGate.admit()` wraps reading the body and the work: at most `capacity` requests are inside it at once
(so at most that many worker threads do upload work, however many clients there are), at most `backlog` more
wait for a place on the event loop (no thread; uvicorn stops reading a waiting request's socket once its
buffer holds 64 KiB, so a waiting body is not read into memory), and beyond that a request gets
429 `overloaded` with Retry-After at once, before any of its body is read. Nothing here takes a lock that
/health waits on: the counts live on the event loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from clip_filter.api.metrics import UPLOAD_REFUSALS, UPLOADS_ACTIVE, UPLOADS_WAITING
from clip_filter.core.errors import OverloadedError


class UploadGate:
    def __init__(self, what: str, capacity: int, backlog: int) -> None:
        self.what = what
        self.capacity = capacity
        self.backlog = backlog
        self._limiter = anyio.CapacityLimiter(capacity)
        self._waiting = 0
        self.admitted = 0  # requests let in since start
        self.refused = 0  # requests answered 429 here since start
        self.peak_active = 0  # the most requests inside at once (<= capacity)

    @property
    def active(self) -> int:
        return int(self._limiter.borrowed_tokens)

    @property
    def waiting(self) -> int:
        return self._waiting

    def stats(self) -> dict[str, Any]:
        return {
            "capacity": self.capacity,
            "backlog": self.backlog,
            "active": self.active,
            "waiting": self.waiting,
            "admitted": self.admitted,
            "refused": self.refused,
            "peak_active": self.peak_active,
        }

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Inside: this request may read its body and do its work. 429 when every place and the backlog are taken."""
        try:
            self._limiter.acquire_nowait()  # a free place (and nobody waiting before us): in at once
        except anyio.WouldBlock:
            if self._waiting >= self.backlog:
                self.refused += 1
                UPLOAD_REFUSALS.labels(self.what).inc()
                raise OverloadedError(
                    retry_after=1,
                    message=f"Too many {self.what} are being processed ({self.capacity} at once, {self.backlog} "
                    "waiting); retry shortly.",
                ) from None
            self._waiting += 1
            UPLOADS_WAITING.labels(self.what).inc()
            try:
                await self._limiter.acquire()  # first come, first served
            finally:
                self._waiting -= 1
                UPLOADS_WAITING.labels(self.what).dec()
        UPLOADS_ACTIVE.labels(self.what).inc()
        try:
            self.admitted += 1
            self.peak_active = max(self.peak_active, self.active)
            yield
        finally:
            self._limiter.release()
            UPLOADS_ACTIVE.labels(self.what).dec()
