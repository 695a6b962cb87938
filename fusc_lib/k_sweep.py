"""Choosing the number of clusters K without labels: train the FUSC heads at each K with
several seeds and prefer the K whose clusters come back the same whatever the seed.

Stability-based model selection (Ben-Hur, Elisseeff & Guyon 2002; Lange et al. 2004): too
small a K merges views in a different way each run, too large a K splits them at random, and
the K that matches the data's structure is found again by every seed. The FUSC loss is
reported but not used to choose: its entropy term grows with log K, so it falls as K grows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from fusc_lib.clustering import TrainedHead
from fusc_lib.evaluation import scores
from fusc_lib.metrics import size_entropy, stability
from schemas.metrics import Scores, Sweep, SweepPoint

MIN_SEEDS = 3  # stability needs several runs; the sweep uses at least this many seeds per K
TIE = 0.02  # stabilities this close count as equal; then the larger K wins

TrainHeads = Callable[[int, int], TrainedHead]  # (K, seed) -> the kept head of one training


def sweep_seeds(seeds: int) -> int:
    """Seeds per K: those asked for, at least MIN_SEEDS."""
    return max(seeds, MIN_SEEDS)


def sweep(ks: Sequence[int], seeds: int, train: TrainHeads,
          labels: Sequence[str | None] | None = None) -> Sweep:
    """Train `train(k, seed)` for every K in `ks` and seed 0..sweep_seeds(seeds)-1; each
    point holds the means over seeds. `labels` (N,) per scan, None where unlabelled, scores the
    clusterings too (never used to choose)."""
    points = [_point(k, [train(k, seed) for seed in range(sweep_seeds(seeds))], labels)
              for k in ks]
    chosen, reason = choose_k(points)
    return Sweep(points=points, chosen_k=chosen, reason=reason)


def _point(k: int, heads: list[TrainedHead], labels: Sequence[str | None] | None) -> SweepPoint:
    clusterings = [head.assignments for head in heads]
    sizes = [np.bincount(c, minlength=k) for c in clusterings]
    return SweepPoint(
        k=k, seeds=len(heads),
        fusc_loss=float(np.mean([h.head_losses[h.head_index].total for h in heads])),
        size_entropy=float(np.mean([size_entropy(s) for s in sizes])),
        stability=stability(clusterings),
        smallest_cluster_share=float(np.mean([s.min() / s.sum() for s in sizes])),
        empty_clusters=float(np.mean([(s == 0).sum() for s in sizes])),
        scores=_mean_scores(labels, clusterings))


def _mean_scores(labels: Sequence[str | None] | None, clusterings: list[np.ndarray]
                 ) -> Scores | None:
    if labels is None:
        return None
    known = np.asarray([label is not None for label in labels])
    if known.sum() < 2:
        return None
    named = [label for label in labels if label is not None]
    runs = [scores(named, c[known]).model_dump() for c in clusterings]
    return Scores(**{name: float(np.mean([run[name] for run in runs])) for name in runs[0]})


def choose_k(points: Sequence[SweepPoint]) -> tuple[int, str]:
    """The most stable K among those without an empty cluster (all of them if every K has
    one); within TIE of the best, the largest K: a clinician merges two clusters of one view
    in a click, but cannot split a cluster holding two. Returns (K, the reason in words)."""
    usable = [p for p in points if p.empty_clusters == 0] or list(points)
    best = max(p.stability for p in usable)
    chosen = max((p for p in usable if p.stability >= best - TIE), key=lambda p: p.k)
    left_out = sorted(p.k for p in points if p not in usable)
    reason = (f"K = {chosen.k}: its clusters are the most stable across seeds (mean ARI "
              f"{chosen.stability:.2f}; best {best:.2f}, ties within {TIE} go to the larger K)")
    if left_out:
        reason += f"; K = {', '.join(map(str, left_out))} left clusters empty"
    return chosen.k, reason
