"""Export and import of a collection in an open, tool-independent format.

A collection export is a folder (or the same folder packed as a .tar / .tar.gz):

    collection.json   {"format": "clip-filter-collection", "format_version": 1, "name", "description",
                       "model": {"name", "pretrained", "dim"}, "item_count", "image_count", "text_count",
                       "created_at", "exported_at", "exported_by", "embeddings": {"file", "dtype", "shape"}}
    items.jsonl       one JSON object per item: {"id", "kind": "image"|"text", "filename", "mimetype", "size",
                       "sha256", "metadata", "truncated", "text", "width", "height", "created_at",
                       "original": "originals/<sha256><ext>" or null (texts)}
    embeddings.npy    float32 (n, dim), L2-normalised, row i belongs to line i of items.jsonl
    originals/        the original image files, named by their sha256

Everything can be read with the standard library and NumPy (`np.load("embeddings.npy")`).

Import checks the whole export before it writes anything: the JSON, the sha256 of every original (and
of every text), that each original is an image, the embeddings' dtype, shape and norms, and that the
dimension matches the target collection. Then it adds the items in batches, skipping content the
target already holds (by sha256), so an interrupted import is resumed by running it again with
`merge=True`. No model is needed: the stored embeddings are used as they are.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal, TypeVar

import numpy as np

from clip_filter import __version__
from clip_filter.collections.ingest import MIME_EXTENSIONS
from clip_filter.collections.store import CollectionRecord, CollectionStore, NewItem
from clip_filter.collections.store.records import utc_now
from clip_filter.collections.validation import validate_metadata, validate_name
from clip_filter.core.errors import ClipFilterError
from clip_filter.images import sniff_image_mimetype

FORMAT = "clip-filter-collection"
FORMAT_VERSION = 1
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
NORM_TOLERANCE = 1e-3
NPY_MAGIC = b"\x93NUMPY"
TEXT_MIMETYPES = ("text/plain", "text/markdown")  # what HTTP uploads store for texts

Progress = Callable[[int], None]  # called with how many items were just handled


def is_tar_path(path: Path) -> bool:
    return path.name.lower().endswith(TAR_SUFFIXES)


def _invalid(message: str, **details: Any) -> ClipFilterError:
    return ClipFilterError("invalid_export", message, 422, **details)


# ---- export ----------------------------------------------------------------------------------------------
@dataclass
class ExportResult:
    path: Path
    items: int
    images: int
    texts: int
    dim: int
    skipped: list[dict[str, Any]] = field(default_factory=list)  # items deleted while exporting


def _write_npy(raw_path: Path, out_path: Path, rows: int, dim: int) -> None:
    """Turn a file of raw little-endian float32 rows into a .npy file (header + the same bytes)."""
    with open(out_path, "wb") as out:
        np.lib.format.write_array_header_1_0(out, {"descr": "<f4", "fortran_order": False, "shape": (rows, dim)})
        with open(raw_path, "rb") as raw:
            shutil.copyfileobj(raw, out, 1 << 20)


def _place(source: Path, target: Path, link: bool) -> None:
    """Copy an original into the export; a hard link when the folder is only staging for a tar
    (an exported folder gets copies: editing them must never touch the collection's files)."""
    if link:
        try:
            os.link(source, target)
            return
        except FileNotFoundError:
            raise
        except OSError:
            pass
    shutil.copyfile(source, target)


def _export_to_folder(
    store: CollectionStore,
    collection: CollectionRecord,
    folder: Path,
    progress: Progress | None,
    link: bool = False,
) -> ExportResult:
    originals = folder / "originals"
    originals.mkdir(parents=True)
    raw_path = folder / ".embeddings.raw"
    rows = images = texts = 0
    dim = int(collection.dim or 0)
    skipped: list[dict[str, Any]] = []
    with open(folder / "items.jsonl", "w", encoding="utf-8") as lines, open(raw_path, "wb") as raw:
        for items, vectors in store.items_with_vectors(collection.id):
            for item, vector in zip(items, vectors, strict=True):
                original = None
                if item.kind == "image":
                    source = store.original_file(item)
                    extension = MIME_EXTENSIONS.get(item.mimetype, "") or (
                        Path(item.original_path or "").suffix.lower()
                    )
                    original = f"originals/{item.sha256}{extension}"
                    try:
                        if source is None:
                            raise FileNotFoundError(item.original_path)
                        _place(source, folder / original, link)
                    except FileNotFoundError:
                        skipped.append({"id": item.id, "filename": item.filename, "reason": "deleted while exporting"})
                        continue
                vector = np.ascontiguousarray(vector, "<f4")
                if not dim:
                    dim = vector.size
                record = {
                    "id": item.id,
                    "kind": item.kind,
                    "filename": item.filename,
                    "mimetype": item.mimetype,
                    "size": item.size,
                    "sha256": item.sha256,
                    "metadata": item.metadata,
                    "truncated": item.truncated,
                    "text": item.text,
                    "width": item.width,
                    "height": item.height,
                    "created_at": item.created_at,
                    "original": original,
                }
                lines.write(json.dumps(record, ensure_ascii=False) + "\n")
                raw.write(vector.tobytes())
                rows += 1
                images += item.kind == "image"
                texts += item.kind == "text"
            if progress is not None:
                progress(len(items))
    _write_npy(raw_path, folder / "embeddings.npy", rows, dim)
    raw_path.unlink()
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": collection.name,
        "description": collection.description,
        "model": {"name": collection.model, "pretrained": collection.pretrained, "dim": dim or collection.dim},
        "item_count": rows,
        "image_count": images,
        "text_count": texts,
        "created_at": collection.created_at,
        "exported_at": utc_now(),
        "exported_by": f"clip-filter {__version__}",
        "embeddings": {"file": "embeddings.npy", "dtype": "float32", "shape": [rows, dim]},
        "items": {"file": "items.jsonl"},
    }
    (folder / "collection.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", "utf-8")
    return ExportResult(folder, rows, images, texts, dim, skipped)


def export_collection(store: CollectionStore, name: str, out: Path, progress: Progress | None = None) -> ExportResult:
    """Write collection `name` to `out`: a new folder, or a .tar/.tar.gz/.tgz file.

    The export is assembled beside `out` and moved into place at the end, so `out` is either
    absent or complete.
    """
    collection = store.get_collection(name)
    out = Path(out)
    if out.exists():
        raise ClipFilterError("export_exists", f"{out} already exists; choose another output path.", 409, path=str(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        folder = work / "export"
        result = _export_to_folder(store, collection, folder, progress, link=is_tar_path(out))
        if is_tar_path(out):
            packed = work / "export.tar"
            mode: Literal["w:gz", "w"] = "w:gz" if out.name.lower().endswith((".gz", ".tgz")) else "w"
            with tarfile.open(packed, mode) as tar:
                # collection.json first, so a streaming reader learns the format before the bulk.
                for name_in_tar in ("collection.json", "items.jsonl", "embeddings.npy", "originals"):
                    tar.add(folder / name_in_tar, arcname=name_in_tar)
            os.replace(packed, out)
        else:
            os.replace(folder, out)
        result.path = out
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---- import ----------------------------------------------------------------------------------------------
@dataclass
class ImportResult:
    name: str
    created: bool
    total: int
    added: int = 0
    duplicates: int = 0
    invalid: list[dict[str, Any]] = field(default_factory=list)  # items skipped (skip_invalid=True)


@dataclass
class _Entry:
    line: int
    record: dict[str, Any]
    original: Path | None
    mimetype: str = "text/plain"  # checked against the bytes: never the export's word alone


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / "collection.json"
    if not path.is_file():
        raise _invalid(f"{folder} is not a collection export: it has no collection.json.")
    try:
        manifest = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise _invalid(f"collection.json cannot be read: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _invalid(f"collection.json is not a {FORMAT} manifest.")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise _invalid(f"Export format version {version!r} is not supported (this clip-filter reads {FORMAT_VERSION}).")
    model = manifest.get("model")
    if not isinstance(model, dict):
        raise _invalid("collection.json has no `model` object.")
    # Without a model and its dimension the vectors could not be checked against the target's: a mixed
    # collection would fail every search.
    if not isinstance(model.get("name"), str) or not model["name"].strip():
        raise _invalid(
            "collection.json names no model (`model.name`); embeddings of an unknown model are not imported."
        )
    if not isinstance(model.get("dim"), int) or isinstance(model.get("dim"), bool) or model["dim"] < 1:
        raise _invalid("collection.json gives no embedding dimension (`model.dim`).")
    if model.get("pretrained") is not None and not isinstance(model.get("pretrained"), str):
        raise _invalid("`model.pretrained` in collection.json must be a string.")
    return manifest


def _sha256_file(path: Path) -> tuple[str, bytes]:
    data = path.read_bytes()
    return hashlib.sha256(data).hexdigest(), data


def _resolve_original(folder: Path, value: Any) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError("an image item needs `original`")
    relative = PurePosixPath(value)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts or relative.parts[0] != "originals":
        raise ValueError(f"`original` {value!r} must be a path inside originals/")
    return folder.joinpath(*relative.parts)


def _check_entry(folder: Path, line_number: int, record: Any) -> _Entry:
    """Validate one items.jsonl record (raises ValueError with the reason)."""
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    kind = record.get("kind")
    sha = record.get("sha256")
    if kind not in ("image", "text"):
        raise ValueError(f"kind {kind!r} is neither 'image' nor 'text'")
    if not isinstance(sha, str) or len(sha) != 64:
        raise ValueError("`sha256` must be 64 hex digits")
    try:
        validate_metadata(record.get("metadata") or {})
    except ClipFilterError as exc:
        raise ValueError(exc.message) from None
    if kind == "text":
        text = record.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ValueError("a text item needs a non-empty `text`")
        if hashlib.sha256(text.encode("utf-8")).hexdigest() != sha:
            raise ValueError("sha256 does not match the text")
        declared = record.get("mimetype")
        if declared is not None and declared not in TEXT_MIMETYPES:
            raise ValueError(f"mimetype {declared!r} of a text item is not one of {', '.join(TEXT_MIMETYPES)}")
        return _Entry(line_number, record, None, declared or "text/plain")
    path = _resolve_original(folder, record.get("original"))
    try:
        digest, data = _sha256_file(path)
    except FileNotFoundError:
        raise ValueError(f"{record.get('original')} is missing") from None
    except OSError as exc:
        raise ValueError(f"{record.get('original')} cannot be read: {exc}") from None
    if digest != sha:
        raise ValueError(f"sha256 of {record.get('original')} is {digest}, items.jsonl says {sha}")
    sniffed = sniff_image_mimetype(data)
    if sniffed is None:
        raise ValueError(f"{record.get('original')} is not an image")
    declared = record.get("mimetype")
    if declared is not None and declared != sniffed:
        raise ValueError(f"mimetype {declared!r} does not match the bytes of {record.get('original')} ({sniffed})")
    return _Entry(line_number, record, path, sniffed)


def _load_entries(folder: Path, progress: Progress | None) -> tuple[list[_Entry | None], list[dict[str, Any]]]:
    """Every line of items.jsonl, checked: (entries, with None for invalid lines; problems)."""
    path = folder / "items.jsonl"
    if not path.is_file():
        raise _invalid("The export has no items.jsonl.")
    entries: list[_Entry | None] = []
    problems: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            record: Any = None
            try:
                record = json.loads(line)
                entries.append(_check_entry(folder, line_number, record))
            except ValueError as exc:  # json.JSONDecodeError is a ValueError too
                entries.append(None)
                filename = record.get("filename") if isinstance(record, dict) else None
                problems.append({"line": line_number, "filename": filename, "reason": str(exc)})
            if progress is not None:
                progress(1)
    return entries, problems


def _load_embeddings(folder: Path, rows: int, dim: int | None) -> np.ndarray:
    path = folder / "embeddings.npy"
    if not path.is_file():
        raise _invalid("The export has no embeddings.npy.")
    with open(path, "rb") as handle:
        magic = handle.read(6)
    if magic != NPY_MAGIC:  # an .npz (zip) or a pickle named .npy
        raise _invalid("embeddings.npy is not a NumPy .npy file (an .npz archive or a pickle is not read).")
    try:
        embeddings = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:  # ValueError: an object (pickled) array
        raise _invalid(f"embeddings.npy cannot be read: {exc}") from None
    if not isinstance(embeddings, np.ndarray):
        raise _invalid("embeddings.npy does not hold one array.")
    if embeddings.dtype != np.float32:
        raise _invalid(f"embeddings.npy holds {embeddings.dtype}, not float32.")
    if embeddings.ndim != 2 or embeddings.shape[0] != rows:
        raise _invalid(f"embeddings.npy has shape {embeddings.shape}; items.jsonl has {rows} items.")
    if rows and dim is not None and embeddings.shape[1] != dim:
        raise _invalid(
            f"embeddings.npy has dimension {embeddings.shape[1]}, collection.json says {dim}.",
            dim=int(embeddings.shape[1]),
            expected_dim=dim,
        )
    for start in range(0, rows, 65536):
        chunk = np.asarray(embeddings[start : start + 65536], np.float32)
        if not np.all(np.isfinite(chunk)):
            raise _invalid("embeddings.npy contains NaN or infinite values.")
        norms = np.linalg.norm(chunk, axis=1)
        bad = np.flatnonzero(np.abs(norms - 1.0) > NORM_TOLERANCE)
        if bad.size:
            raise _invalid(
                f"Row {start + int(bad[0])} of embeddings.npy is not L2-normalised (norm {norms[bad[0]]:.4f})."
            )
    return embeddings


@dataclass(frozen=True)
class TarLimits:
    """What a tar may unpack to (its member headers are counted and summed before anything is extracted)."""

    max_members: int = 1_100_000
    max_bytes: int = 64 * 1024**3


def _checked_members(tar: tarfile.TarFile, path: Path, limits: TarLimits) -> list[tarfile.TarInfo]:
    members: list[tarfile.TarInfo] = []
    total = 0
    for member in tar:  # reads headers one by one: stops at the limit, never lists a huge archive whole
        members.append(member)
        total += max(0, member.size) if member.isfile() else 0
        if len(members) > limits.max_members:
            raise ClipFilterError(
                "export_too_large",
                f"{path} has more than {limits.max_members} members (CLIP_FILTER_IMPORT_MAX_MEMBERS).",
                413,
                limit=limits.max_members,
            )
        if total > limits.max_bytes:
            raise ClipFilterError(
                "export_too_large",
                f"{path} unpacks to more than {limits.max_bytes} bytes (CLIP_FILTER_IMPORT_MAX_BYTES).",
                413,
                limit=limits.max_bytes,
            )
    return members


def _open_export(path: Path, work: Path, limits: TarLimits | None = None) -> Path:
    """The export's folder: `path` itself, or a safe, bounded extraction of the tar into `work`."""
    if path.is_dir():
        return path
    if not path.is_file():
        raise ClipFilterError("path_not_found", f"{path} does not exist.", 404, path=str(path))
    try:
        with tarfile.open(path, "r:*") as tar:
            members = _checked_members(tar, path, limits or TarLimits())
            # filter="data": no absolute paths, no "..", no links leaving the folder, no devices or FIFOs.
            tar.extractall(work, members=members, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise _invalid(f"{path} is neither an export folder nor a readable tar file: {exc}") from None
    if (work / "collection.json").is_file():
        return work
    inner = [child for child in work.iterdir() if child.is_dir() and (child / "collection.json").is_file()]
    if len(inner) == 1:  # a tar made with the folder as its top level (`tar cf x.tar export/`)
        return inner[0]
    raise _invalid(f"{path} has no collection.json at its top level.")


def import_collection(
    store: CollectionStore,
    source: Path,
    name: str | None = None,
    merge: bool = False,
    skip_invalid: bool = False,
    batch_size: int = 256,
    progress: Progress | None = None,
    check_progress: Progress | None = None,
    tar_limits: TarLimits | None = None,
) -> ImportResult:
    """Import an export (folder or tar) as collection `name` (default: the exported name).

    Nothing is written unless the whole export checks out (or `skip_invalid`: the valid items go in).
    An existing collection is refused unless `merge`; then its model and dimension must be the
    export's, and content it already holds is skipped.
    """
    source = Path(source)
    # Inside the data folder (the same volume as the originals), not the system temp dir (often RAM).
    work = Path(tempfile.mkdtemp(prefix=".import-", dir=store.files.data_dir))
    try:
        folder = _open_export(source, work, tar_limits)
        manifest = _read_manifest(folder)
        model = manifest["model"]
        dim = int(model["dim"])
        target = validate_name(name or manifest.get("name"))
        entries, problems = _load_entries(folder, check_progress)
        embeddings = _load_embeddings(folder, len(entries), dim)
        if entries and dim is None:
            dim = int(embeddings.shape[1])
        if problems and not skip_invalid:
            raise ClipFilterError(
                "invalid_export",
                f"{len(problems)} of {len(entries)} items of the export failed their checks; nothing was imported. "
                "Use --skip-invalid to import the others.",
                422,
                problems=problems,
            )
        model_key = (str(model["name"]), str(model.get("pretrained") or ""), int(dim))

        created = False
        try:
            collection = store.get_collection(target)
        except ClipFilterError as exc:
            if exc.code != "collection_not_found":
                raise
            collection = store.create_collection(target, manifest.get("description"), model_key)
            created = True
        else:
            if not merge:
                raise ClipFilterError(
                    "collection_exists",
                    f"Collection {target!r} already exists. Import under another name (--name NEW), or add the "
                    "export's items to it with --merge (content it already holds is skipped).",
                    409,
                    collection=target,
                )
            if collection.dim and dim and collection.dim != dim:  # also an empty one with a recorded model
                raise ClipFilterError(
                    "dimension_mismatch",
                    f"Collection {target!r} holds {collection.dim}-dimensional embeddings; the export's are {dim}-"
                    "dimensional. Import under another name (--name NEW).",
                    409,
                    collection=target,
                    dim=collection.dim,
                    export_dim=dim,
                )
            if model_key is not None:
                collection.check_model(*model_key)  # the same dim but another model is refused too

        result = ImportResult(target, created, total=len(entries), invalid=problems)
        for batch in _batches([(row, entry) for row, entry in enumerate(entries) if entry is not None], batch_size):
            added, duplicates = _import_batch(store, collection, batch, embeddings, model_key)
            result.added += added
            result.duplicates += duplicates
            if progress is not None:
                progress(len(batch))
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


T = TypeVar("T")


def _batches(values: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(values), max(1, size)):
        yield values[start : start + size]


def _import_batch(
    store: CollectionStore,
    collection: CollectionRecord,
    batch: list[tuple[int, _Entry]],
    embeddings: np.ndarray,
    model_key: tuple[str, str, int] | None,
) -> tuple[int, int]:
    known = store.known_hashes(collection.id, [entry.record["sha256"] for _, entry in batch])
    new_items: list[NewItem] = []
    duplicates = 0
    seen: set[str] = set()
    try:
        for row, entry in batch:
            record = entry.record
            sha = record["sha256"]
            if sha in known or sha in seen:
                duplicates += 1
                continue
            seen.add(sha)
            original_path = None
            if entry.original is not None:
                data = entry.original.read_bytes()
                extension = MIME_EXTENSIONS.get(entry.mimetype, "")
                original_path = store.files.write_original(collection.id, sha, extension, data)
            text = record.get("text") if record["kind"] == "text" else None
            size = record.get("size")
            if isinstance(size, int):
                item_size = int(size)
            elif text is not None:
                item_size = len(text.encode("utf-8"))
            else:
                assert entry.original is not None  # _check_entry: every image entry has its original file
                item_size = entry.original.stat().st_size
            new_items.append(
                NewItem(
                    kind=record["kind"],
                    filename=str(record["filename"]) if record.get("filename") is not None else None,
                    mimetype=entry.mimetype,
                    size=item_size,
                    sha256=sha,
                    metadata=record.get("metadata") or {},
                    embedding=np.array(embeddings[row], np.float32),
                    truncated=bool(record.get("truncated", False)),
                    text=text,
                    original_path=original_path,
                    width=record.get("width") if isinstance(record.get("width"), int) else None,
                    height=record.get("height") if isinstance(record.get("height"), int) else None,
                )
            )
    except BaseException:
        store.files.remove_files([item.original_path for item in new_items])
        raise
    results = store.add_items(collection.id, new_items, model_key) if new_items else []
    added = sum(1 for status, _ in results if status == "added")
    return added, duplicates + (len(results) - added)
