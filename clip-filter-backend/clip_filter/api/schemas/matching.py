"""Request and response models of the matching and embedding routes.

The request models document the bodies (the routes parse them by hand, see api/inputs.py, to keep their
error codes); the response models are the routes' `response_model`s. Limits (how many images, texts,
characters) are settings, reported by GET /info under `limits`.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from clip_filter.api.schemas.common import ErrorDetail, ModelSummary

_IMAGE = "base64 of the image file, or a data: URI"


# ---- requests ------------------------------------------------------------------------------------
class OriginalMatchRequest(BaseModel):
    """The original request: one image, two captions (answered with `best_match` at the top level)."""

    image_base64: str = Field(description=_IMAGE)
    text_input1: str
    text_input2: str


class MatchRequest(BaseModel):
    """Many images (or one in `image_base64`) against many captions."""

    images: list[str] | None = Field(None, description=f"Images, each {_IMAGE}.")
    image_base64: str | None = Field(None, description=f"One image, {_IMAGE} (when `images` is absent).")
    texts: list[str] = Field(min_length=1, description="Captions to score every image against.")


class MatchForm(BaseModel):
    """multipart/form-data: repeated `images` file parts and repeated `texts` fields."""

    images: list[bytes] = Field(min_length=1, description="Image files.")
    texts: list[str] = Field(min_length=1, description="Captions.")


class ImagesRequest(BaseModel):
    images: list[str] = Field(min_length=1, description=f"Images, each {_IMAGE}.")


class ImagesForm(BaseModel):
    images: list[bytes] = Field(min_length=1, description="Image files.")


class TextsRequest(BaseModel):
    texts: list[str] = Field(min_length=1)


class TextsForm(BaseModel):
    texts: list[str] = Field(min_length=1, description="Repeated `texts` fields.")


# ---- responses -----------------------------------------------------------------------------------
class _Scored(BaseModel):
    model: ModelSummary
    weights: str
    texts: list[str]
    truncated: list[bool] = Field(description="Per caption: longer than the model's context, so cut.")


class MatchResult(BaseModel):
    """One image: its scores against every caption, or its `error` (the other images are still scored)."""

    index: int
    filename: str | None
    error: ErrorDetail | None = None
    best_match: str | None = None
    best_index: int | None = Field(None, description="Ties go to the lowest caption index.")
    scores: list[float] | None = Field(None, description="Cosine similarity per caption.")
    probabilities: list[float] | None = Field(None, description="Softmax of logit_scale x cosine over the captions.")
    clip_score: float | None = Field(None, description="2.5 x max(best cosine, 0).")


class BestMatchResponse(_Scored):
    results: list[MatchResult]
    best_match: str | None = Field(None, description="Only when exactly one image was sent and it decoded.")


class SimilarityResponse(_Scored):
    logit_scale: float
    matrix: list[list[float] | None] = Field(description="Cosines, images x captions; null for an image that failed.")
    probabilities: list[list[float] | None]
    errors: list[ErrorDetail | None]


class ImageEmbeddingsResponse(BaseModel):
    model: ModelSummary
    weights: str
    dim: int
    embeddings: list[list[float] | None] = Field(description="L2-normalised; null where `errors` has the reason.")
    errors: list[ErrorDetail | None]


class TextEmbeddingsResponse(BaseModel):
    model: ModelSummary
    weights: str
    dim: int
    embeddings: list[list[float]] = Field(description="L2-normalised, one per caption.")
    truncated: list[bool]
