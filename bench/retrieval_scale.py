"""Retrieval at scale: an HNSW index over 1,000,000 x 128 embeddings, one query at a time.

    .venv/bin/python bench/retrieval_scale.py [--n 1000000] [--dim 128] [--queries 1000]
                       [--data clustered|uniform] [--intrinsic-dim 16] [--ivf]

Embeddings are L2-normalised float32. `clustered` (default) is a mixture of `--clusters`
Gaussians, each spread over a random `--intrinsic-dim`-dimensional subspace around a unit
centre (see `Mixture`): real embeddings are clustered and of low local intrinsic dimension.
`--intrinsic-dim 0` makes each cluster a full-rank isotropic Gaussian, and `--data uniform`
is uniform on the sphere: both are the worst case for any ANN index (in 128-d all neighbours
are nearly equidistant). Queries are fresh draws from the same distribution, not indexed
vectors.

The index is built by the product's own `sslengine.eval.retrieval.build_index` (HNSW, M 32,
efConstruction 40, efSearch tuned by the library to recall@10 >= 0.95 on held-out vectors) and
searched with `sslengine.eval.retrieval.search`, one query per call, as the dashboard does.
Reported: build time (including the library's tuning), p50/p95/p99 latency of single top-10
queries, recall@10 of the held-out queries against exact search (faiss IndexFlatIP). If the
held-out recall is under 0.95 this bench doubles efSearch until it is not (and says so), then
measures again. Targets: p95 < 10 ms with recall@10 >= 0.95.

Ratios here are against the exact index on the same queries: the speed-up of the approximate
search over brute force, measured in the same run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, machine_report  # noqa: E402

K = 10
TARGET_RECALL = 0.95
TARGET_P95_MS = 10.0
TUNE_QUERIES = 500


class Mixture:
    """A mixture of `clusters` Gaussians on low-dimensional subspaces (or full-rank ones).

    Centre c ~ N(0, I/d) scaled to unit norm; point = c + spread * B_c u / sqrt(r) +
    noise * N(0, I/d), with B_c a random orthonormal (d, r) basis per cluster and u ~ N(0, I_r):
    each cluster has intrinsic dimension r (plus a little isotropic noise), as real embeddings
    do. r = 0 means full-rank clusters: point = c + spread * N(0, I/d) -- within a cluster the
    points are then as hard to tell apart as uniform random ones.
    """

    def __init__(
        self, d: int, clusters: int, r: int, spread: float, noise: float, rng: np.random.Generator
    ):
        self.d, self.r, self.spread, self.noise = d, r, spread, noise
        centres = rng.standard_normal((clusters, d), dtype=np.float32)
        self.centres = centres / np.linalg.norm(centres, axis=1, keepdims=True)
        self.bases = None
        if r > 0:
            gauss = rng.standard_normal((clusters, d, r), dtype=np.float32)
            self.bases = np.linalg.qr(gauss)[0].astype(np.float32)  # (C, d, r) orthonormal

    def sample(self, m: int, rng: np.random.Generator) -> np.ndarray:
        out = np.empty((m, self.d), dtype=np.float32)
        chunk = 10_000  # the gathered (chunk, d, r) bases stay small
        for s in range(0, m, chunk):
            k = min(chunk, m - s)
            lab = rng.integers(0, len(self.centres), k)
            x = self.centres[lab].copy()
            if self.bases is None:
                x += rng.standard_normal((k, self.d), dtype=np.float32) * (
                    self.spread / np.sqrt(self.d)
                )
            else:
                u = rng.standard_normal((k, self.r), dtype=np.float32)
                x += np.einsum("kdr,kr->kd", self.bases[lab], u) * (self.spread / np.sqrt(self.r))
                x += rng.standard_normal((k, self.d), dtype=np.float32) * (
                    self.noise / np.sqrt(self.d)
                )
            out[s : s + k] = x
        return out


def make_data(args) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(base (n, d), queries (q, d), tuning queries (TUNE_QUERIES, d)), not yet normalised;
    both query sets are fresh draws, the measured ones never used for tuning."""
    rng = np.random.default_rng(args.seed)
    if args.data == "uniform":
        return tuple(
            rng.standard_normal((m, args.dim), dtype=np.float32)
            for m in (args.n, args.queries, TUNE_QUERIES)
        )
    mix = Mixture(args.dim, args.clusters, args.intrinsic_dim, args.spread, args.noise, rng)
    return mix.sample(args.n, rng), mix.sample(args.queries, rng), mix.sample(TUNE_QUERIES, rng)


def hnsw_of(index: faiss.Index) -> faiss.Index:
    """The IndexHNSW inside a (possibly id-mapped) index, to read and set efSearch."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIDMap | faiss.IndexIDMap2):
        index = faiss.downcast_index(index.index)
    return index


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    hits = [len(set(a[a >= 0]) & set(t)) for a, t in zip(approx, exact, strict=True)]
    return float(np.mean(hits)) / exact.shape[1]


def single_query_latencies(
    index, queries: np.ndarray, search, threads: list[int], block: int = 100
) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """Milliseconds of each one-query call per faiss thread count, and the ids found.

    The settings alternate in blocks of `block` queries (a changing load hits them alike;
    switching per query would make OpenMP rebuild its thread team every call)."""
    ms = {t: np.empty(len(queries)) for t in threads}
    ids = np.empty((len(queries), K), dtype=np.int64)
    for b, start in enumerate(range(0, len(queries), block)):
        order = threads if b % 2 == 0 else threads[::-1]
        for t in order:
            faiss.omp_set_num_threads(t)
            for i in range(start, min(start + block, len(queries))):
                t0 = time.perf_counter()
                _, got = search(index, queries[i : i + 1], K)
                ms[t][i] = 1e3 * (time.perf_counter() - t0)
                ids[i] = got[0]
    return ms, ids


def report(name: str, ms: np.ndarray, recall: float | None) -> str:
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    rec = "" if recall is None else f", recall@{K} {recall:.3f}"
    return f"{name}: p50 {p50:.2f} ms, p95 {p95:.2f} ms, p99 {p99:.2f} ms{rec}"


def compare_ef_construction(args, base, tune_queries, queries, truth, exact, hnsw, search):
    """PROTOTYPE: the same HNSW (M 32) with a larger efConstruction, built with faiss directly,
    efSearch doubled from 16 until recall@10 >= 0.95 on separate tuning queries; its single
    query latency is measured in blocks alternating with the library's index."""
    inner = hnsw_of(hnsw)
    faiss.omp_set_num_threads(args.threads)
    t0 = time.perf_counter()
    proto = faiss.IndexHNSWFlat(args.dim, 32, faiss.METRIC_INNER_PRODUCT)
    proto.hnsw.efConstruction = args.proto_ef_construction
    proto.add(base)
    build_s = time.perf_counter() - t0
    _, tune_truth = exact.search(tune_queries, K)
    ef = 16
    while True:
        proto.hnsw.efSearch = ef
        _, got = proto.search(tune_queries, K)
        if recall_at_k(got, tune_truth) >= TARGET_RECALL or ef >= 4096:
            break
        ef *= 2
    t = args.query_threads[0]
    ms = {"library": [], "prototype": []}
    ids = {}
    for b, start in enumerate(range(0, len(queries), 100)):
        order = (("library", hnsw), ("prototype", proto))
        for name, index in order if b % 2 == 0 else order[::-1]:
            block_ms, block_ids = single_query_latencies(
                index, queries[start : start + 100], search, [t]
            )
            ms[name].append(block_ms[t])
            ids.setdefault(name, []).append(block_ids)
    p95 = {}
    for name, label in (
        ("library", f"library HNSW efConstruction {inner.hnsw.efConstruction} efSearch "
                    f"{inner.hnsw.efSearch}"),
        ("prototype", f"PROTOTYPE HNSW efConstruction {args.proto_ef_construction} efSearch {ef} "
                      f"(built in {build_s:.0f} s)"),
    ):  # fmt: skip
        all_ms = np.concatenate(ms[name])
        p95[name] = float(np.percentile(all_ms, 95))
        recall = recall_at_k(np.concatenate(ids[name]), truth)
        print(report(f"{label}, faiss threads {t}", all_ms, recall))
    print(
        f"RATIO p95 library / prototype efConstruction {args.proto_ef_construction} "
        f"(alternating blocks of 100 queries): {p95['library'] / p95['prototype']:.1f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--data", choices=["clustered", "uniform"], default="clustered")
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=1.0)
    parser.add_argument(
        "--intrinsic-dim", type=int, default=16, help="cluster subspace dimension (0: full rank)"
    )
    parser.add_argument("--noise", type=float, default=0.1, help="isotropic noise (r > 0)")
    parser.add_argument("--threads", type=int, default=2, help="faiss threads for the build")
    parser.add_argument(
        "--query-threads",
        type=int,
        nargs="+",
        default=[1, 2],
        help="faiss threads during single queries (each setting measured, interleaved)",
    )
    parser.add_argument("--exact-queries", type=int, default=100, help="timed exact searches")
    parser.add_argument("--ivf", action="store_true", help="also build/measure an IVF index")
    parser.add_argument(
        "--proto-ef-construction",
        type=int,
        default=80,
        help="also build a PROTOTYPE HNSW with this efConstruction via faiss (0: skip)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    try:
        from sslengine.eval.retrieval import build_index, l2_normalize, search

        source = "sslengine.eval.retrieval.build_index / search"
    except ImportError:  # the eval library predates this bench on some checkouts
        build_index = None
        source = "faiss directly (sslengine.eval.retrieval not importable)"

        def l2_normalize(x: np.ndarray) -> np.ndarray:
            x = np.array(x, dtype=np.float32, order="C", copy=True)
            faiss.normalize_L2(x)
            return x

        def search(index, q, k):
            return index.search(l2_normalize(q), k)

    print(
        machine_report() + f", faiss {faiss.__version__}: {args.threads} threads to build, "
        f"{args.query_threads} to query"
    )
    t0 = time.perf_counter()
    base, queries, tune_queries = (l2_normalize(a) for a in make_data(args))
    shape = f" ({args.clusters} clusters, spread {args.spread}, " + (
        f"intrinsic dim {args.intrinsic_dim}, noise {args.noise})"
        if args.intrinsic_dim
        else "full-rank)"
    )
    print(
        f"{args.n:,} x {args.dim} {args.data} embeddings"
        + (shape if args.data == "clustered" else "")
        + f", {args.queries} held-out queries, made in {time.perf_counter() - t0:.1f} s; "
        f"index via {source}"
    )

    exact = faiss.IndexFlatIP(args.dim)
    exact.add(base)
    t0 = time.perf_counter()
    _, truth = exact.search(queries, K)  # batched: the ground truth, not a latency
    print(f"exact ground truth for {args.queries} queries (batched) in "
          f"{time.perf_counter() - t0:.1f} s")  # fmt: skip

    faiss.omp_set_num_threads(args.threads)
    t0 = time.perf_counter()
    if build_index is not None:
        hnsw = build_index(base, "hnsw", target_recall=TARGET_RECALL, seed=args.seed)
    else:
        hnsw = faiss.IndexHNSWFlat(args.dim, 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 40
        hnsw.add(base)
        hnsw.hnsw.efSearch = 64
    build_s = time.perf_counter() - t0
    inner = hnsw_of(hnsw)
    print(
        f"HNSW (M {inner.hnsw.nb_neighbors(1)}, efConstruction {inner.hnsw.efConstruction})"
        f" built and tuned in {build_s:.1f} s (load {load_average():.1f}); "
        f"library-tuned efSearch {inner.hnsw.efSearch}"
    )
    qt = args.query_threads
    ms, ids = single_query_latencies(hnsw, queries, search, qt)
    recall = recall_at_k(ids, truth)
    while recall < TARGET_RECALL and inner.hnsw.efSearch < 4096:
        print(report(f"  efSearch {inner.hnsw.efSearch}", ms[qt[0]], recall) + " -> below target")
        inner.hnsw.efSearch *= 2
        ms, ids = single_query_latencies(hnsw, queries, search, qt)
        recall = recall_at_k(ids, truth)

    # exact single-query latency on a subset, interleaved with HNSW calls on the same queries
    faiss.omp_set_num_threads(qt[0])
    sub = queries[: args.exact_queries]
    ex_ms, hn_ms = [], []
    for i in range(len(sub)):
        for which, out in ((exact, ex_ms), (hnsw, hn_ms)):
            t0 = time.perf_counter()
            search(which, sub[i : i + 1], K)
            out.append(1e3 * (time.perf_counter() - t0))

    ef = inner.hnsw.efSearch
    for t in qt:
        name = f"HNSW efSearch {ef}, {args.queries} single queries, faiss threads {t}"
        print(report(name, ms[t], recall))
    print(report(f"exact IndexFlatIP, {len(sub)} single queries", np.array(ex_ms), 1.0))
    print(
        f"RATIO exact / HNSW median single-query latency (same {len(sub)} queries, interleaved,"
        f" faiss threads {qt[0]}): {np.median(ex_ms) / np.median(hn_ms):.0f}x"
    )
    if len(qt) > 1:
        p95s = {t: float(np.percentile(ms[t], 95)) for t in qt}
        print(
            "RATIO p95 latency "
            + " / ".join(f"{t} thread(s)" for t in qt[1:] + qt[:1])
            + f": {p95s[qt[-1]] / p95s[qt[0]]:.1f}x"
        )
    for t in qt:
        p95 = float(np.percentile(ms[t], 95))
        fast = "met" if p95 < TARGET_P95_MS else "NOT met"
        good = "met" if recall >= TARGET_RECALL else "NOT met"
        print(
            f"TARGETS (faiss threads {t}): p95 {p95:.2f} ms < {TARGET_P95_MS} ms: {fast}; "
            f"recall@{K} {recall:.3f} >= {TARGET_RECALL}: {good}; build {build_s:.0f} s"
        )

    if args.proto_ef_construction:
        compare_ef_construction(args, base, tune_queries, queries, truth, exact, hnsw, search)

    if args.ivf and build_index is not None:
        faiss.omp_set_num_threads(args.threads)
        t0 = time.perf_counter()
        ivf = build_index(base, "ivf", target_recall=TARGET_RECALL, seed=args.seed)
        ivf_s = time.perf_counter() - t0
        nprobe = faiss.extract_index_ivf(ivf).nprobe
        ms, ids = single_query_latencies(ivf, queries, search, qt)
        print(f"IVF built and tuned in {ivf_s:.1f} s, nprobe {nprobe}")
        for t in qt:
            name = f"IVF, {args.queries} single queries, faiss threads {t}"
            print(report(name, ms[t], recall_at_k(ids, truth)))
    print(machine_report())


if __name__ == "__main__":
    main()
