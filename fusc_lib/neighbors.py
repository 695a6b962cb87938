"""The k nearest neighbours of every embedding, the input of the FUSC loss (stage 2).

Vectors are L2-normalised float32, so inner product is cosine similarity. Up to `EXACT_MAX`
vectors the search is exact (`IndexFlatIP`, one BLAS product per block); above it an IVF index
whose `nprobe` is calibrated on the data itself against exact search of a sample of queries,
so the promised recall holds for the embeddings at hand rather than for a benchmark's. The IVF
lists hold 8-bit codes of the vectors (IVF-SQ8: D bytes per vector, a quarter of the vectors
themselves; not of their residuals, whose training would copy the sample once more), and their
candidates are re-ranked by exact inner product with the vectors the caller holds anyway, so the
search adds no second N × D float32 copy (at 50,000 × 1280 an IVF-Flat copy was 244 MiB), and
queries go through in blocks, so what the search holds beside the space does not grow with N.
Measurements behind the numbers: `bench/neighbors.py`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import faiss
import numpy as np

# Exact self-search costs N²·D: on 2 CPU cores 40,000 × 512 takes ~20 s, where IVF takes ~6 s.
# On a GPU exact search of 1M × 512 takes seconds, so the switch comes much later there.
EXACT_MAX_CPU = 40_000
EXACT_MAX_GPU = 2_000_000
TARGET_RECALL = 0.95
CALIBRATION_QUERIES = 500
CALIBRATION_K = 20  # the recall is measured at this k (recall@20), whatever k is mined
TRAIN_PER_LIST = 40  # faiss asks for ≥ 39 training points per list
REFINE_FACTOR = 2  # IVF-SQ8 candidates per neighbour kept, re-ranked by exact inner product
REFINE_ROWS = 64  # queries re-ranked at once: 64 × 2·21 × 1280 float32 = 14 MB
SEARCH_ROWS = 8_192  # queries the index searches at once: its per-query lists stay small

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexChoice:
    """Which index `mine_neighbors` builds for N vectors, for logs and for the caller's budget."""

    kind: str  # "flat" (exact) or "ivf"
    n: int
    gpu: bool
    nlist: int = 0
    train_size: int = 0

    def describe(self) -> str:
        where = "GPU" if self.gpu else "CPU"
        if self.kind == "flat":
            return f"exact IndexFlatIP over {self.n:,} vectors on {where}"
        return (f"IVF{self.nlist},SQ8 (inner product, re-ranked exactly) over {self.n:,} "
                f"vectors on {where}, trained on {self.train_size:,}, nprobe calibrated for "
                f"recall ≥ {TARGET_RECALL}")


def choose_index(n: int, *, exact_max: int | None = None, use_gpu: bool | None = None) -> IndexChoice:
    """Exact up to `exact_max` vectors; IVF with nlist ≈ 4·√N above, which balances the cost
    of the coarse search (nlist per query) against the list scans (nprobe·N/nlist per query)."""
    gpu = _want_gpu(use_gpu)
    limit = exact_max if exact_max is not None else (EXACT_MAX_GPU if gpu else EXACT_MAX_CPU)
    if n <= limit:
        return IndexChoice("flat", n, gpu)
    nlist = max(1, min(int(4 * math.sqrt(n)), n // TRAIN_PER_LIST))
    return IndexChoice("ivf", n, gpu, nlist=nlist, train_size=min(n, TRAIN_PER_LIST * nlist))


def mine_neighbors(vectors: np.ndarray, k: int, *, exact_max: int | None = None,
                   use_gpu: bool | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices (N, k) int64 and cosine similarities (N, k) float32 of each vector's neighbours,
    best first, the vector itself left out.

    Self is dropped by id, not by rank: with duplicates, an identical twin may come first.
    """
    x = _unit_float32(vectors)
    if not 0 < k < len(x):
        raise ValueError(f"k = {k} needs 0 < k < N = {len(x)}")
    choice = choose_index(len(x), exact_max=exact_max, use_gpu=use_gpu)
    if choice.kind == "flat" and not choice.gpu:  # block by block, without an index's copy of x
        similarities, indices = faiss.knn(x, x, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
    elif choice.kind == "flat":
        similarities, indices = _build(x, choice, seed).search(x, k + 1)
    else:
        similarities, indices = _refined_search(_build(x, choice, seed), x, x, k + 1)
    missing = (indices < 0).any(axis=1)
    if missing.any():  # an approximate search can come back short; rare, so redo those exactly
        similarities[missing], indices[missing] = faiss.knn(
            x[missing], x, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
    return _drop_self(indices, similarities, k)


def _want_gpu(use_gpu: bool | None) -> bool:
    available = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    if use_gpu and not available:
        raise RuntimeError("use_gpu=True but this faiss has no GPU (install faiss-gpu)")
    return available if use_gpu is None else use_gpu


def _unit_float32(vectors: np.ndarray) -> np.ndarray:
    """Contiguous float32 unit rows; copies only when the input is not that already (the norms
    by einsum: `np.linalg.norm` would square all of x into a second N × D array first)."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    if np.abs(norms - 1).max(initial=0) > 1e-3:
        x = x / norms.clip(1e-12)[:, None]
    return x


def _build(x: np.ndarray, choice: IndexChoice, seed: int) -> faiss.Index:
    """The index `choice` names, holding x: exact on GPU, or IVF (CPU or GPU)."""
    if choice.kind == "flat":
        index = _to_gpu(faiss.IndexFlatIP(x.shape[1]))
        index.add(x)
        return index
    index = _train_ivf(x, choice, seed)
    index.add(x)
    _calibrate_nprobe(index, x, choice, seed)
    return index


def _to_gpu(index: faiss.Index) -> faiss.Index:
    return faiss.index_cpu_to_all_gpus(index)


def _train_ivf(x: np.ndarray, choice: IndexChoice, seed: int) -> faiss.Index:
    """IVF-SQ8: one byte per dimension per vector; `_refined_search` re-ranks exactly."""
    quantizer = faiss.IndexFlatIP(x.shape[1])
    index = faiss.IndexIVFScalarQuantizer(quantizer, x.shape[1], choice.nlist,
                                          faiss.ScalarQuantizer.QT_8bit,
                                          faiss.METRIC_INNER_PRODUCT)
    index.by_residual = False  # codes of the vectors themselves: no N_train × D residual copy
    index.cp.seed = seed
    index.cp.niter = 10  # k-means converges enough for routing; 25 iterations cost 2.5× the time
    if choice.gpu:
        index = _to_gpu(index)
    sample = np.random.default_rng(seed).choice(len(x), choice.train_size, replace=False)
    index.train(x[np.sort(sample)])
    return index


def _calibrate_nprobe(index: faiss.Index, x: np.ndarray, choice: IndexChoice, seed: int,
                      k: int = CALIBRATION_K) -> int:
    """The smallest nprobe on a 1.5× ladder whose recall@k on sampled queries reaches the target.

    Exact search for a few hundred queries costs about as much as one IVF search of N/100.
    """
    rng = np.random.default_rng(seed + 1)
    queries = x[rng.choice(len(x), min(CALIBRATION_QUERIES, len(x)), replace=False)]
    truth = faiss.knn(queries, x, k, metric=faiss.METRIC_INNER_PRODUCT)[1]
    nprobe = 4
    while True:
        faiss.ParameterSpace().set_index_parameter(index, "nprobe", nprobe)
        recall = _recall(_refined_search(index, queries, x, k)[1], truth)
        if nprobe >= choice.nlist or recall >= TARGET_RECALL:
            log.info("IVF%d: nprobe %d gives recall@%d %.3f on %d queries",
                     choice.nlist, nprobe, k, recall, len(queries))
            return nprobe
        nprobe = min(choice.nlist, math.ceil(nprobe * 1.5))


def _refined_search(index: faiss.Index, queries: np.ndarray, x: np.ndarray, k: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, indices), each (Q, k), of `queries` among the rows of `x` (the vectors
    `index` holds codes of): REFINE_FACTOR × k candidates from the index, re-ranked by exact
    inner product, SEARCH_ROWS queries at a time. A query short of candidates keeps index -1."""
    similarities = np.empty((len(queries), k), dtype=np.float32)
    indices = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), SEARCH_ROWS):
        block = queries[start:start + SEARCH_ROWS]
        candidates = index.search(block, REFINE_FACTOR * k)[1]
        exact = _exact_products(block, candidates, x)
        best = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        similarities[start:start + len(block)] = np.take_along_axis(exact, best, axis=1)
        indices[start:start + len(block)] = np.take_along_axis(candidates, best, axis=1)
    return similarities, indices


def _exact_products(queries: np.ndarray, candidates: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(Q, C) float32 inner products of each query with its candidate rows of `x`, -inf where
    the index found none (-1), REFINE_ROWS queries at a time."""
    exact = np.full(candidates.shape, -np.inf, dtype=np.float32)
    for start in range(0, len(queries), REFINE_ROWS):
        block = candidates[start:start + REFINE_ROWS]
        found = block >= 0
        rows = x[np.where(found, block, 0)]  # (rows, candidates, D)
        products = np.einsum("rd,rcd->rc", queries[start:start + len(block)], rows)
        exact[start:start + len(block)] = np.where(found, products, -np.inf)
    return exact


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of the true neighbours found, row by row (order ignored)."""
    hits = sum(len(np.intersect1d(f, t)) for f, t in zip(found, truth))
    return hits / truth.size


def _drop_self(indices: np.ndarray, similarities: np.ndarray, k: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's own id; where self is absent (many duplicates, or a miss of the
    approximate index), remove the last column instead."""
    own = indices == np.arange(len(indices))[:, None]
    own[~own.any(axis=1), -1] = True
    own &= np.cumsum(own, axis=1) == 1  # only the first match, should faiss repeat an id
    keep = ~own
    return (indices[keep].reshape(-1, k).astype(np.int64),
            similarities[keep].reshape(-1, k).astype(np.float32))
