"""Adding things to a collection: files or texts in, one committed batch of items out.

One pipeline serves the HTTP upload, bulk jobs and the CLI:
read -> hash -> skip content already present -> decode -> write originals | embed -> one transaction.
The part before `|` (`prepare_batch`) needs no model, so bulk jobs overlap it with the previous batch's
embedding (`commit_batch`).
A bad file becomes an error in its own slot; the rest of the batch goes on.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from clip_filter.collections.embedder import Embedder, model_key
from clip_filter.collections.roots import read_regular_file
from clip_filter.collections.store import CollectionRecord, CollectionStore, JobProgress, NewItem
from clip_filter.core.errors import ClipFilterError
from clip_filter.images import DecodeTarget, ImageLimits, decode_image_sized, sniff_image_mimetype

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {
    ".jpg",
    ".jpeg",
    ".jpe",
    ".jfif",
    ".png",
    ".apng",
    ".webp",
    ".gif",
    ".bmp",
    ".dib",
    ".tif",
    ".tiff",
    ".heic",
    ".heif",
    ".avif",
}
TEXT_EXTENSIONS = {".txt", ".text", ".md", ".markdown"}
MIME_EXTENSIONS = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/apng": ".png",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "image/bmp": ".bmp",
    "image/tiff": ".tif",
    "image/heic": ".heic",
    "image/heif": ".heif",
    "image/avif": ".avif",
}


def is_supported_filename(name: str) -> bool:
    """Whether a folder walk should pick this file up (explicitly named files are always tried)."""
    suffix = Path(name).suffix.lower()
    return suffix in IMAGE_EXTENSIONS or suffix in TEXT_EXTENSIONS


@dataclass(frozen=True)
class IngestLimits:
    image: ImageLimits
    max_text_chars: int  # a text longer than this is stored whole but embedded from its start
    max_stored_text_bytes: int = 1024 * 1024  # a longer text is refused (413 text_too_long)

    @classmethod
    def from_settings(cls, settings: Any) -> IngestLimits:
        return cls(
            ImageLimits(max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels),
            settings.max_text_chars,
            settings.max_stored_text_bytes,
        )


def text_too_long(size: int, limit: int) -> ClipFilterError:
    return ClipFilterError(
        "text_too_long",
        f"The text has {size} bytes of UTF-8; at most {limit} are stored (CLIP_FILTER_MAX_STORED_TEXT_BYTES).",
        413,
        limit=limit,
    )


@dataclass
class Source:
    """One thing to add: file bytes, a file on disk (read lazily), or a text."""

    filename: str | None = None
    data: bytes | None = None
    path: Path | None = None
    text: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    content_type: str | None = None
    error: ClipFilterError | None = None  # refused before reading (e.g. a path outside the allowed folders)
    root: Path | None = None  # an ingest root: `path` is opened beneath it, never through a symlink


@dataclass
class Outcome:
    index: int
    filename: str | None
    status: str  # "added" | "duplicate" | "error"
    item_id: int | None = None
    error: ClipFilterError | None = None


@dataclass
class _Prepared:
    index: int
    kind: str
    sha256: str
    mimetype: str
    size: int
    filename: str | None
    metadata: dict[str, Any]
    data: bytes | None = None
    text: str | None = None
    image: Image.Image | None = None  # decoded for the model: reduced when large (the model's DecodeTarget)
    original: str | None = None  # stored original's path, once written
    width: int | None = None  # the original's upright size (the decoded image may be smaller)
    height: int | None = None


@dataclass
class PreparedBatch:
    """A batch after `prepare_batch`: its outcomes so far (errors, duplicates) and the items to embed."""

    collection: CollectionRecord
    size: int
    outcomes: list[Outcome | None]
    prepared: list[_Prepared]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read(source: Source, limits: IngestLimits) -> bytes:
    if source.data is not None:
        return source.data
    assert source.path is not None
    # Regular files only (a FIFO would block forever), at most the byte limit, read from one descriptor;
    # files of the ingest roots are opened beneath their root without following links (roots.py).
    return read_regular_file(source.path, limits.image.max_bytes, source.root)


def _looks_like_text(source: Source) -> bool:
    content_type = (source.content_type or "").split(";")[0].strip().lower()
    suffix = Path(source.filename or "").suffix.lower()
    return content_type.startswith("text/") or suffix in TEXT_EXTENSIONS


def _text_mimetype(filename: str | None) -> str:
    return "text/markdown" if Path(filename or "").suffix.lower() in {".md", ".markdown"} else "text/plain"


def decode_text(data: bytes) -> str:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ClipFilterError("invalid_text", f"The text file is not UTF-8 (byte {exc.start}).", 422) from None
    if "\x00" in text:
        raise ClipFilterError("invalid_text", "The text file contains NUL characters; it looks binary.", 422)
    return text


def check_text(text: str) -> str:
    if not text.strip():
        raise ClipFilterError("empty_text", "The text is empty.", 422)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates (possible in JSON) cannot be stored or hashed
        raise ClipFilterError("invalid_text", "The text is not valid Unicode (lone surrogate).", 422) from None
    return text


def prepare(
    index: int, source: Source, limits: IngestLimits, target: DecodeTarget | None = None, sha256: str | None = None
) -> _Prepared:
    """Read, hash and decode one source (raises ClipFilterError for a bad one).

    `target`: the model's DecodeTarget: a large image is decoded no larger than the model needs (JPEG draft,
    integer reduction), which gives the pixels the matching routes compute for the same bytes. `sha256`: the
    hash of `source.data` when the caller has it already (the duplicate check), so an image is hashed once
    (a second SHA-256 was 4-10 % of this function's CPU per image)."""
    if source.text is not None:
        if len(source.text) > limits.max_stored_text_bytes:  # at least that many bytes: no need to encode
            raise text_too_long(len(source.text), limits.max_stored_text_bytes)
        text = check_text(source.text)
        encoded = text.encode("utf-8")
        if len(encoded) > limits.max_stored_text_bytes:
            raise text_too_long(len(encoded), limits.max_stored_text_bytes)
        return _Prepared(
            index, "text", sha256_hex(encoded), "text/plain", len(encoded), source.filename, source.metadata, text=text
        )
    data = _read(source, limits)
    if not data:
        raise ClipFilterError("empty_file", "The file is empty.", 400)
    image_type = sniff_image_mimetype(data)
    if image_type is None and _looks_like_text(source):
        if len(data) > limits.max_stored_text_bytes + 3:  # + a UTF-8 byte order mark
            raise text_too_long(len(data), limits.max_stored_text_bytes)
        text = check_text(decode_text(data))
        if len(text.encode("utf-8")) > limits.max_stored_text_bytes:
            raise text_too_long(len(text.encode("utf-8")), limits.max_stored_text_bytes)
        # Texts hash as their UTF-8, so the same text added as a file or as JSON is one item.
        encoded = text.encode("utf-8")
        return _Prepared(
            index,
            "text",
            sha256_hex(encoded),
            _text_mimetype(source.filename),
            len(encoded),
            source.filename,
            source.metadata,
            text=text,
        )
    image, (width, height) = decode_image_sized(data, limits.image, target)  # the precise error for non-images too
    return _Prepared(
        index,
        "image",
        sha256 if sha256 is not None and data is source.data else sha256_hex(data),
        image_type or "application/octet-stream",
        len(data),
        source.filename,
        source.metadata,
        data=data,
        image=image,
        width=width,
        height=height,
    )


def failure_entry(filename: str | None, error: ClipFilterError) -> dict[str, Any]:
    return {"filename": filename, "code": error.code, "message": error.message}


class Ingestor:
    def __init__(
        self,
        store: CollectionStore,
        limits: IngestLimits,
        decode_target: Callable[[], DecodeTarget | None] = lambda: None,
    ) -> None:
        self.store = store
        self.limits = limits
        # The loaded model's DecodeTarget (collections/embedder.decode_target_of), asked once per batch: the
        # preparation of a batch runs before the model is asked for anything else.
        self.decode_target = decode_target

    def ingest(
        self,
        collection: CollectionRecord,
        sources: list[Source],
        embedder: Embedder,
        job_id: str | None = None,
    ) -> list[Outcome]:
        """Add a batch; everything that is added commits in one transaction (with the job's progress)."""
        return self.commit_batch(self.prepare_batch(collection, sources), embedder, job_id)

    def prepare_batch(self, collection: CollectionRecord, sources: list[Source]) -> PreparedBatch:
        """Everything before the model: read, hash, skip known content, decode, store originals.

        Needs no model, so bulk jobs run it for the next batch while the model embeds this one.
        """
        batch = PreparedBatch(collection, len(sources), [None] * len(sources), [])
        target = self.decode_target()
        # Hash first: content already in the collection is never decoded or embedded again (resumable ingest).
        for index, source in enumerate(sources):
            try:
                if source.error is not None:
                    raise source.error
                if source.text is None and source.data is None and source.path is not None:
                    source.data = _read(source, self.limits)
                prepared_item = self._prepare_after_dedup(index, source, collection, target)
            except ClipFilterError as error:
                batch.outcomes[index] = Outcome(index, source.filename, "error", error=error)
                continue
            if isinstance(prepared_item, Outcome):
                batch.outcomes[index] = prepared_item
            else:
                batch.prepared.append(prepared_item)
        try:
            # Originals are written (and fsynced) before the transaction that will reference them.
            for item in batch.prepared:
                if item.kind == "image":
                    extension = MIME_EXTENSIONS.get(item.mimetype, "")
                    assert item.data is not None  # _prepare keeps an image item's bytes
                    try:
                        item.original = self.store.files.write_original(
                            collection.id, item.sha256, extension, item.data
                        )
                    except OSError as exc:
                        raise ClipFilterError("storage_failed", f"Storing the original failed: {exc}", 507) from exc
        except BaseException:
            self.discard(batch)
            raise
        return batch

    def commit_batch(self, batch: PreparedBatch, embedder: Embedder, job_id: str | None = None) -> list[Outcome]:
        """Embed what `prepare_batch` kept and commit it, with the job's progress, in one transaction."""
        outcomes = batch.outcomes
        new_items: list[NewItem] = []
        model = None
        try:
            if batch.prepared:
                info = embedder.info
                model = model_key(info)
                batch.collection.check_model(*model)
                new_items = self._embed(batch.prepared, embedder)
            progress = None
            if job_id is not None:
                errors = [o for o in outcomes if o is not None and o.status == "error"]
                progress = JobProgress(
                    job_id,
                    done=batch.size,
                    failed=len(errors),
                    duplicates=sum(1 for o in outcomes if o is not None and o.status == "duplicate"),
                    failures=[failure_entry(o.filename, o.error) for o in errors if o.error is not None],
                )
        except BaseException:
            self.discard(batch)
            raise
        finally:
            for item in batch.prepared:
                item.image = None  # free decoded pixels promptly in long jobs
        # From here the store owns the originals: it removes them only if its transaction did not commit (a
        # failure after the COMMIT must not delete what committed rows reference: finding M9).
        # Nothing to write and no job to count for: no transaction (and no fsync) at all.
        results = self.store.add_items(batch.collection.id, new_items, model, progress) if new_items or progress else []
        for item, (status, item_id) in zip(batch.prepared, results, strict=False):
            outcomes[item.index] = Outcome(item.index, item.filename, status, item_id)
        return [outcome for outcome in outcomes if outcome is not None]

    def discard(self, batch: PreparedBatch) -> None:
        """Remove the originals a batch wrote when it will not be committed (an orphan otherwise)."""
        self.store.files.remove_files([item.original for item in batch.prepared])
        for item in batch.prepared:
            item.original = None

    def _prepare_after_dedup(
        self, index: int, source: Source, collection: CollectionRecord, target: DecodeTarget | None
    ) -> _Prepared | Outcome:
        checked = None  # a hash already looked up: the store is asked once per item (a round trip on PostgreSQL)
        if source.data is not None and sniff_image_mimetype(source.data) is not None:
            checked = sha256_hex(source.data)
            known = self.store.known_hashes(collection.id, [checked])
            if checked in known:
                return Outcome(index, source.filename, "duplicate", known[checked])
        prepared_item = prepare(index, source, self.limits, target, sha256=checked)
        if prepared_item.sha256 != checked:
            known = self.store.known_hashes(collection.id, [prepared_item.sha256])
            if prepared_item.sha256 in known:
                return Outcome(index, source.filename, "duplicate", known[prepared_item.sha256])
        return prepared_item

    def _embed(self, prepared: list[_Prepared], embedder: Embedder) -> list[NewItem]:
        images = [p for p in prepared if p.kind == "image"]
        texts = [p for p in prepared if p.kind == "text"]
        vectors: dict[int, Any] = {}
        truncated: dict[int, bool] = {}
        # _prepare gives every image item its decoded image and every text item its text.
        pixels = [p.image for p in images if p.image is not None]
        captions = [p.text or "" for p in texts]
        if images:
            for p, vector in zip(images, embedder.encode_images(pixels), strict=True):
                vectors[p.index] = vector
                truncated[p.index] = False
        if texts:
            cut = self.limits.max_text_chars
            batch = embedder.encode_texts([text[:cut] for text in captions])
            for p, text, vector, was_cut in zip(texts, captions, batch.embeddings, batch.truncated, strict=True):
                vectors[p.index] = vector
                truncated[p.index] = bool(was_cut) or len(text) > cut
        return [
            NewItem(
                kind=p.kind,
                filename=p.filename,
                mimetype=p.mimetype,
                size=p.size,
                sha256=p.sha256,
                metadata=p.metadata,
                embedding=vectors[p.index],
                truncated=truncated[p.index],
                text=p.text,
                original_path=p.original,
                width=p.width,
                height=p.height,
            )
            for p in prepared
        ]
