"""Log setup: every line carries the request id of the request it was written for, as text or as JSON.

The id lives in a context variable that the web layer's request-id middleware sets for each request;
asyncio tasks and `run_in_threadpool` copy the context, so lines written by a route, its worker
thread or uvicorn's access log carry it. Lines written outside a request (startup, the model thread,
background jobs) carry "-".

`CLIP_FILTER_LOG_FORMAT=json` writes one JSON object per line (time, level, logger, message,
request_id, and exc_info when there is one); `text` (the default) writes
`2026-12-01 20:00:00,000 INFO clip_filter.api.errors [<request id>]: message`.
"""

from __future__ import annotations

import json
import logging
import logging.config
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any

request_id_var: ContextVar[str | None] = ContextVar("clip_filter_request_id", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"
LOG_FORMATS = ("text", "json")


def current_request_id() -> str | None:
    return request_id_var.get()


class RequestIdFilter(logging.Filter):
    """Puts the current request id on every record (on handlers, so records of every logger get it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get() or "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line; uvicorn's access lines also get their parts as fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": request_id if (request_id := getattr(record, "request_id", "-")) != "-" else None,
        }
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, _http_version, status = record.args
            out.update(client=client, method=method, path=path, status=status)
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def _formatter(log_format: str) -> dict[str, Any]:
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {LOG_FORMATS}, not {log_format!r}")
    if log_format == "json":
        return {"()": "clip_filter.core.logging.JsonFormatter"}
    return {"format": TEXT_FORMAT}


def logging_config(log_format: str = "text", level: str = "INFO") -> dict[str, Any]:
    """A `logging.config.dictConfig` dict: the root logger and uvicorn's, one handler on stderr.

    uvicorn accepts it as `log_config` (it then sets its own loggers to its `log_level`); the
    formatter names "default" and "access" are the ones uvicorn may adjust.
    """
    formatter = _formatter(log_format)
    handler = {"class": "logging.StreamHandler", "stream": "ext://sys.stderr", "filters": ["request_id"]}
    return {
        "version": 1,
        "disable_existing_loggers": False,  # module loggers created at import time keep working
        "filters": {"request_id": {"()": "clip_filter.core.logging.RequestIdFilter"}},
        "formatters": {"default": dict(formatter), "access": dict(formatter)},
        "handlers": {
            "default": {**handler, "formatter": "default"},
            "access": {**handler, "formatter": "access"},
        },
        "root": {"handlers": ["default"], "level": level.upper()},
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        },
    }


def configure_logging(log_format: str = "text", level: str = "INFO") -> None:
    """What the CLI calls once at start (instead of `logging.basicConfig`)."""
    logging.config.dictConfig(logging_config(log_format, level))
