"""Collection subcommands of the `clip-filter` CLI: collections, ingest, search, reindex, export, import.

Each handler takes `(args, settings)` and returns the exit status:
  0  the command finished (an ingest with some bad files also finished: they are in its summary)
  1  a fatal error (unknown collection, model mismatch, invalid export, ...): a message on stderr
  2  bad usage (argparse)
  130 interrupted (Ctrl-C); what was committed stays, and running the command again resumes.

The CLI talks to the same data directory (CLIP_FILTER_DATA_DIR) as a running server; SQLite's
locking makes that safe, and the server notices the changes through each collection's version.
Heavy imports (torch, open_clip) happen inside the handlers so that `--help` stays fast.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

log = logging.getLogger("clip_filter.cli")

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_INTERRUPTED = 130


# ---- plumbing --------------------------------------------------------------------------------------------
def _fatal(message: str, fix: str | None = None) -> int:
    print(f"error: {message}", file=sys.stderr)
    if fix:
        print(f"fix: {fix}", file=sys.stderr)
    return EXIT_FATAL


def _guarded(handler: Callable[[argparse.Namespace, Any], int]) -> Callable[[argparse.Namespace, Any], int]:
    """Turn the errors a user can act on into a message and an exit status instead of a traceback."""

    def run(args: argparse.Namespace, settings: Any) -> int:
        from clip_filter.core.errors import ClipFilterError

        try:
            return handler(args, settings)
        except KeyboardInterrupt:
            print("\ninterrupted: what was committed is kept; run the command again to resume.", file=sys.stderr)
            return EXIT_INTERRUPTED
        except ClipFilterError as error:
            return _fatal(error.message, error.details.get("fix") if isinstance(error.details.get("fix"), str) else None)
        except OSError as error:  # disk full, permissions on the data dir, ...
            return _fatal(str(error))

    run.__name__ = handler.__name__
    return run


def _open_store(settings: Any):
    from clip_filter.collections.backends import open_store

    return open_store(settings)  # SQLite, or PostgreSQL when CLIP_FILTER_DATABASE_URL is set


def _load_encoder(settings: Any):
    """The model of the current settings, or a ClipFilterError with the factory's reason and fix."""
    from clip_filter.core.errors import ClipFilterError
    from clip_filter.ml.factory import ModelLoadError, load_encoder

    root = logging.getLogger()
    level = root.level
    if level < logging.WARNING:
        root.setLevel(logging.WARNING)  # open_clip logs each loading step at INFO on the root logger
    try:
        encoder = load_encoder(settings)
    except ModelLoadError as exc:
        raise ClipFilterError("model_unavailable", f"The model could not be loaded: {exc.reason}", 503, fix=exc.fix) from None
    finally:
        root.setLevel(level)
    info = encoder.info
    log.info("model %s (%s, %s weights, dim %d) on %s, %s", info.model, info.pretrained, info.weights, info.dim,
             info.device, info.dtype)
    return encoder


def _progress_bar(total: int | None, description: str, unit: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit=unit, file=sys.stderr, disable=not enabled, dynamic_ncols=True)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def _print_json(value: Any) -> None:
    json.dump(value, sys.stdout, ensure_ascii=False, indent=2)
    sys.stdout.write("\n")


def _model_text(model: str | None, pretrained: str | None, dim: int | None) -> str:
    return f"{model} ({pretrained}, dim {dim})" if model else "(none yet)"


# ---- collections -----------------------------------------------------------------------------------------
def _cmd_collections(args: argparse.Namespace, settings: Any) -> int:
    store = _open_store(settings)
    try:
        records = store.list_collections()
    finally:
        store.close()
    if args.json:
        _print_json({"collections": [{
            "name": c.name, "description": c.description, "model": c.model, "pretrained": c.pretrained, "dim": c.dim,
            "item_count": c.item_count, "image_count": c.image_count, "text_count": c.text_count,
            "created_at": c.created_at,
        } for c in records]})
        return EXIT_OK
    if not records:
        print(f"No collections in {settings.data_dir}.")
        return EXIT_OK
    rows = [("NAME", "ITEMS", "IMAGES", "TEXTS", "MODEL", "CREATED")]
    rows += [(c.name, str(c.item_count), str(c.image_count), str(c.text_count),
              _model_text(c.model, c.pretrained, c.dim), c.created_at) for c in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(value.ljust(width) for value, width in zip(row, widths)).rstrip())
    return EXIT_OK


# ---- ingest ----------------------------------------------------------------------------------------------
@dataclass
class _Planned:
    """Files (or CSV texts) to ingest, and the inputs refused before anything was read."""

    sources: list[Any] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)


def _walk_folder(folder: Path) -> Iterator[Path]:
    """Supported files under a folder, recursively, in a stable (sorted) order; symlinked folders are not
    followed (no cycles), symlinked files are."""
    from clip_filter.collections.ingest import is_supported_filename

    for directory, subdirs, names in os.walk(folder, followlinks=False):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in sorted(names):
            if not name.startswith(".") and is_supported_filename(name):
                yield Path(directory, name)


def _csv_value(value: str | None) -> Any:
    return "" if value is None else value


def _plan_csv(path: Path, args: argparse.Namespace, planned: _Planned) -> None:
    """A CSV with a `path` column (relative paths are relative to the CSV's folder); other columns are
    metadata (all of them, or those named with --metadata-column). A row with an empty path and a `text`
    column adds that text."""
    from clip_filter.collections.ingest import Source
    from clip_filter.core.errors import ClipFilterError

    try:
        handle = open(path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise ClipFilterError("file_unreadable", f"{path} cannot be read: {exc.strerror or exc}", 422) from None
    with handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        path_column = args.path_column
        if path_column not in columns:
            raise ClipFilterError(
                "invalid_csv", f"{path} has no {path_column!r} column (columns: {', '.join(columns) or 'none'}).", 422,
                fix=f"Name the column with the file paths {path_column!r}, or pass --path-column NAME.",
            )
        wanted = args.metadata_column
        if wanted:
            unknown = [c for c in wanted if c not in columns]
            if unknown:
                raise ClipFilterError("invalid_csv", f"{path} has no column(s) {', '.join(map(repr, unknown))}.", 422)
            meta_columns = list(wanted)
        else:
            meta_columns = [c for c in columns if c not in (path_column, "text")]
        base = path.parent
        try:
            for row_number, row in enumerate(reader, start=2):
                metadata = {column: _csv_value(row.get(column)) for column in meta_columns}
                value = (row.get(path_column) or "").strip()
                text = row.get("text") if "text" in columns else None
                where = f"{path}:{row_number}"
                if not value:
                    if text and text.strip():
                        planned.sources.append(Source(filename=where, text=text, metadata=metadata))
                    else:
                        planned.failures.append({"filename": where, "code": "invalid_csv_row",
                                                 "message": f"The row has no {path_column!r} (nor a text)."})
                    continue
                file = Path(value).expanduser()
                if not file.is_absolute():
                    file = base / file
                planned.sources.append(Source(filename=value, path=file, metadata=metadata))
        except csv.Error as exc:
            raise ClipFilterError("invalid_csv", f"{path} is not valid CSV (line {reader.line_num}): {exc}", 422) from None


def _plan(args: argparse.Namespace) -> _Planned:
    from clip_filter.collections.ingest import Source
    from clip_filter.core.errors import ClipFilterError

    planned = _Planned()
    for text in args.paths:
        path = Path(text).expanduser()
        if path.is_dir():
            for file in _walk_folder(path):
                planned.sources.append(Source(filename=file.relative_to(path).as_posix(), path=file))
        elif path.is_file() and path.suffix.lower() == ".csv":
            _plan_csv(path, args, planned)
        elif path.is_file():
            planned.sources.append(Source(filename=path.name, path=path))
        else:
            raise ClipFilterError("path_not_found", f"{text} does not exist.", 404)
    return planned


def _ingest_batch(ingestor: Any, collection: Any, sources: list[Any], encoder: Any) -> list[Any]:
    """One batch; an unexpected error (not a ClipFilterError) is pinned on the file that causes it."""
    from clip_filter.collections.ingest import Outcome
    from clip_filter.core.errors import ClipFilterError

    try:
        return ingestor.ingest(collection, sources, encoder)
    except ClipFilterError:
        raise  # model mismatch, storage failure, deleted collection: fatal for the whole run
    except Exception as exc:  # noqa: BLE001
        if len(sources) == 1:
            log.debug("ingest of %s failed", sources[0].filename, exc_info=True)
            error = ClipFilterError("internal_error", f"{type(exc).__name__}: {exc}", 500)
            return [Outcome(0, sources[0].filename, "error", error=error)]
    outcomes = []
    for index, source in enumerate(sources):  # find the culprit: the others still go in
        for outcome in _ingest_batch(ingestor, collection, [source], encoder):
            outcome.index = index
            outcomes.append(outcome)
    return outcomes


def _cmd_ingest(args: argparse.Namespace, settings: Any) -> int:
    from tqdm import tqdm

    from clip_filter.collections.embedder import model_key
    from clip_filter.collections.ingest import IngestLimits, Ingestor
    from clip_filter.core.errors import ClipFilterError

    planned = _plan(args)  # bad paths and CSVs fail before the model loads
    store = _open_store(settings)
    try:
        try:
            collection = store.get_collection(args.collection)
        except ClipFilterError as exc:
            if exc.code != "collection_not_found":
                raise
            if not args.create:
                return _fatal(f"Collection {args.collection!r} does not exist.",
                              f"Add --create to create it, or pick one of `clip-filter collections`.")
            collection = store.create_collection(args.collection, args.description, None)
            print(f"Created collection {collection.name!r}.", file=sys.stderr)
        encoder = _load_encoder(settings)
        collection.check_model(*model_key(encoder.info))  # refuse before reading a single file

        ingestor = Ingestor(store, IngestLimits.from_settings(settings))
        batch_size = args.batch_size or settings.batch_size
        added = duplicates = 0
        failures = list(planned.failures)
        total = len(planned.sources) + len(planned.failures)
        with _progress_bar(total, f"ingest {collection.name}", "file", not args.no_progress) as bar:
            bar.update(len(planned.failures))
            for start in range(0, len(planned.sources), batch_size):
                batch = planned.sources[start : start + batch_size]
                collection = store.get_collection_by_id(collection.id) or collection
                try:
                    outcomes = _ingest_batch(ingestor, collection, batch, encoder)
                except ClipFilterError:
                    bar.close()
                    print(f"stopped after {added} added, {duplicates} duplicates, {len(failures)} failed; what was "
                          "added is kept, and running the same command again resumes.", file=sys.stderr)
                    raise
                for outcome in outcomes:
                    if outcome.status == "added":
                        added += 1
                    elif outcome.status == "duplicate":
                        duplicates += 1
                    else:
                        error = outcome.error
                        shown = _shown_name(batch[outcome.index])
                        failures.append({"filename": shown, "code": error.code, "message": error.message})
                        tqdm.write(f"skipped {shown}: {error.code}: {error.message}", file=sys.stderr)
                for source in batch:
                    source.data = None  # the bytes of a finished batch are not needed any more
                bar.update(len(batch))
                bar.set_postfix(added=added, duplicates=duplicates, failed=len(failures), refresh=False)
        collection = store.get_collection_by_id(collection.id) or collection
    finally:
        store.close()

    summary = {
        "collection": collection.name, "total": total, "added": added, "duplicates": duplicates,
        "failed": len(failures), "failures": failures, "item_count": collection.item_count,
        "model": {"name": collection.model, "pretrained": collection.pretrained, "dim": collection.dim},
    }
    if args.json:
        _print_json(summary)
    else:
        print(f"Ingested into {collection.name!r}: {added} added, {duplicates} duplicates (already in the "
              f"collection), {len(failures)} failed, of {total} files. The collection now has "
              f"{collection.item_count} items.")
        if failures:
            print("Failed:")
            for failure in failures:
                print(f"  {failure['filename']}: {failure['code']}: {failure['message']}")
    return EXIT_OK


def _shown_name(source: Any) -> str:
    if source.path is not None:
        return str(source.path)
    return source.filename or "(text)"


# ---- search ----------------------------------------------------------------------------------------------
def _parse_filters(values: list[str] | None) -> dict[str, Any]:
    from clip_filter.core.errors import ClipFilterError

    filters: dict[str, Any] = {}
    for value in values or []:
        key, sep, raw = value.partition("=")
        if not sep or not key:
            raise ClipFilterError("invalid_filter", f"--filter {value!r} is not KEY=VALUE.", 422)
        filters[key] = raw
    return filters


def _cmd_search(args: argparse.Namespace, settings: Any) -> int:
    import numpy as np

    from clip_filter.collections.embedder import model_key
    from clip_filter.collections.vector_index import KIND_CODES, ExactIndex
    from clip_filter.core.errors import ClipFilterError
    from clip_filter.images import ImageLimits, decode_image

    if (args.query is None) == (args.image is None):
        return _fatal("Give either a text query or --image PATH (not both).")
    filters = _parse_filters(args.filter)
    store = _open_store(settings)
    try:
        collection = store.get_collection(args.collection)
        encoder = _load_encoder(settings)
        collection.check_model(*model_key(encoder.info))
        if args.image is not None:
            try:
                data = Path(args.image).read_bytes()
            except OSError as exc:
                return _fatal(f"{args.image} cannot be read: {exc.strerror or exc}")
            image = decode_image(data, ImageLimits(settings.max_image_bytes, settings.max_image_pixels))
            query = encoder.encode_images([image])[0]
        else:
            if not args.query.strip():
                return _fatal("The query text is empty.")
            query = encoder.encode_texts([args.query[: settings.max_text_chars]]).embeddings[0]

        _, ids, vectors, kinds = store.load_vectors(collection.id)
        allowed = store.filter_ids(collection.id, filters) if filters else None
        results = []
        if ids.size:
            index = ExactIndex(vectors.shape[1], capacity=max(1, ids.size))
            index.add(ids, vectors, np.array([KIND_CODES[k] for k in kinds], np.int8))
            hits = index.search(np.asarray(query, np.float32), args.top_k, 0, allowed, args.kind, args.min_score)
            records = store.items_by_ids(collection.id, [int(i) for i in hits.ids])
            for item_id, score in zip(hits.ids, hits.scores):
                item = records.get(int(item_id))
                if item is None:
                    continue  # deleted meanwhile
                result = {"id": item.id, "kind": item.kind, "score": round(float(score), 6), "filename": item.filename,
                          "mimetype": item.mimetype, "metadata": item.metadata}
                if item.kind == "text":
                    result["text"] = item.text
                else:
                    original = store.original_file(item)
                    result["path"] = str(original) if original else None
                results.append(result)
    finally:
        store.close()

    if args.json:
        _print_json({
            "collection": collection.name, "query": {"text": args.query} if args.image is None else {"image": args.image},
            "model": {"name": encoder.info.model, "pretrained": encoder.info.pretrained, "dim": encoder.info.dim},
            "weights": encoder.info.weights, "results": results,
        })
        return EXIT_OK
    if encoder.info.weights == "random":
        print("note: the model has random weights (CLIP_PRETRAINED=random): scores are meaningless.", file=sys.stderr)
    if not results:
        print(f"No results in {collection.name!r} ({collection.item_count} items).")
        return EXIT_OK
    print(f"{'RANK':>4}  {'SCORE':>7}  {'ID':>6}  {'KIND':5}  ITEM")
    for rank, result in enumerate(results, start=1):
        label = result["filename"] or ""
        if result["kind"] == "text":
            snippet = " ".join((result.get("text") or "").split())
            label = snippet if len(snippet) <= 70 else snippet[:67] + "..."
        meta = f"  {json.dumps(result['metadata'], ensure_ascii=False)}" if result["metadata"] else ""
        print(f"{rank:>4}  {result['score']:>7.4f}  {result['id']:>6}  {result['kind']:5}  {label}{meta}")
    return EXIT_OK


# ---- reindex ---------------------------------------------------------------------------------------------
def _embed_items(items: list[Any], store: Any, encoder: Any, settings: Any) -> dict[int, tuple[Any, bool]]:
    """Fresh embeddings of stored items, from their originals; a missing or unreadable one is fatal."""
    from clip_filter.core.errors import ClipFilterError
    from clip_filter.images import ImageLimits, decode_image

    out: dict[int, tuple[Any, bool]] = {}
    images, pixels = [], []
    texts = [item for item in items if item.kind == "text"]
    for item in items:
        if item.kind != "image":
            continue
        path = store.original_file(item)
        try:
            data = path.read_bytes() if path is not None else None
        except OSError:
            data = None
        if data is None:
            raise ClipFilterError(
                "original_missing",
                f"Item {item.id} ({item.filename}) has no readable original at {path}; nothing was reindexed.", 500,
                fix="Delete that item (DELETE /collections/{name}/items/{id}) and run reindex again.",
            )
        # The original was accepted once: let it through even if the limits were lowered since.
        limits = ImageLimits(max(settings.max_image_bytes, len(data)),
                             max(settings.max_image_pixels, (item.width or 0) * (item.height or 0)))
        try:
            pixels.append(decode_image(data, limits))
        except ClipFilterError as exc:
            raise ClipFilterError(
                "original_unreadable",
                f"The original of item {item.id} ({item.filename}) cannot be decoded ({exc.code}); nothing was reindexed.",
                500,
            ) from None
        images.append(item)
    if images:
        for item, vector in zip(images, encoder.encode_images(pixels)):
            out[item.id] = (vector, False)
    if texts:
        cut = settings.max_text_chars
        batch = encoder.encode_texts([(item.text or "")[:cut] for item in texts])
        for item, vector, truncated in zip(texts, batch.embeddings, batch.truncated):
            out[item.id] = (vector, bool(truncated) or len(item.text or "") > cut)
    return out


def _cmd_reindex(args: argparse.Namespace, settings: Any) -> int:
    from clip_filter.collections.embedder import model_key

    store = _open_store(settings)
    try:
        collection = store.get_collection(args.collection)
        encoder = _load_encoder(settings)
        new_model = model_key(encoder.info)
        before = _model_text(collection.model, collection.pretrained, collection.dim)
        batch_size = args.batch_size or settings.batch_size
        embeddings: dict[int, tuple[Any, bool]] = {}
        with _progress_bar(collection.item_count, f"reindex {collection.name}", "item", not args.no_progress) as bar:
            for items in store.iter_items(collection.id, batch_size):
                embeddings.update(_embed_items(items, store, encoder, settings))
                bar.update(len(items))
            # One transaction swaps every vector and the recorded model. Items added meanwhile make it
            # refuse; embed those too and try again.
            for _ in range(100):
                committed, missing = store.replace_embeddings(collection.id, embeddings, new_model)
                if committed:
                    break
                fresh = store.items_by_ids(collection.id, sorted(missing))
                bar.total = (bar.total or 0) + len(fresh)
                embeddings.update(_embed_items(list(fresh.values()), store, encoder, settings))
                bar.update(len(fresh))
            else:
                return _fatal("The collection kept changing during the reindex; nothing was changed. Try again.")
        collection = store.get_collection_by_id(collection.id) or collection
    finally:
        store.close()
    after = _model_text(collection.model, collection.pretrained, collection.dim)
    if args.json:
        _print_json({"collection": collection.name, "items": len(embeddings),
                     "model": {"name": collection.model, "pretrained": collection.pretrained, "dim": collection.dim}})
    else:
        print(f"Reindexed {collection.name!r}: {collection.item_count} items re-embedded. Model: {before} -> {after}.")
    return EXIT_OK


# ---- export / import -------------------------------------------------------------------------------------
def _cmd_export(args: argparse.Namespace, settings: Any) -> int:
    from clip_filter.collections.transfer import export_collection

    store = _open_store(settings)
    try:
        collection = store.get_collection(args.collection)
        with _progress_bar(collection.item_count, f"export {collection.name}", "item", not args.no_progress) as bar:
            result = export_collection(store, collection.name, Path(args.out), progress=bar.update)
    finally:
        store.close()
    print(f"Exported {collection.name!r} to {result.path}: {result.items} items ({result.images} images, "
          f"{result.texts} texts), {result.dim}-dimensional embeddings.")
    if result.skipped:
        print(f"{len(result.skipped)} items were deleted while exporting and are not in the export.")
    return EXIT_OK


def _cmd_import(args: argparse.Namespace, settings: Any) -> int:
    from clip_filter.collections.transfer import import_collection
    from clip_filter.core.errors import ClipFilterError

    store = _open_store(settings)
    try:
        with _progress_bar(None, "check", "item", not args.no_progress) as bar:
            phase = {"importing": False}

            def imported(count: int) -> None:
                if not phase["importing"]:  # one bar: checking first, then importing
                    phase["importing"] = True
                    bar.set_description_str("import")
                    bar.reset()
                bar.update(count)

            try:
                result = import_collection(
                    store, Path(args.source), name=args.name, merge=args.merge, skip_invalid=args.skip_invalid,
                    batch_size=args.batch_size, progress=imported, check_progress=bar.update,
                )
            except ClipFilterError as exc:
                problems = exc.details.get("problems") or []
                if problems:
                    bar.close()
                    for problem in problems[:50]:
                        print(f"  line {problem['line']} ({problem.get('filename')}): {problem['reason']}", file=sys.stderr)
                    if len(problems) > 50:
                        print(f"  ... and {len(problems) - 50} more", file=sys.stderr)
                raise
    finally:
        store.close()
    verb = "Created" if result.created else "Merged into"
    print(f"{verb} {result.name!r}: {result.added} added, {result.duplicates} duplicates skipped, "
          f"{len(result.invalid)} invalid skipped, of {result.total} items in the export.")
    for problem in result.invalid:
        print(f"  skipped line {problem['line']} ({problem.get('filename')}): {problem['reason']}")
    return EXIT_OK


# ---- the parser ------------------------------------------------------------------------------------------
def add_subparsers(commands: argparse._SubParsersAction) -> None:
    listing = commands.add_parser("collections", help="list the collections in CLIP_FILTER_DATA_DIR")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=_guarded(_cmd_collections))

    ingest = commands.add_parser(
        "ingest", help="add image/text files (folders recursively, or a CSV with a `path` column) to a collection",
        description="Add files to a collection. Folders are walked recursively for images and .txt/.md files; a "
        ".csv file lists files in its `path` column (relative to the CSV) and its other columns become each "
        "item's metadata. Content already in the collection (same sha256) is skipped without re-encoding, so "
        "running the same command again resumes an interrupted ingest. Bad files are reported and skipped.",
    )
    ingest.add_argument("paths", nargs="+", metavar="PATH", help="a folder, a file, or a .csv file")
    ingest.add_argument("--collection", "-c", required=True, help="the collection to add to")
    ingest.add_argument("--create", action="store_true", help="create the collection if it does not exist")
    ingest.add_argument("--description", help="description of a collection made with --create")
    ingest.add_argument("--batch-size", type=_positive_int, default=None, metavar="N",
                        help="files per model batch and per transaction (default CLIP_BATCH_SIZE)")
    ingest.add_argument("--metadata-column", action="append", metavar="COLUMN",
                        help="CSV: store only these columns as metadata (repeatable; default: every column "
                        "except the path column and `text`)")
    ingest.add_argument("--path-column", default="path", metavar="COLUMN", help="CSV: the column with file paths")
    ingest.add_argument("--json", action="store_true", help="print the summary as JSON")
    ingest.add_argument("--no-progress", action="store_true", help="no progress bar")
    ingest.set_defaults(handler=_guarded(_cmd_ingest))

    search = commands.add_parser("search", help="search a collection with a text or an image")
    search.add_argument("collection")
    search.add_argument("query", nargs="?", help="the text query (or use --image)")
    search.add_argument("--image", metavar="PATH", help="query with an image file instead of a text")
    search.add_argument("--top-k", "-k", type=_positive_int, default=10, help="how many results (default 10)")
    search.add_argument("--kind", choices=("image", "text"), help="only items of this kind")
    search.add_argument("--filter", action="append", metavar="KEY=VALUE", help="metadata equality filter (repeatable)")
    search.add_argument("--min-score", type=float, help="only results with at least this cosine similarity")
    search.add_argument("--json", action="store_true", help="print JSON")
    search.set_defaults(handler=_guarded(_cmd_search))

    reindex = commands.add_parser(
        "reindex", help="re-embed every item with the current model (all or nothing)",
        description="Re-embed every item of a collection from its stored original with the model of the current "
        "settings (CLIP_MODEL, CLIP_PRETRAINED), then swap all vectors and the recorded model in one transaction.",
    )
    reindex.add_argument("collection")
    reindex.add_argument("--batch-size", type=_positive_int, default=None, metavar="N", help="items per model batch")
    reindex.add_argument("--json", action="store_true", help="print the result as JSON")
    reindex.add_argument("--no-progress", action="store_true", help="no progress bar")
    reindex.set_defaults(handler=_guarded(_cmd_reindex))

    export = commands.add_parser(
        "export", help="write a collection to a folder or .tar (collection.json, items.jsonl, embeddings.npy, originals/)"
    )
    export.add_argument("collection")
    export.add_argument("out", metavar="OUT", help="a new folder, or a file ending in .tar, .tar.gz or .tgz")
    export.add_argument("--no-progress", action="store_true", help="no progress bar")
    export.set_defaults(handler=_guarded(_cmd_export))

    importer = commands.add_parser(
        "import", help="import a collection export (folder or tar); no model needed",
        description="Import an export made by `clip-filter export`. Every original's sha256, the embeddings' shape, "
        "dtype and norms are checked before anything is written.",
    )
    importer.add_argument("source", metavar="IN", help="an export folder or .tar/.tar.gz file")
    importer.add_argument("--name", help="the new collection's name (default: the exported name)")
    importer.add_argument("--merge", action="store_true",
                          help="add to an existing collection of the same model (duplicates are skipped); also "
                          "resumes an interrupted import")
    importer.add_argument("--skip-invalid", action="store_true",
                          help="import the valid items even if some fail their checks")
    importer.add_argument("--batch-size", type=_positive_int, default=256, metavar="N", help="items per transaction")
    importer.add_argument("--no-progress", action="store_true", help="no progress bar")
    importer.set_defaults(handler=_guarded(_cmd_import))
