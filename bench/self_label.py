"""Self-labeling, frozen against network mode, from the same cluster models.

Stage 3 alone moves the scores by a few points, less than a fresh SSL model per seed does, so
this benchmark holds everything before it fixed: it takes a finished workdir (e.g. of
`fusc run --workdir W ../shared/data/african-planes/images --clusters 4`), trains FUSC heads with
several seeds on its current embedding, and self-labels each in both modes. The labels only
score (purity, NMI, Hungarian accuracy against `view`, smallest cluster, NMI against `site`);
prints one table, mean [min–max] over seeds, with each mode's minutes.

    .venv/bin/python -m bench.self_label --workdir W \
        --labels ../shared/data/african-planes/labels.csv [--embedding KEY]
"""

from __future__ import annotations

import argparse
import time

from bench.quality import summarise
from fusc_lib.cluster_model import ClusterModel
from fusc_lib.clustering_space import clustering_space
from fusc_lib.config import ClusterConfig, NeighborsConfig, SelfLabelConfig
from fusc_lib.diagnostics import clustering_scores
from fusc_lib.labels import ScanLabels, labels_of, load_labels
from fusc_lib.store import Workdir
from jobs.cluster import run_cluster
from jobs.neighbors import run_neighbors
from jobs.run import self_label_flow


def scores(workdir: Workdir, version: str, labels: ScanLabels) -> dict[str, float]:
    """Scores of a cluster model's predictions on the embedding it reads."""
    model = ClusterModel.load(workdir, version)
    space = clustering_space(workdir, model.embedding)
    clusters = model.head.predict(space.vectors).argmax(dim=1).numpy()
    views, sites = labels_of(labels, space.image_ids)
    return clustering_scores(views, sites, clusters)


def one_seed(workdir: Workdir, embedding: str, labels: ScanLabels, clusters: int, seed: int,
             network_epochs: int) -> dict[str, dict]:
    start = run_cluster(workdir, ClusterConfig(embedding=embedding, clusters=clusters,
                                               seed=seed)).version
    results = {"FUSC heads (input)": scores(workdir, start, labels)}
    for mode in ("frozen", "network"):
        started = time.monotonic()
        outcome = self_label_flow(workdir, SelfLabelConfig(cluster_model=start, mode=mode, seed=seed,
                                                           network_epochs=network_epochs))
        results[f"+ self-label, {mode}"] = {**scores(workdir, outcome.written, labels),
                                            "minutes": (time.monotonic() - started) / 60,
                                            "accepted": float(outcome.accepted)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a finished `fusc run` workdir")
    parser.add_argument("--labels", required=True, help="CSV with file, view, site")
    parser.add_argument("--embedding", help="embedding key to cluster [default: the current "
                                            "model's]")
    parser.add_argument("--clusters", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--network-epochs", type=int, default=10)
    args = parser.parse_args()
    workdir = Workdir(args.workdir)
    labels = load_labels(workdir, args.labels)
    embedding = args.embedding or ClusterModel.load(workdir).embedding
    # mined again: the stored ones may be of older vectors
    run_neighbors(workdir, NeighborsConfig(embedding=embedding))
    runs = [one_seed(workdir, embedding, labels, args.clusters, seed, args.network_epochs)
            for seed in args.seeds]
    print(f"\n{args.workdir}, {args.clusters} clusters, seeds {args.seeds} "
          "(labels used only to score; rejected results scored as written)")
    summarise(runs)


if __name__ == "__main__":
    main()
