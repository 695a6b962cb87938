"""Neighbour-mining benchmark: time, peak memory and recall@k of `mine_neighbors` at scale.

Synthetic clustered embeddings (1,000 centres; spread inside a cluster along 32 shared
directions, as real embeddings have a low intrinsic dimension, plus isotropic noise; rows
L2-normalised). Recall is measured against exact search for sampled queries only, since exact
self-search of 1M × 512 would take hours on 2 cores. Target: recall ≥ 0.95 within 10 minutes
and 6 GiB on 2 cores.

    .venv/bin/python -m bench.neighbors [--n 1000000] [--dim 512] [--k 20] [--queries 10000]
"""

from __future__ import annotations

import argparse
import logging
import time

import faiss
import numpy as np

from bench.memory import PeakRss
from fusc_lib.neighbors import choose_index, mine_neighbors


def clustered_vectors(n: int, dim: int, centres: int = 1000, seed: int = 0,
                      chunk: int = 100_000) -> np.ndarray:
    """Unit rows around `centres` random centres, built in chunks to stay at ~N·D·4 bytes."""
    rng = np.random.default_rng(seed)
    centre = rng.standard_normal((centres, dim), dtype=np.float32) / np.sqrt(dim)
    spread = rng.standard_normal((32, dim), dtype=np.float32) / np.sqrt(dim)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        rows = min(chunk, n - start)
        x = centre[rng.integers(0, centres, rows)]
        x += 0.12 * rng.standard_normal((rows, 32), dtype=np.float32) @ spread
        x += 0.6 / np.sqrt(dim) * rng.standard_normal((rows, dim), dtype=np.float32)
        out[start:start + rows] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def recall_at_k(vectors: np.ndarray, indices: np.ndarray, queries: np.ndarray, k: int) -> float:
    """Share of each sampled query's exact k neighbours (self left out) that were found."""
    truth = faiss.knn(vectors[queries], vectors, k + 1, metric=faiss.METRIC_INNER_PRODUCT)[1]
    hits = 0
    for query, found, exact in zip(queries, indices[queries], truth):
        hits += len(np.intersect1d(found, exact[exact != query][:k]))
    return hits / (len(queries) * k)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--exact-max", type=int, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads")
    vectors = clustered_vectors(args.n, args.dim)
    print(choose_index(args.n, exact_max=args.exact_max).describe())
    with PeakRss() as memory:
        start = time.perf_counter()
        indices, _ = mine_neighbors(vectors, args.k, exact_max=args.exact_max)
        seconds = time.perf_counter() - start
    queries = np.random.default_rng(1).choice(args.n, min(args.queries, args.n), replace=False)
    recall = recall_at_k(vectors, indices, queries, args.k)
    print(f"build + search: {seconds / 60:.2f} min ({seconds:.0f} s)")
    print(f"peak RSS: {memory.peak_bytes / 2**30:.2f} GiB (input vectors "
          f"{vectors.nbytes / 2**30:.2f} GiB)")
    print(f"recall@{args.k} on {len(queries):,} queries: {recall:.4f}")


if __name__ == "__main__":
    main()
