"""All configuration, read once from the environment (and an optional `.env` file).

Every setting has exactly one environment variable, named in `validation_alias`.
The README's settings table is generated from this class by hand: keep them in step.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MB = 1024 * 1024


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

    # --- dynamic batching --------------------------------------------------------------------
    max_batch_wait_ms: float = Field(5.0, ge=0, le=1000, validation_alias="CLIP_MAX_BATCH_WAIT_MS")
    max_queue: int = Field(256, ge=1, validation_alias="CLIP_MAX_QUEUE")
    decode_workers: int = Field(2, ge=1, le=64, validation_alias="CLIP_DECODE_WORKERS")

    # --- server -------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", validation_alias="CLIP_FILTER_HOST")
    port: int = Field(5000, ge=0, le=65535, validation_alias="CLIP_FILTER_PORT")
    cors_origins: str = Field("*", validation_alias="CLIP_FILTER_CORS_ORIGINS")
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

    # --- collections --------------------------------------------------------------------------
    data_dir: Path = Field(default_factory=_default_data_dir, validation_alias="CLIP_FILTER_DATA_DIR")
    # Colon-separated folders the server may ingest from (POST /collections/{name}/jobs with a path).
    ingest_roots: str = Field("", validation_alias="CLIP_FILTER_INGEST_ROOTS")
    # Collections at least this large use the approximate (FAISS IVF-Flat) index; smaller ones use exact search.
    ann_min_items: int = Field(50_000, ge=1, validation_alias="CLIP_FILTER_ANN_MIN_ITEMS")
    thumbnail_size: int = Field(256, ge=16, le=2048, validation_alias="CLIP_FILTER_THUMBNAIL_SIZE")

    # --- collections on PostgreSQL + pgvector (collections/pg_store.py, docs/postgresql.md) ------------
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

    @property
    def ingest_root_paths(self) -> list[Path]:
        return [Path(p).resolve() for p in self.ingest_roots.split(":") if p.strip()]

    @property
    def is_random(self) -> bool:
        return self.pretrained.strip().lower() == "random"


@lru_cache
def get_settings() -> Settings:
    return Settings()
