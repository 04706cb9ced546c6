"""What the protocol adapters share: one failure type, a route class that renders it in a protocol's own
shape, the served model's names, and decoding through the service's own image decoder."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException

from clip_filter.core.errors import ClipFilterError, OverloadedError
from clip_filter.ml.encoder import ModelInfo
from clip_filter.ml.service import FAILED, ModelService

log = logging.getLogger(__name__)


@dataclass
class Failure:
    """Any error of a protocol route, before the protocol renders it."""

    status: int
    code: str
    message: str
    param: str | None = None
    permanent: bool = False  # a retry cannot help (the model failed to load): clients are told not to retry
    headers: dict[str, str] = field(default_factory=dict)


def _failure(request: Request, exc: Exception) -> Failure:
    if isinstance(exc, ClipFilterError):
        param = exc.details.get("param")
        if param is None and "index" in exc.details:
            param = f"input[{exc.details['index']}]"
        # The protocols' shapes have no room for details: the reason and the fix go into the message.
        message = " ".join([exc.message, *(str(exc.details[k]) for k in ("reason",) if exc.details.get(k))])
        if exc.details.get("fix"):
            message += f" Fix: {exc.details['fix']}"
        failure = Failure(exc.status, exc.code, message, param)
        if isinstance(exc, OverloadedError):
            failure.headers["Retry-After"] = str(exc.retry_after)
        if exc.code == "model_unavailable":
            failure.permanent = request.app.state.model.state == FAILED
            if not failure.permanent:
                failure.headers["Retry-After"] = "1"
        return failure
    if isinstance(exc, RequestValidationError):
        problems = exc.errors()
        first = problems[0] if problems else {"loc": ("body",), "msg": "invalid"}
        location = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        return Failure(422, "invalid_request", f"Invalid request: {location}: {first.get('msg', '')}", location)
    if isinstance(exc, StarletteHTTPException):
        return Failure(exc.status_code, "http_error", str(exc.detail))
    log.error("unexpected error in a protocol route", exc_info=exc)
    return Failure(500, "internal_error", "Unexpected server error; see the server log.")


def protocol_route(render: Callable[[Failure], Response]) -> type[APIRoute]:
    """A route class whose errors (bad input, validation, model state, auth) leave in `render`'s shape.

    Scoped to the routers that use it: the global handlers (the service's envelope) never see these.
    """

    class ProtocolRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def guarded(request: Request) -> Response:
                try:
                    return await handler(request)
                except Exception as exc:  # noqa: BLE001 - every error gets the protocol's shape, never a bare 500
                    failure = _failure(request, exc)
                    response = render(failure)
                    response.headers.update(failure.headers)
                    return response

            return guarded

    return ProtocolRoute


# ---- the served model's names ----------------------------------------------------------------------
def pretrained_tag(info: ModelInfo) -> str:
    """open_clip's tag, or a checkpoint file's stem (a path is no model name)."""
    return Path(info.pretrained).stem if info.weights == "checkpoint" else info.pretrained


def model_id(info: ModelInfo) -> str:
    """immich's naming, `<architecture>__<pretrained tag>` (ViT-B-32__openai): the id every protocol reports."""
    return f"{info.model}__{pretrained_tag(info)}"


def _canonical(name: str) -> str:
    # immich spells open_clip's tags with hyphens (laion2b_s34b_b79k -> laion2b-s34b-b79k); case is noise
    name = name.strip().lower().removeprefix("immich-app/")
    return re.sub(r"[_\-]+", "-", name.replace("__", "/").replace(":", "/"))


def model_aliases(info: ModelInfo) -> list[str]:
    """The names accepted for the served model: the id, `<arch>/<tag>`, `<arch>:<tag>` and `<arch>` alone."""
    tag = pretrained_tag(info)
    return [model_id(info), f"{info.model}/{tag}", f"{info.model}:{tag}", info.model]


def names_served_model(name: str, info: ModelInfo) -> bool:
    return _canonical(name) in {_canonical(alias) for alias in model_aliases(info)}


# ---- inputs, through the service's own decoder and encoders -----------------------------------------
URL_PATTERN = re.compile(r"^[a-z][a-z0-9+.\-]*://", re.IGNORECASE)


def _refuse_urls(items: Sequence[str | bytes], field_name: str) -> None:
    for index, item in enumerate(items):
        if isinstance(item, str) and URL_PATTERN.match(item.strip()):
            # No server-side fetching: a URL here would let any caller make the server request any address.
            raise ClipFilterError(
                "url_not_allowed",
                f"`{field_name}[{index}]` is a URL; send the image as base64 or a data URI.",
                400,
                param=f"{field_name}[{index}]",
            )


async def prepare_all(
    service: ModelService, items: Sequence[str | bytes], field_name: str
) -> list[np.ndarray | Image.Image]:
    """The images as model input through the service's bounded decoder (`ModelService.decode_images`: the request
    pixel budget and decode admission apply, as on the native routes, and the pixels are the same); the first
    bad image fails the request, as Weaviate and OpenAI clients need one vector per input."""
    _refuse_urls(items, field_name)
    ready: list[np.ndarray | Image.Image] = []
    for index, result in enumerate(await service.decode_images(list(items))):
        if isinstance(result, ClipFilterError):
            result.message = f"`{field_name}[{index}]`: {result.message}"
            result.details.setdefault("param", f"{field_name}[{index}]")
            raise result
        ready.append(result)
    return ready


def check_count(count: int, limit: int, what: str) -> None:
    if count > limit:
        raise ClipFilterError(
            f"too_many_{what}", f"Too many {what}: {count}; at most {limit} per request.", 413, limit=limit
        )


def weights_note(service: ModelService) -> dict[str, Any]:
    """What every protocol's model description carries: random weights are never passed off as a model."""
    info = service.info
    note: dict[str, Any] = {"weights": info.weights}
    if info.weights == "random":
        note["warning"] = "random weights: the vectors carry no meaning (CLIP_PRETRAINED=random)"
    return note
