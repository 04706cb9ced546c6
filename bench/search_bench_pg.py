"""PostgreSQL + pgvector part of bench/search_bench.py: a persistent benchmark server, a fast bulk load, the
HNSW build and the search measurements.

Large sizes (1M) take longer than one benchmark slot, so the work is split into steps that can run as
separate invocations against one persistent server and database (`--data-dir`, `--reuse`):

  load    COPY (binary, built with NumPy: ~1M rows/min) into one collection of PostgresCollectionStore,
          without the HNSW index; VACUUM ANALYZE
  index   PostgresCollectionStore.rebuild_index with the requested m / ef_construction / index type (timed;
          skipped when the index already has them: its build time is kept in a `bench_builds` table)
  query   top-10 searches through PostgresCollectionStore.search at several ef_search values, filtered
          (10 % / 1 %) with iterative scans, the automatic policy and exact
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
K = 10

# Server settings for the benchmark server (ALTER SYSTEM; a restart applies them). fsync is off (tests/pg.py):
# it changes the load's speed only, not a search's. shared_buffers holds the 1M table and index.
SERVER_SETTINGS = {
    "shared_buffers": "5GB",
    "maintenance_work_mem": "4GB",  # an in-memory HNSW build of 1M halfvec(512) needs ~2 GB
    "max_parallel_maintenance_workers": "1",  # leader + 1 worker = the 2 cores
    "max_wal_size": "16GB",
    "checkpoint_timeout": "30min",
    "jit": "off",
}
MASK_KEYS = {"10%": "f10", "1%": "f1"}


def masks_for(n: int) -> dict[str, np.ndarray]:
    return {"10%": np.arange(n) % 10 == 3, "1%": np.arange(n) % 100 == 3}  # the 1 % inside the 10 %


# ---- the server ------------------------------------------------------------------------------------------
def bench_server(root: Path) -> Any:
    """The persistent benchmark server in `root` (initdb on first use), running and configured."""
    sys.path.insert(0, str(ROOT / "clip-filter-backend" / "tests"))
    import psycopg
    from pg import PgServer, _free_port, start_pg_server

    port_file = root / "port"
    server = None
    if (root / "data" / "PG_VERSION").exists():
        if (root / "data" / "postmaster.pid").exists() and port_file.exists():
            server = PgServer(root, int(port_file.read_text()), root / "data")
            try:
                psycopg.connect(server.url, connect_timeout=3).close()
            except psycopg.OperationalError:
                server.stop("immediate")
                server = None
        if server is None:
            server = PgServer(root, _free_port(), root / "data")
            server.start()
    else:
        server = start_pg_server(root)
    port_file.write_text(str(server.port))
    with psycopg.connect(server.url, autocommit=True) as conn:
        changed = False
        for name, value in SERVER_SETTINGS.items():
            current = conn.execute("SELECT setting, unit FROM pg_settings WHERE name = %s", (name,)).fetchone()
            wanted = conn.execute("SELECT pg_size_bytes(%s)", (value,)).fetchone()[0] if value[-1] == "B" else None
            have = None
            if wanted is not None and current[1]:
                unit = conn.execute("SELECT pg_size_bytes(%s)", ("1" + current[1].replace("8kB", "kB"),)).fetchone()[0]
                have = int(current[0]) * unit * (8 if current[1] == "8kB" else 1)
            if (wanted is not None and have != wanted) or (wanted is None and current[0] != value):
                conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
                changed = True
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
    if changed:
        server.stop()
        server.port = _free_port()
        server.start()
        port_file.write_text(str(server.port))
    return server


# ---- load --------------------------------------------------------------------------------------------------
PG_EPOCH_US_2026 = 820_454_400 * 1_000_000  # 2026-01-01T00:00:00Z in microseconds since 2000-01-01


def copy_rows(cid: int, data: np.ndarray, masks: dict[str, np.ndarray], start: int) -> bytes:
    """Binary COPY rows for `data` (fixed-width fields, so one NumPy structured array builds them)."""
    n, dim = data.shape
    fields = [
        ("ncols", ">i2"),
        ("l_cid", ">i4"), ("cid", ">i8"),
        ("l_kind", ">i4"), ("kind", "S5"),
        ("l_mime", ">i4"), ("mime", "S9"),
        ("l_size", ">i4"), ("size", ">i8"),
        ("l_sha", ">i4"), ("sha", "S64"),
        ("l_meta", ">i4"), ("meta_v", "u1"), ("meta", "S25"),
        ("l_emb", ">i4"), ("emb_dim", ">i2"), ("emb_unused", ">i2"), ("emb", ">f4", (dim,)),
        ("l_ts", ">i4"), ("ts", ">i8"),
    ]
    rows = np.zeros(n, np.dtype(fields))
    rows["ncols"] = 8
    rows["l_cid"], rows["cid"] = 8, cid
    rows["l_kind"], rows["kind"] = 5, b"image"
    rows["l_mime"], rows["mime"] = 9, b"image/png"
    rows["l_size"], rows["size"] = 8, 1
    index = np.arange(start, start + n, dtype=np.uint64)
    digits = (index[:, None] >> (4 * np.arange(15, -1, -1, dtype=np.uint64))) & np.uint64(15)
    hexes = np.frombuffer(b"0123456789abcdef", np.uint8)[digits.astype(np.int64)]
    sha = np.full((n, 64), ord("0"), np.uint8)
    sha[:, 48:] = hexes
    rows["l_sha"], rows["sha"] = 64, sha.view("S64").reshape(n)
    meta = np.full(n, b'{}'.ljust(25), "S25")
    meta[masks["10%"][start : start + n]] = b'{"f10": true}'.ljust(25)
    meta[masks["1%"][start : start + n]] = b'{"f10": true, "f1": true}'
    rows["l_meta"], rows["meta_v"], rows["meta"] = 26, 1, meta
    rows["l_emb"], rows["emb_dim"], rows["emb"] = 4 + 4 * dim, dim, data
    rows["l_ts"], rows["ts"] = 8, PG_EPOCH_US_2026
    return rows.tobytes()


def open_store(url: str, data_dir: Path, **params: Any) -> Any:
    from clip_filter.collections.store.postgres import PostgresCollectionStore

    return PostgresCollectionStore(url, data_dir, pool_size=2, **params)


def database_for(server: Any, name: str) -> str:
    import psycopg

    with psycopg.connect(server.url, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{name}"')
    url = server.url_for(name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS bench_builds (indexdef text PRIMARY KEY, seconds float8, bytes bigint, "
            "at timestamptz DEFAULT now())"
        )
    return url


def load(url: str, files_dir: Path, data: np.ndarray, label: str, reuse: bool) -> tuple[int, float | None]:
    """(collection id, load seconds or None when reused) of the collection `bench` holding `data`."""
    import psycopg

    n, dim = data.shape
    store = open_store(url, files_dir)
    try:
        try:
            collection = store.get_collection("bench")
        except Exception:
            collection = None
        if collection is not None and reuse and collection.item_count == n and collection.description == label:
            return collection.id, None
        if collection is not None:
            store.delete_collection("bench")
        collection = store.create_collection("bench", label, ("bench", "synthetic", dim))
    finally:
        store.close()
    cid, masks = collection.id, masks_for(n)
    t0 = time.perf_counter()
    with psycopg.connect(url) as conn:
        conn.execute(f"DROP INDEX IF EXISTS items_{cid}_hnsw")  # built after the load, in the index step
        conn.execute("UPDATE collections SET index_type = NULL WHERE id = %s", (cid,))
        columns = "collection_id, kind, mimetype, size, sha256, metadata, embedding, created_at"
        with conn.cursor().copy(f"COPY items ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8)
            chunk = 50_000
            for start in range(0, n, chunk):
                copy.write(copy_rows(cid, np.asarray(data[start : start + chunk]), masks, start))
            copy.write(b"\xff\xff")
        conn.execute("UPDATE collections SET item_count = %s, image_count = %s WHERE id = %s", (n, n, cid))
        conn.commit()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"VACUUM ANALYZE items_{cid}")
    return cid, time.perf_counter() - t0


# ---- index -------------------------------------------------------------------------------------------------
def index_def(url: str, cid: int) -> str | None:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", (f"items_{cid}_hnsw",)).fetchone()
    return row[0] if row else None


def build_index(url: str, files_dir: Path, cid: int, index_type: str, m: int, efc: int) -> tuple[float, int, bool]:
    """(build seconds, index bytes, built now) of the collection's HNSW index with these parameters."""
    import psycopg

    wanted = f"{index_type}_ip_ops) WITH (m='{m}', ef_construction='{efc}')"
    current = index_def(url, cid)
    with psycopg.connect(url) as conn:
        if current and wanted in current:
            row = conn.execute("SELECT seconds, bytes FROM bench_builds WHERE indexdef = %s", (current,)).fetchone()
            if row:
                return row[0], row[1], False
    store = open_store(url, files_dir, index_type=index_type, hnsw_m=m, hnsw_ef_construction=efc)
    try:
        t0 = time.perf_counter()
        store.rebuild_index(cid)
        seconds = time.perf_counter() - t0
        size = store.index_size_bytes(cid)
    finally:
        store.close()
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO bench_builds (indexdef, seconds, bytes) VALUES (%s, %s, %s) ON CONFLICT (indexdef) "
            "DO UPDATE SET seconds = EXCLUDED.seconds, bytes = EXCLUDED.bytes, at = now()",
            (index_def(url, cid), seconds, size),
        )
    return seconds, size, True


# ---- queries -----------------------------------------------------------------------------------------------
def exact_truth(data: np.ndarray, queries: np.ndarray, masks: dict[str, np.ndarray]) -> dict[str, list[set[int]]]:
    """Exact top-10 row numbers (0-based) per query: unfiltered and under each mask."""
    n = data.shape[0]
    best: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {key: [] for key in ["all", *masks]}
    chunk = 100_000
    for start in range(0, n, chunk):
        scores = queries @ np.asarray(data[start : start + chunk]).T
        for key in best:
            cols = np.arange(scores.shape[1]) if key == "all" else np.flatnonzero(masks[key][start : start + chunk])
            sub = scores[:, cols]
            take = min(K, sub.shape[1])
            part = np.argpartition(-sub, take - 1, axis=1)[:, :take]
            best[key].append((np.take_along_axis(sub, part, 1), cols[part] + start))
    out = {}
    for key, parts in best.items():
        scores = np.concatenate([p[0] for p in parts], axis=1)
        rows = np.concatenate([p[1] for p in parts], axis=1)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :K]
        out[key] = [set(r.tolist()) for r in np.take_along_axis(rows, order, 1)]
    return out


def prewarm(url: str, cid: int) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for relation in (f"items_{cid}_hnsw", f"items_{cid}"):
            conn.execute("SELECT pg_prewarm(%s)", (relation,))


def measure_queries(
    url: str,
    files_dir: Path,
    cid: int,
    n: int,
    data: np.ndarray,
    queries: np.ndarray,
    ef_values: list[int],
    filtered_ef: list[int],
    filtered_candidates: list[int],
    exact_queries: int,
    timed: Any,
    pct: Any,
    index_bytes: int,
    exact_max_rows: int | None = None,
) -> list[dict]:
    import psycopg

    masks = masks_for(n)
    truth = exact_truth(data, queries, masks)
    prewarm(url, cid)
    with psycopg.connect(url) as conn:
        offset = conn.execute(f"SELECT min(id) FROM items_{cid}").fetchone()[0]  # COPY order: ids offset..
        table_bytes = conn.execute(f"SELECT pg_total_relation_size('items_{cid}')").fetchone()[0]
    store = open_store(url, files_dir)
    rows = []

    def measure(label: str, key: str, filters: dict | None, qs: np.ndarray, **kwargs: Any) -> dict:
        lat, results = timed(lambda q: store.search(cid, q, K, filters=filters, **kwargs), qs)
        expected = truth[key][: len(qs)]
        recall = float(np.mean([len(set((h.ids - offset).tolist()) & e) / K for h, e in zip(results, expected)]))
        methods = "/".join(sorted({h.method for h in results}))
        row = dict(n=n, method=label, build=None, p50=pct(lat, 50), p95=pct(lat, 95), recall=recall,
                   index=index_bytes, rss=0, note=f"{methods}, table+indexes {table_bytes / MIB:.0f} MiB")
        print(f"    {label}: p50 {row['p50']:.2f} ms, recall {recall:.3f}", file=sys.stderr, flush=True)
        return row

    try:
        defaults = (store.exact_max_rows, store.filtered_candidates)
        store.exact_max_rows = 0  # the index for every query, even filtered ones
        for ef in ef_values:
            rows.append(measure(f"pg ef{ef}", "all", None, queries, ef_search=ef))
        for name in masks:
            for candidates in filtered_candidates:
                store.filtered_candidates = candidates
                for ef in filtered_ef:
                    rows.append(measure(f"pg {name} ef{ef} c{candidates}", name, {MASK_KEYS[name]: True}, queries,
                                        ef_search=ef))
        for name in masks:
            rows.append(measure(f"pg {name} exact", name, {MASK_KEYS[name]: True}, queries[:50], exact=True))
        store.exact_max_rows, store.filtered_candidates = defaults  # the store's defaults decide
        if exact_max_rows is not None:
            store.exact_max_rows = exact_max_rows  # CLIP_FILTER_PG_EXACT_MAX_ROWS as given
        for name in masks:
            rows.append(measure(f"pg {name} auto", name, {MASK_KEYS[name]: True}, queries))
        rows.append(measure("pg auto", "all", None, queries))
        if exact_queries:
            rows.append(measure(f"pg exact ({exact_queries} q)", "all", None, queries[:exact_queries], exact=True))
    finally:
        store.close()
    return rows


def describe_server(url: str) -> str:
    import psycopg

    with psycopg.connect(url) as conn:
        version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0]
        server = conn.execute("SHOW server_version").fetchone()[0]
        settings = {name: conn.execute(f"SHOW {name}").fetchone()[0] for name in SERVER_SETTINGS}
    return f"PostgreSQL {server}, pgvector {version}, " + json.dumps(settings)


def env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


# ---- replicas: search throughput of one vs two backend processes on one PostgreSQL -----------------------
def _replica_worker(url: str, files_dir: str, cid: int, queries: np.ndarray, threads: int, seconds: float,
                    start_at: float, out: Any) -> None:
    """One backend process (a replica's store): `threads` concurrent searches until the deadline."""
    import threading

    store = open_store(url, Path(files_dir))
    store._pool.resize(threads, threads)  # noqa: SLF001 - one connection per concurrent search, as a server's pool
    counts = [0] * threads

    def loop(slot: int) -> None:
        i = slot
        while time.time() < start_at:
            time.sleep(0.001)
        while time.time() < start_at + seconds:
            store.search(cid, queries[i % len(queries)], K)
            counts[slot] += 1
            i += threads

    workers = [threading.Thread(target=loop, args=(slot,)) for slot in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    store.close()
    out.put(sum(counts))


def replica_throughput(url: str, files_dir: Path, cid: int, queries: np.ndarray, seconds: float,
                       threads: list[int]) -> list[tuple[int, int, float]]:
    """[(processes, threads per process, searches/s)] for 1 and 2 processes at each concurrency."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    results = []
    for per_process in threads:
        for processes in (1, 2):
            out = context.Queue()
            start_at = time.time() + 5.0  # every process connected and warm before the clock starts
            procs = [context.Process(target=_replica_worker,
                                     args=(url, str(files_dir), cid, queries, per_process, seconds, start_at, out))
                     for _ in range(processes)]
            for proc in procs:
                proc.start()
            total = sum(out.get(timeout=seconds + 120) for _ in procs)
            for proc in procs:
                proc.join()
            results.append((processes, per_process, total / seconds))
            print(f"    {processes} process(es) x {per_process} concurrent: {total / seconds:.1f} searches/s",
                  file=sys.stderr, flush=True)
    return results
