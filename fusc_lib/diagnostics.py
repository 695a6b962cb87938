"""Label-using checks: printed for the user, never used to train.

Does the embedding group views (kNN accuracy) or hospitals (NMI of a k-means against site)?
Computed for the same backbone with random weights, with ImageNet weights and after SSL, so a run
shows what self-supervision bought. And how do a cluster model's assignments score against
view labels (purity, NMI, Hungarian accuracy, smallest cluster) and against site?
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import normalized_mutual_info_score

from fusc_lib.labels import ScanLabels, labels_of, load_labels
from fusc_lib.metrics import embedding_report, score_clusters
from fusc_lib.models.encoder import Encoder, load_encoder, pretrained_encoder
from fusc_lib.preprocess import decode_png
from fusc_lib.store import Workdir


def labelled_scans(workdir: Workdir, labels: ScanLabels
                   ) -> tuple[list[np.ndarray], list[str], list[str]]:
    """The stored images of the labelled scans, with their view and site."""
    table = workdir.scans(["image_id", "image"])
    pairs = [(i, data) for i, data in zip(table.column("image_id").to_pylist(),
                                          table.column("image").to_pylist())
             if i in labels.views]
    views, sites = labels_of(labels, [i for i, _ in pairs])
    return [decode_png(data) for _, data in pairs], views, sites


def embed_images(encoder: Encoder, images: list[np.ndarray], batch_size: int = 64) -> np.ndarray:
    encoder.eval()
    with torch.inference_mode():
        parts = [encoder(encoder.prepare(images[i:i + batch_size])).numpy()
                 for i in range(0, len(images), batch_size)]
    return np.concatenate(parts)


def representation_report(workdir: Workdir, labels_csvs: list[str | Path], run_dir: str
                          ) -> dict[str, dict[str, float]]:
    """kNN accuracy vs view and k-means NMI vs site (and view) for random, ImageNet and SSL."""
    images, views, sites = labelled_scans(workdir, load_labels(workdir, labels_csvs))
    if len(set(views)) < 2:
        raise ValueError("the labels name fewer than two views of this workdir's scans")
    trained = load_encoder(run_dir)
    name = trained.backbone.name
    encoders = {"random init": pretrained_encoder(name, "random", trained.input_size)}
    try:
        encoders["ImageNet init"] = pretrained_encoder(name, "imagenet", trained.input_size)
    except (ValueError, ImportError):  # no local ImageNet weights for this backbone
        pass
    encoders["after SSL"] = trained
    return {variant: {"scans": len(images),
                      **embedding_report(embed_images(encoder, images), views, sites)}
            for variant, encoder in encoders.items()}


def clustering_scores(views: list[str], sites: list[str], clusters: np.ndarray
                      ) -> dict[str, float]:
    """Purity, NMI, Hungarian accuracy, ARI and smallest cluster against view; NMI vs site."""
    scores = score_clusters(views, clusters).as_dict()
    scores["nmi_site"] = float(normalized_mutual_info_score(sites, clusters))
    return scores


def assigned_clusters(workdir: Workdir, version: str) -> tuple[list[str], np.ndarray]:
    table = workdir.assignments(version, ["image_id", "cluster_id"])
    return table.column("image_id").to_pylist(), table.column("cluster_id").to_numpy()


def site_nmi(workdir: Workdir, version: str) -> float:
    """NMI of a model's clusters against the `sites` table (given or inferred): how much the
    clusters follow hospitals/machines, without any labels. Lower is better."""
    ids, clusters = assigned_clusters(workdir, version)
    site_of = workdir.site_of()
    return float(normalized_mutual_info_score([site_of[i] for i in ids], clusters))
