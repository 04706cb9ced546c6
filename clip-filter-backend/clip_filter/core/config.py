"""All configuration, read once from the environment (and an optional `.env` file).

Every setting has exactly one environment variable, named in `validation_alias`.
The README's settings table lists every field (env name, default): tests/unit/test_readme.py keeps them in step.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from clip_filter.images import ImageLimits

MB = 1024 * 1024
PROTOCOLS = ("openai", "weaviate", "immich")  # the wire protocols CLIP_FILTER_PROTOCOLS may name


def _default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "clip-filter"


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "clip-filter" / "models"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    # --- model -----------------------------------------------------------------------------
    model_name: str = Field("ViT-B-32", validation_alias="CLIP_MODEL")
    # An open_clip pretrained tag (e.g. "openai"), a path to a local checkpoint, or "random".
    pretrained: str = Field("openai", validation_alias="CLIP_PRETRAINED")
    checkpoint_sha256: str | None = Field(None, validation_alias="CLIP_CHECKPOINT_SHA256")
    device: str = Field("auto", validation_alias="CLIP_DEVICE")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", validation_alias="CLIP_PRECISION")
    batch_size: int = Field(32, ge=1, le=1024, validation_alias="CLIP_BATCH_SIZE")
    cache_dir: Path = Field(default_factory=_default_cache_dir, validation_alias="CLIP_CACHE_DIR")
    random_seed: int = Field(0, validation_alias="CLIP_RANDOM_SEED")
    torch_threads: int = Field(0, ge=0, validation_alias="CLIP_TORCH_THREADS")  # 0: torch's default
    text_cache_size: int = Field(4096, ge=0, validation_alias="CLIP_TEXT_CACHE_SIZE")
    # Words whose BPE the tokenizer remembers (open_clip's own memo grows without bound; this one is an LRU).
    tokenizer_cache_size: int = Field(20_000, ge=0, validation_alias="CLIP_TOKENIZER_CACHE_SIZE")

    # --- dynamic batching --------------------------------------------------------------------
    max_batch_wait_ms: float = Field(5.0, ge=0, le=1000, validation_alias="CLIP_MAX_BATCH_WAIT_MS")
    max_queue: int = Field(256, ge=1, validation_alias="CLIP_MAX_QUEUE")
    decode_workers: int = Field(2, ge=1, le=64, validation_alias="CLIP_DECODE_WORKERS")

    # --- GPU path (issue 13 item 6: ml/encoder.py, ml/batcher.py, ml/gpu_decode.py) ----------------------
    # The next batch staged (stacked in pinned memory, copied on a side stream) while the current one runs:
    # "auto" turns it on for a CUDA model, where the copy overlaps the forward pass; "on" / "off" force it.
    prefetch_batches: Literal["auto", "on", "off"] = Field("auto", validation_alias="CLIP_PREFETCH_BATCHES")
    # JPEG request images decoded on the GPU (nvJPEG via torchvision) and resized there; CUDA only (refused at
    # start-up otherwise). Pixels differ slightly from the CPU path's (docs/benchmarks-pipeline.md, "GPU").
    gpu_jpeg: bool = Field(False, validation_alias="CLIP_FILTER_GPU_JPEG")

    # --- server -------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", validation_alias="CLIP_FILTER_HOST")
    port: int = Field(5000, ge=0, le=65535, validation_alias="CLIP_FILTER_PORT")
    # Comma-separated origins allowed to call the API from other web pages (CORS); empty: none (the UI is
    # same-origin). See the access-control block below.
    cors_origins: str = Field("", validation_alias="CLIP_FILTER_CORS_ORIGINS")
    # Built web UI served at "/" when present (run.sh builds it there).
    ui_dir: Path | None = Field(None, validation_alias="CLIP_FILTER_UI_DIR")
    log_level: str = Field("info", validation_alias="CLIP_FILTER_LOG_LEVEL")

    # --- request limits -----------------------------------------------------------------------
    max_image_bytes: int = Field(25 * MB, ge=1, validation_alias="CLIP_FILTER_MAX_IMAGE_BYTES")
    max_image_pixels: int = Field(50_000_000, ge=1, validation_alias="CLIP_FILTER_MAX_IMAGE_PIXELS")
    max_request_bytes: int = Field(100 * MB, ge=1, validation_alias="CLIP_FILTER_MAX_REQUEST_BYTES")
    max_images_per_request: int = Field(64, ge=1, validation_alias="CLIP_FILTER_MAX_IMAGES")
    max_texts_per_request: int = Field(256, ge=1, validation_alias="CLIP_FILTER_MAX_TEXTS")
    max_text_chars: int = Field(10_000, ge=1, validation_alias="CLIP_FILTER_MAX_TEXT_CHARS")

    # --- request parsing (api area: JSON bodies are pre-scanned and parsed within these budgets) -------
    # Values in one JSON body (array items + object members, counted from its separators): 413 beyond.
    max_json_elements: int = Field(1_000_000, ge=16, validation_alias="CLIP_FILTER_MAX_JSON_ELEMENTS")
    # Nesting depth of arrays/objects in one JSON body: 400 beyond (Python's parser would hit its recursion limit).
    max_json_depth: int = Field(64, ge=2, le=10_000, validation_alias="CLIP_FILTER_MAX_JSON_DEPTH")
    # --- decoding pipeline: bounded, reduced-scale decoding; decode worker processes (ml/decode_pool.py) ----
    # Decoded pixels one request may need (summed over its images, from their headers, before decoding).
    max_request_pixels: int = Field(256_000_000, ge=1, validation_alias="CLIP_FILTER_MAX_REQUEST_PIXELS")
    # Decoded pixels admitted for decoding at once, process-wide; a request beyond gets 429 + Retry-After.
    max_decoding_pixels: int = Field(512_000_000, ge=1, validation_alias="CLIP_FILTER_MAX_DECODING_PIXELS")
    # JPEG decoded at 1/2, 1/4 or 1/8 scale (libjpeg DCT scaling) down to twice the model's input, then resized.
    jpeg_draft: bool = Field(True, validation_alias="CLIP_FILTER_JPEG_DRAFT")
    # Other formats box-reduced by an integer factor right after decoding, down to twice the model's input.
    reduce_large_images: bool = Field(True, validation_alias="CLIP_FILTER_REDUCE_LARGE_IMAGES")
    # Only the part of an image the centre crop keeps is resized (not bit-identical to open_clip: ml/pixels.py).
    crop_first_resize: bool = Field(True, validation_alias="CLIP_FILTER_CROP_FIRST_RESIZE")
    # 0: request images are decoded on the CLIP_DECODE_WORKERS threads; N: in N worker processes.
    decode_processes: int = Field(0, ge=0, le=64, validation_alias="CLIP_FILTER_DECODE_PROCESSES")
    # CLIP_PRETRAINED=instant-test (a test-only encoder returning fixed vectors, for pipeline benchmarks)
    # is refused unless this is set.
    allow_test_encoder: bool = Field(False, validation_alias="CLIP_FILTER_ALLOW_TEST_ENCODER")

    # --- collections --------------------------------------------------------------------------
    data_dir: Path = Field(default_factory=_default_data_dir, validation_alias="CLIP_FILTER_DATA_DIR")
    # Colon-separated folders the server may ingest from (POST /collections/{name}/jobs with a path).
    ingest_roots: str = Field("", validation_alias="CLIP_FILTER_INGEST_ROOTS")
    # Collections at least this large use the approximate (FAISS IVF-Flat) index; smaller ones use exact search.
    ann_min_items: int = Field(50_000, ge=1, validation_alias="CLIP_FILTER_ANN_MIN_ITEMS")
    thumbnail_size: int = Field(256, ge=16, le=2048, validation_alias="CLIP_FILTER_THUMBNAIL_SIZE")

    # --- abuse controls and observability (issue 11: rate limits, logs) -------------------------
    # Rate limits per API key (per client address without one), in the `limits` notation: "600/minute",
    # several joined by ";" ("20/second;600/minute"); empty turns that limit off. Model routes: matching,
    # similarity, embeddings, collection search and projection, the protocol adapters. Writes: every other
    # POST/PUT/PATCH/DELETE.
    rate_limit_model: str = Field("", validation_alias="CLIP_FILTER_RATE_LIMIT_MODEL")
    rate_limit_write: str = Field("", validation_alias="CLIP_FILTER_RATE_LIMIT_WRITE")
    rate_limit_strategy: Literal["moving-window", "fixed-window"] = Field(
        "moving-window", validation_alias="CLIP_FILTER_RATE_LIMIT_STRATEGY"
    )
    log_format: Literal["text", "json"] = Field("text", validation_alias="CLIP_FILTER_LOG_FORMAT")

    @field_validator("rate_limit_model", "rate_limit_write")
    @classmethod
    def _rate_limit_parses(cls, value: str) -> str:
        from limits import parse_many

        value = value.strip()
        if value:
            try:
                parse_many(value)
            except ValueError as exc:
                raise ValueError(f"{value!r} is not a rate limit such as '600/minute' or '10/second;600/hour'") from exc
        return value

    # --- upload admission (issue 11: /health under an upload flood; api/admission.py) ----------------------
    # Uploads (POST /collections/{name}/items, multipart job uploads) read and processed at once; more wait,
    # without their bodies read, up to the backlog; beyond it 429 `overloaded` + Retry-After before the body is read.
    upload_concurrency: int = Field(2, ge=1, le=64, validation_alias="CLIP_FILTER_UPLOAD_CONCURRENCY")
    upload_backlog: int = Field(8, ge=0, le=10_000, validation_alias="CLIP_FILTER_UPLOAD_BACKLOG")

    # --- collections: durability and limits (issue 11: items 4 and 5; docs/architecture.md) -------
    # A stored text (JSON `texts`, a text file) over this many UTF-8 bytes is refused (413 text_too_long).
    max_stored_text_bytes: int = Field(1 * MB, ge=1, validation_alias="CLIP_FILTER_MAX_STORED_TEXT_BYTES")
    # Listings, search hits and add results show this many characters of a text (`text_truncated: true`
    # beyond); `?full_text=true` or GET of the one item gives all of it.
    text_preview_chars: int = Field(500, ge=0, validation_alias="CLIP_FILTER_TEXT_PREVIEW_CHARS")
    # SQLite reader connections shared by all threads (a bounded pool, closed at shutdown).
    db_readers: int = Field(8, ge=1, le=256, validation_alias="CLIP_FILTER_DB_READERS")
    # Garbage collection removes unreferenced files only when they are older than this.
    gc_grace_s: float = Field(600.0, ge=0, validation_alias="CLIP_FILTER_GC_GRACE_S")
    # Collection maps (with their fitted UMAP reducers) kept in memory, least recently used dropped first.
    map_cache_size: int = Field(8, ge=1, le=1024, validation_alias="CLIP_FILTER_MAP_CACHE_SIZE")
    # `clip-filter import` of a tar: at most this many members and bytes extracted (into the data folder).
    import_max_members: int = Field(1_100_000, ge=1, validation_alias="CLIP_FILTER_IMPORT_MAX_MEMBERS")
    import_max_bytes: int = Field(64 * 1024 * MB, ge=1, validation_alias="CLIP_FILTER_IMPORT_MAX_BYTES")

    # --- protocol adapters (OpenAI embeddings, Weaviate multi2vec-clip, immich ML; docs/protocols.md) ----
    # Comma list of the wire protocols to serve beside the native API; empty or "none" turns all off.
    protocols: str = Field("openai,weaviate,immich", validation_alias="CLIP_FILTER_PROTOCOLS")

    # --- access control and browser safety (docs/security.md) --------------------------------------------
    # auto: API keys required whenever the server binds anything but loopback; keys: always; off: never.
    auth: Literal["auto", "keys", "off"] = Field("auto", validation_alias="CLIP_FILTER_AUTH")
    # An admin key registered at startup (compose: a secret file). At least 32 characters.
    bootstrap_key: str | None = Field(None, validation_alias="CLIP_FILTER_BOOTSTRAP_KEY", repr=False)
    bootstrap_key_file: Path | None = Field(None, validation_alias="CLIP_FILTER_BOOTSTRAP_KEY_FILE")
    # Comma-separated Host names (with or without :port) the server answers; empty: loopback names and the bind
    # address (any host on a wildcard bind with keys required); "*": any.
    allowed_hosts: str = Field("", validation_alias="CLIP_FILTER_ALLOWED_HOSTS")

    @field_validator("auth", mode="before")
    @classmethod
    def _auth_lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @property
    def binds_loopback(self) -> bool:
        from clip_filter.core.netaddr import is_loopback_host

        return is_loopback_host(self.host)

    @property
    def auth_required(self) -> bool:
        """Whether requests to protected routes need an API key (CLIP_FILTER_AUTH resolved against the bind)."""
        return self.auth == "keys" or (self.auth == "auto" and not self.binds_loopback)

    # --- collections on PostgreSQL + pgvector (collections/store/postgres.py, docs/postgresql.md) ------------
    # postgresql://user:password@host:5432/db selects the PostgreSQL store; unset: SQLite in the data dir.
    # Originals, thumbnails and job spools stay in CLIP_FILTER_DATA_DIR (a volume all replicas share).
    database_url: str | None = Field(None, validation_alias="CLIP_FILTER_DATABASE_URL")
    # Optional streaming read replica for searches and listings (they may lag the primary a little).
    database_read_url: str | None = Field(None, validation_alias="CLIP_FILTER_DATABASE_READ_URL")
    database_pool_size: int = Field(10, ge=1, le=1000, validation_alias="CLIP_FILTER_DATABASE_POOL_SIZE")
    # The HNSW index per collection: on halfvec (half the size) or full-precision vector; results are
    # always re-scored with the full-precision vectors.
    pg_index_type: Literal["halfvec", "vector"] = Field("halfvec", validation_alias="CLIP_FILTER_PG_INDEX_TYPE")
    pg_hnsw_m: int = Field(16, ge=2, le=100, validation_alias="CLIP_FILTER_PG_HNSW_M")
    pg_hnsw_ef_construction: int = Field(64, ge=4, le=1000, validation_alias="CLIP_FILTER_PG_HNSW_EF_CONSTRUCTION")
    pg_ef_search: int = Field(100, ge=1, le=1000, validation_alias="CLIP_FILTER_PG_EF_SEARCH")
    # Collections, or filtered subsets, of at most this many rows are searched exactly (no index); above it a
    # filtered HNSW scan is faster (bench/search_bench.py --postgres: 10k of 100k rows exact 63 ms, HNSW 6 ms).
    pg_exact_max_rows: int = Field(5_000, ge=0, validation_alias="CLIP_FILTER_PG_EXACT_MAX_ROWS")
    # How many index tuples a filtered HNSW scan may visit before it falls back to exact search.
    pg_max_scan_tuples: int = Field(20_000, ge=1, validation_alias="CLIP_FILTER_PG_MAX_SCAN_TUPLES")
    # A replica's claim on a bulk job; another replica takes the job over this long after the holder died.
    pg_job_lease_s: float = Field(30.0, gt=0, le=3600, validation_alias="CLIP_FILTER_PG_JOB_LEASE_S")

    @field_validator("database_url", "database_read_url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("CLIP_FILTER_DATABASE_URL must start with postgresql:// (or be unset for SQLite)")
        return value.strip()

    @field_validator("device")
    @classmethod
    def _device_known(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in {"auto", "cpu", "mps"} and not value.startswith("cuda"):
            raise ValueError("CLIP_DEVICE must be auto, cpu, mps, cuda or cuda:N")
        return value

    @field_validator("protocols")
    @classmethod
    def _protocols_known(cls, value: str) -> str:
        names = [n.strip().lower() for n in value.split(",") if n.strip()]
        if names == ["none"]:
            return ""
        unknown = sorted(set(names) - set(PROTOCOLS))
        if unknown:
            raise ValueError(f"CLIP_FILTER_PROTOCOLS: unknown {', '.join(unknown)}; use {','.join(PROTOCOLS)} or none")
        return ",".join(n for n in PROTOCOLS if n in names)

    @property
    def protocol_set(self) -> frozenset[str]:
        return frozenset(n for n in self.protocols.split(",") if n)

    @property
    def ingest_root_paths(self) -> list[Path]:
        # os.pathsep (";" on Windows), so "C:\\photos" stays one root (review L7).
        return [Path(p).resolve() for p in self.ingest_roots.split(os.pathsep) if p.strip()]

    def image_limits(self, accepted_bytes: int = 0, accepted_pixels: int = 0) -> ImageLimits:
        """The one place ImageLimits is built from settings.

        `accepted_*`: an original stored under earlier (possibly higher) limits is let through when it is
        read back (thumbnails, reindex), so lowering a limit never makes stored items unreadable.
        """
        from clip_filter.images import ImageLimits  # here, not at the top: config stays free of PIL

        return ImageLimits(
            max_bytes=max(self.max_image_bytes, accepted_bytes), max_pixels=max(self.max_image_pixels, accepted_pixels)
        )

    @property
    def is_random(self) -> bool:
        return self.pretrained.strip().lower() == "random"


@lru_cache
def get_settings() -> Settings:
    return Settings()
