"""Clustering quality of `fusc run` against view labels, beside k-means on the same embeddings.

For each seed: a fresh workdir, the whole `fusc run` (ingest → SSL → embed → sites →
neighbors → cluster → self-label → assign) timed end to end with no labels and no site given;
then, with the labels (used only to score): purity, NMI and Hungarian accuracy against `view`,
the smallest cluster's share, and NMI against `site` (lower: less hospital in the clusters).
Baselines on the run's own embeddings: k-means on them as stored (the paper's baseline), and
k-means on the site-centred space. Prints one table, mean [min–max] over seeds.

    .venv/bin/python -m bench.quality --dataset african-planes --clusters 4 --seeds 0 1 2
    .venv/bin/python -m bench.quality --dataset fetal-planes-db --clusters 5
    .venv/bin/python -m bench.quality --cluster-mode network --seeds 0   # the paper's mode
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from fusc_lib.cluster_model import ClusterModel
from fusc_lib.clustering_space import clustering_space
from fusc_lib.config import RunConfig, SSLConfig
from fusc_lib.diagnostics import assigned_clusters, clustering_scores
from fusc_lib.labels import labels_of, load_labels
from fusc_lib.metrics import kmeans_clusters
from fusc_lib.store import Workdir
from jobs.run import run_all

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def one_seed(dataset: Path, clusters: int, seed: int, profile: str,
             cluster_mode: str = "frozen") -> dict[str, dict]:
    with tempfile.TemporaryDirectory(prefix="fusc-quality-") as root:
        store = Workdir(root)
        started = time.monotonic()
        ssl = SSLConfig.from_profile(profile, seed=seed)
        network = {"mode": cluster_mode, "workers": ssl.workers, "use_gpu": ssl.use_gpu,
                   "seed": seed}  # as `fusc run --seed S --cluster-mode M` sets them
        config = RunConfig(ingest={"paths": [str(dataset / "images")]}, ssl=ssl,
                           sites={"seed": seed}, cluster={"clusters": clusters, **network},
                           self_label=network)
        run_all(store, config)
        minutes = (time.monotonic() - started) / 60
        model = ClusterModel.load(store)
        labels = load_labels(store, dataset / "labels.csv")
        ids, assigned = assigned_clusters(store, model.version)
        views, sites = labels_of(labels, ids)
        results = {"fusc run": {**clustering_scores(views, sites, assigned),
                                "minutes": minutes,
                                "self_label": float(model.notes.get("stage") == "self-label")}}
        space = clustering_space(store, model.embedding)
        views, sites = labels_of(labels, space.image_ids)
        results["k-means, embeddings"] = clustering_scores(
            views, sites, kmeans_clusters(space.raw, clusters, seed))
        results["k-means, site-centred"] = clustering_scores(
            views, sites, kmeans_clusters(space.vectors, clusters, seed))
    return results


def summarise(runs: list[dict[str, dict]]) -> None:
    columns = ["purity", "nmi", "accuracy", "smallest_cluster_share", "nmi_site"]
    print("| variant | CP | NMI | ACC | smallest cluster | NMI vs site | minutes |")
    print("|---|---|---|---|---|---|---|")
    for variant in runs[0]:
        cells = []
        for column in [*columns, "minutes"]:
            values = np.asarray([run[variant].get(column, np.nan) for run in runs])
            cells.append("" if np.isnan(values).all() else
                         f"{values.mean():.3f} [{values.min():.3f}–{values.max():.3f}]")
        print(f"| {variant} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="african-planes")
    parser.add_argument("--clusters", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--cluster-mode", default="frozen", choices=["frozen", "network"],
                        help="`fusc run --cluster-mode`: network trains the backbone in the "
                             "cluster and self-label stages too (about 8 minutes more on CPU)")
    args = parser.parse_args()
    runs = []
    for seed in args.seeds:
        runs.append(one_seed(DATA / args.dataset, args.clusters, seed, args.profile,
                             args.cluster_mode))
        print(f"seed {seed}: " + ", ".join(f"{variant} CP {scores['purity']:.3f} NMI "
                                            f"{scores['nmi']:.3f} ACC {scores['accuracy']:.3f}"
                                            for variant, scores in runs[-1].items()), flush=True)
    print(f"\n{args.dataset}, {args.clusters} clusters, seeds {args.seeds}, profile "
          f"{args.profile}, cluster mode {args.cluster_mode} (labels used only to score)")
    summarise(runs)


if __name__ == "__main__":
    main()
