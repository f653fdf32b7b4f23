"""FAISS query latency and recall on synthetic clustered vectors (d = 512).

    python bench/vectors.py [--sizes 100000 1000000]

For each size: how neuronindex.store.vectors.build indexes it (flat up to 100k, tuned IVF above),
build time, single-query latency p50 / p99, and recall@10 against exact search.
Targets: p50 < 5 ms at 1e5 (exact); p50 < 10 ms with recall@10 >= 0.95 at 1e6.
"""
from __future__ import annotations

import argparse
import time

import faiss
import numpy as np

from neuronindex.store import vectors


def clustered(n: int, d: int, rng, centres: int = 1000) -> np.ndarray:
    c = rng.normal(size=(centres, d)).astype(np.float32)
    out = np.empty((n, d), np.float32)
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        out[s:s + m] = c[rng.integers(0, centres, m)] + 0.5 * rng.normal(size=(m, d)).astype(np.float32)
    return vectors.normalize(out)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    faiss.omp_set_num_threads(2)
    d = 512
    for n in args.sizes:
        rng = np.random.default_rng(0)
        x = clustered(n, d, rng)
        q = vectors.normalize(x[rng.choice(n, args.queries, replace=False)] + 0.05 * rng.normal(size=(args.queries, d)).astype(np.float32))
        t0 = time.perf_counter()
        index, params = vectors.build(x)
        build = time.perf_counter() - t0
        times = []
        found = []
        for v in q:
            t0 = time.perf_counter()
            _, f = index.search(v[None], 10)
            times.append((time.perf_counter() - t0) * 1000)
            found.append(f[0])
        exact = faiss.IndexFlatIP(d)
        exact.add(x)
        _, truth = exact.search(q, 10)
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth)])
        times.sort()
        print(f"n={n:>9,} d={d} {params['type']:4} "
              + (f"nlist={params['nlist']} nprobe={params['nprobe']} " if params["type"] == "ivf" else "")
              + f"build {build:6.1f} s  p50 {np.median(times):6.2f} ms  p99 {times[int(0.99 * (len(times) - 1))]:6.2f} ms  "
              f"recall@10 {recall:.3f}")


if __name__ == "__main__":
    main()
