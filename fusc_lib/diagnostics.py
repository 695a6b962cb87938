"""Label-using checks of a representation: printed for the user, never used to train.

Does the embedding group views (kNN accuracy) or hospitals (NMI of a k-means against site)?
Computed for the same backbone with random weights, with ImageNet weights and after SSL, so a run
shows what self-supervision bought.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from fusc_lib.metrics import embedding_report
from fusc_lib.models.encoder import Encoder, load_encoder, pretrained_encoder
from fusc_lib.preprocess import decode_png
from fusc_lib.store import Workdir
from schemas.tables import SCANS


def read_labels(paths: list[str | Path]) -> dict[str, tuple[str, str]]:
    """file name -> (view, site), from CSVs with `file` or `path`, `view` and `site` columns."""
    labels = {}
    for path in paths:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        key = "file" if rows and "file" in rows[0] else "path"
        labels.update({Path(row[key]).name: (row["view"], row.get("site") or "unknown")
                       for row in rows})
    return labels


def labelled_scans(workdir: Workdir, labels: dict[str, tuple[str, str]]
                   ) -> tuple[list[np.ndarray], list[str], list[str]]:
    """The stored images of the scans named in `labels`, with their view and site."""
    table = workdir.table(SCANS).to_lance().to_table(columns=["source_uri", "image"])
    images, views, sites = [], [], []
    for uri, data in zip(table.column("source_uri").to_pylist(), table.column("image").to_pylist()):
        label = labels.get(Path(uri).name)
        if label:
            images.append(decode_png(data))
            views.append(label[0])
            sites.append(label[1])
    return images, views, sites


def embed_images(encoder: Encoder, images: list[np.ndarray], batch_size: int = 64) -> np.ndarray:
    encoder.eval()
    with torch.inference_mode():
        parts = [encoder(encoder.prepare(images[i:i + batch_size])).numpy()
                 for i in range(0, len(images), batch_size)]
    return np.concatenate(parts)


def representation_report(workdir: Workdir, labels_csvs: list[str | Path], run_dir: str
                          ) -> dict[str, dict[str, float]]:
    """kNN accuracy vs view and k-means NMI vs site (and view) for random, ImageNet and SSL."""
    images, views, sites = labelled_scans(workdir, read_labels(labels_csvs))
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
