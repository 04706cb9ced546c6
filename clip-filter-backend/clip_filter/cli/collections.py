"""Collection commands of the `clip-filter` CLI: collections, ingest, search, reindex, export, import.

Thin handlers over `Collections` (collections/service.py), the same facade the HTTP API uses; `--json`
output uses the API's shapes (collections/views.py). Each handler takes `(args, settings)` and returns:
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
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clip_filter.core.config import Settings

if TYPE_CHECKING:
    from clip_filter.collections.service import Collections
    from clip_filter.ml.encoder import ClipEncoder, ModelInfo

log = logging.getLogger("clip_filter.cli")

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_INTERRUPTED = 130

Handler = Callable[[argparse.Namespace, Settings], int]


# ---- plumbing --------------------------------------------------------------------------------------------
def _fatal(message: str, fix: str | None = None) -> int:
    print(f"error: {message}", file=sys.stderr)
    if fix:
        print(f"fix: {fix}", file=sys.stderr)
    return EXIT_FATAL


def _guarded(handler: Handler) -> Handler:
    """Turn the errors a user can act on into a message and an exit status instead of a traceback."""

    def run(args: argparse.Namespace, settings: Settings) -> int:
        from clip_filter.core.errors import ClipFilterError

        try:
            return handler(args, settings)
        except KeyboardInterrupt:
            print("\ninterrupted: what was committed is kept; run the command again to resume.", file=sys.stderr)
            return EXIT_INTERRUPTED
        except ClipFilterError as error:
            return _fatal(
                error.message, error.details.get("fix") if isinstance(error.details.get("fix"), str) else None
            )
        except OSError as error:  # disk full, permissions on the data dir, ...
            return _fatal(str(error))

    run.__name__ = handler.__name__
    return run


class LocalModel:
    """The collections' ModelSource in the CLI: the model of the current settings, loaded on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._encoder: ClipEncoder | None = None

    @property
    def ready(self) -> bool:
        return self._encoder is not None

    def require_ready(self) -> ClipEncoder:
        """The loaded encoder, or a ClipFilterError with the factory's reason and fix."""
        if self._encoder is None:
            from clip_filter.core.errors import ClipFilterError
            from clip_filter.ml.factory import ModelLoadError, load_encoder

            root = logging.getLogger()
            level = root.level
            if level < logging.WARNING:
                root.setLevel(logging.WARNING)  # open_clip logs each loading step at INFO on the root logger
            try:
                encoder = load_encoder(self.settings)
            except ModelLoadError as exc:
                raise ClipFilterError(
                    "model_unavailable", f"The model could not be loaded: {exc.reason}", 503, fix=exc.fix
                ) from None
            finally:
                root.setLevel(level)
            info = encoder.info
            log.info(
                "model %s (%s, %s weights, dim %d) on %s, %s",
                info.model,
                info.pretrained,
                info.weights,
                info.dim,
                info.device,
                info.dtype,
            )
            self._encoder = encoder
        return self._encoder

    @property
    def info(self) -> ModelInfo:
        return self.require_ready().info

    def blocking_embedder(self, wait_for_room: bool = True) -> ClipEncoder:
        return self.require_ready()  # no queue in the CLI: the model runs in this thread


@contextmanager
def _collections(settings: Settings) -> Iterator[Collections]:
    """The facade on the data dir, with no job worker and no garbage collection (a server may be running)."""
    from clip_filter.collections.service import Collections

    service = Collections(settings, LocalModel(settings), start_jobs=False, collect_garbage=False)
    try:
        yield service
    finally:
        service.close()


def _progress_bar(total: int | None, description: str, unit: str, enabled: bool) -> Any:
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
def _cmd_collections(args: argparse.Namespace, settings: Settings) -> int:
    from clip_filter.collections.views import collection_view

    with _collections(settings) as service:
        records = service.list_collections()
    if args.json:
        _print_json({"collections": [collection_view(c) for c in records]})
        return EXIT_OK
    if not records:
        print(f"No collections in {settings.data_dir}.")
        return EXIT_OK
    rows = [("NAME", "ITEMS", "IMAGES", "TEXTS", "MODEL", "CREATED")]
    rows += [
        (
            c.name,
            str(c.item_count),
            str(c.image_count),
            str(c.text_count),
            _model_text(c.model, c.pretrained, c.dim),
            c.created_at,
        )
        for c in records
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


# ---- ingest ----------------------------------------------------------------------------------------------
def _cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from clip_filter.cli.plan import plan
    from clip_filter.collections.views import model_view
    from clip_filter.core.errors import ClipFilterError

    planned = plan(args)  # bad paths and CSVs fail before the model loads
    total = len(planned.sources) + len(planned.failures)
    failures = list(planned.failures)
    counts = {"added": 0, "duplicates": 0}
    with _collections(settings) as service:
        try:
            collection = service.get_collection(args.collection)
        except ClipFilterError as exc:
            if exc.code != "collection_not_found":
                raise
            if not args.create:
                return _fatal(
                    f"Collection {args.collection!r} does not exist.",
                    "Add --create to create it, or pick one of `clip-filter collections`.",
                )
            collection = service.create_collection(args.collection, args.description)
            print(f"Created collection {collection.name!r}.", file=sys.stderr)
        with _progress_bar(total, f"ingest {collection.name}", "file", not args.no_progress) as bar:
            bar.update(len(planned.failures))

            def on_batch(batch: list[Any], outcomes: list[Any]) -> None:
                for outcome in outcomes:
                    if outcome.status in ("added", "duplicate"):
                        counts["added" if outcome.status == "added" else "duplicates"] += 1
                        continue
                    shown = _shown_name(batch[outcome.index])
                    failures.append({"filename": shown, "code": outcome.error.code, "message": outcome.error.message})
                    tqdm.write(f"skipped {shown}: {outcome.error.code}: {outcome.error.message}", file=sys.stderr)
                bar.update(len(batch))
                bar.set_postfix(
                    added=counts["added"], duplicates=counts["duplicates"], failed=len(failures), refresh=False
                )

            try:
                result = service.ingest(collection, planned.sources, args.batch_size or settings.batch_size, on_batch)
            except ClipFilterError:
                bar.close()
                print(
                    f"stopped after {counts['added']} added, {counts['duplicates']} duplicates, {len(failures)} "
                    "failed; what was added is kept, and running the same command again resumes.",
                    file=sys.stderr,
                )
                raise
    collection = result.collection
    summary = {
        "collection": collection.name,
        "total": total,
        "added": result.added,
        "duplicates": result.duplicates,
        "failed": len(failures),
        "failures": failures,
        "item_count": collection.item_count,
        "model": model_view(collection),
    }
    if args.json:
        _print_json(summary)
    else:
        print(
            f"Ingested into {collection.name!r}: {result.added} added, {result.duplicates} duplicates (already in "
            f"the collection), {len(failures)} failed, of {total} files. The collection now has "
            f"{collection.item_count} items."
        )
        if failures:
            print("Failed:")
            for failure in failures:
                print(f"  {failure['filename']}: {failure['code']}: {failure['message']}")
    return EXIT_OK


def _shown_name(source: Any) -> str:
    if source.path is not None:
        return _printable(str(source.path))
    return _printable(source.filename or "(text)")


# C0 and C1 control characters and DEL: a filename sent over HTTP must not drive the terminal (review L7).
_CONTROL = {code: f"\\x{code:02x}" for code in [*range(0x20), *range(0x7F, 0xA0)]}


def _printable(text: Any) -> str:
    """`text` for a terminal line: control characters shown as \\xNN escapes, never sent raw."""
    return str(text).translate(_CONTROL)


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


def _cmd_search(args: argparse.Namespace, settings: Settings) -> int:
    from clip_filter.collections.results import SearchQuery
    from clip_filter.collections.views import search_view

    if (args.query is None) == (args.image is None):
        return _fatal("Give either a text query or --image PATH (not both).")
    image = None
    if args.image is not None:
        try:
            image = Path(args.image).read_bytes()
        except OSError as exc:
            return _fatal(f"{args.image} cannot be read: {exc.strerror or exc}")
    query = SearchQuery(
        text=args.query,
        image=image,
        top_k=args.top_k,
        kind=args.kind,
        min_score=args.min_score,
        filters=_parse_filters(args.filter) or None,
    )
    with _collections(settings) as service:
        result = service.search(args.collection, query)
        shown = search_view(result)
        for hit, row in zip(result.hits, shown["results"], strict=True):
            if hit.item.kind == "image":  # the CLI runs beside the data: where the original lies
                original = service.original_file(hit.item)
                row["path"] = str(original) if original else None
    collection = result.collection
    if args.json:
        _print_json(
            {
                "collection": collection.name,
                "query": {"text": args.query} if args.image is None else {"image": args.image},
                **shown,
            }
        )
        return EXIT_OK
    if result.model.weights == "random":
        print("note: the model has random weights (CLIP_PRETRAINED=random): scores are meaningless.", file=sys.stderr)
    if not shown["results"]:
        print(f"No results in {collection.name!r} ({collection.item_count} items).")
        return EXIT_OK
    print(f"{'RANK':>4}  {'SCORE':>7}  {'ID':>6}  {'KIND':5}  ITEM")
    for rank, row in enumerate(shown["results"], start=1):
        label = row["filename"] or ""
        if row["kind"] == "text":
            snippet = " ".join((row.get("text") or "").split())
            label = snippet if len(snippet) <= 70 else snippet[:67] + "..."
        meta = f"  {json.dumps(row['metadata'], ensure_ascii=False)}" if row["metadata"] else ""
        print(f"{rank:>4}  {row['score']:>7.4f}  {row['id']:>6}  {row['kind']:5}  {_printable(label + meta)}")
    return EXIT_OK


# ---- reindex ---------------------------------------------------------------------------------------------
def _cmd_reindex(args: argparse.Namespace, settings: Settings) -> int:
    from clip_filter.collections.views import model_view

    with _collections(settings) as service:
        collection = service.get_collection(args.collection)
        with _progress_bar(collection.item_count, f"reindex {collection.name}", "item", not args.no_progress) as bar:

            def progress(count: int, total: int) -> None:
                bar.total = total
                bar.update(count)

            result = service.reindex(collection.name, args.batch_size, progress)
    before, after = result.before, result.collection
    if args.json:
        _print_json({"collection": after.name, "items": result.items, "model": model_view(after)})
    else:
        print(
            f"Reindexed {after.name!r}: {after.item_count} items re-embedded. Model: "
            f"{_model_text(before.model, before.pretrained, before.dim)} -> "
            f"{_model_text(after.model, after.pretrained, after.dim)}."
        )
    return EXIT_OK


# ---- export / import -------------------------------------------------------------------------------------
def _cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    with _collections(settings) as service:
        collection = service.get_collection(args.collection)
        with _progress_bar(collection.item_count, f"export {collection.name}", "item", not args.no_progress) as bar:
            result = service.export(collection.name, Path(args.out), progress=bar.update)
    print(
        f"Exported {collection.name!r} to {result.path}: {result.items} items ({result.images} images, "
        f"{result.texts} texts), {result.dim}-dimensional embeddings."
    )
    if result.skipped:
        print(f"{len(result.skipped)} items were deleted while exporting and are not in the export.")
    return EXIT_OK


def _problem_line(problem: dict[str, Any]) -> str:
    return _printable(f"  line {problem['line']} ({problem.get('filename')}): {problem['reason']}")


def _cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    from clip_filter.core.errors import ClipFilterError

    with _collections(settings) as service, _progress_bar(None, "check", "item", not args.no_progress) as bar:
        phase = {"importing": False}

        def imported(count: int) -> None:
            if not phase["importing"]:  # one bar: checking first, then importing
                phase["importing"] = True
                bar.set_description_str("import")
                bar.reset()
            bar.update(count)

        try:
            result = service.import_(
                Path(args.source),
                name=args.name,
                merge=args.merge,
                skip_invalid=args.skip_invalid,
                batch_size=args.batch_size,
                progress=imported,
                check_progress=bar.update,
            )
        except ClipFilterError as exc:
            problems = exc.details.get("problems") or []
            if problems:
                bar.close()
                for problem in problems[:50]:
                    print(_problem_line(problem), file=sys.stderr)
                if len(problems) > 50:
                    print(f"  ... and {len(problems) - 50} more", file=sys.stderr)
            raise
    verb = "Created" if result.created else "Merged into"
    print(
        f"{verb} {result.name!r}: {result.added} added, {result.duplicates} duplicates skipped, "
        f"{len(result.invalid)} invalid skipped, of {result.total} items in the export."
    )
    for problem in result.invalid:
        print("  skipped" + _problem_line(problem).removeprefix(" "))
    return EXIT_OK


# ---- the parser ------------------------------------------------------------------------------------------
def add_subparsers(commands: Any) -> None:
    listing = commands.add_parser("collections", help="list the collections in CLIP_FILTER_DATA_DIR")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=_guarded(_cmd_collections))

    ingest = commands.add_parser(
        "ingest",
        help="add image/text files (folders recursively, or a CSV with a `path` column) to a collection",
        description="Add files to a collection. Folders are walked recursively for images and .txt/.md files; a "
        ".csv file lists files in its `path` column (relative to the CSV) and its other columns become each "
        "item's metadata. Content already in the collection (same sha256) is skipped without re-encoding, so "
        "running the same command again resumes an interrupted ingest. Bad files are reported and skipped.",
    )
    ingest.add_argument("paths", nargs="+", metavar="PATH", help="a folder, a file, or a .csv file")
    ingest.add_argument("--collection", "-c", required=True, help="the collection to add to")
    ingest.add_argument("--create", action="store_true", help="create the collection if it does not exist")
    ingest.add_argument("--description", help="description of a collection made with --create")
    ingest.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        metavar="N",
        help="files per model batch and per transaction (default CLIP_BATCH_SIZE)",
    )
    ingest.add_argument(
        "--metadata-column",
        action="append",
        metavar="COLUMN",
        help="CSV: store only these columns as metadata (repeatable; default: every column "
        "except the path column and `text`)",
    )
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
        "reindex",
        help="re-embed every item with the current model (all or nothing)",
        description="Re-embed every item of a collection from its stored original with the model of the current "
        "settings (CLIP_MODEL, CLIP_PRETRAINED), then swap all vectors and the recorded model in one transaction.",
    )
    reindex.add_argument("collection")
    reindex.add_argument("--batch-size", type=_positive_int, default=None, metavar="N", help="items per model batch")
    reindex.add_argument("--json", action="store_true", help="print the result as JSON")
    reindex.add_argument("--no-progress", action="store_true", help="no progress bar")
    reindex.set_defaults(handler=_guarded(_cmd_reindex))

    export = commands.add_parser(
        "export",
        help="write a collection to a folder or .tar (collection.json, items.jsonl, embeddings.npy, originals/)",
    )
    export.add_argument("collection")
    export.add_argument("out", metavar="OUT", help="a new folder, or a file ending in .tar, .tar.gz or .tgz")
    export.add_argument("--no-progress", action="store_true", help="no progress bar")
    export.set_defaults(handler=_guarded(_cmd_export))

    importer = commands.add_parser(
        "import",
        help="import a collection export (folder or tar); no model needed",
        description="Import an export made by `clip-filter export`. Every original's sha256, the embeddings' shape, "
        "dtype and norms are checked before anything is written.",
    )
    importer.add_argument("source", metavar="IN", help="an export folder or .tar/.tar.gz file")
    importer.add_argument("--name", help="the new collection's name (default: the exported name)")
    importer.add_argument(
        "--merge",
        action="store_true",
        help="add to an existing collection of the same model (duplicates are skipped); also "
        "resumes an interrupted import",
    )
    importer.add_argument(
        "--skip-invalid", action="store_true", help="import the valid items even if some fail their checks"
    )
    importer.add_argument("--batch-size", type=_positive_int, default=256, metavar="N", help="items per transaction")
    importer.add_argument("--no-progress", action="store_true", help="no progress bar")
    importer.set_defaults(handler=_guarded(_cmd_import))
