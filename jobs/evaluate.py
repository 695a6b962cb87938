"""`fusc evaluate`: how good a cluster model is, with or without labels.

Reads the model, its assignments, its clustering space (embeddings centred per site) and the
mined neighbours; scores the clusters against labels (a file, or the typed view names) and
their super-classes; runs the k-means baselines on a sample of the labelled scans; retrains
the heads with `seeds` seeds and sweeps K when asked; flags degenerate results. Writes
`reports/<version>/metrics.json` (schemas/metrics.py) and the matched labels beside it.
Runs on the driver, the clustering space in memory: about 6 × N × D float32 at its peak
(100,000 × 1280: 4.2 GB; bench/report.py).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from datetime import UTC, datetime

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.metrics import normalized_mutual_info_score

from fusc_lib.artifacts import exists, read_bytes, write_bytes
from fusc_lib.assigned_model import AssignedModel
from fusc_lib.cluster_model import ClusterModel, model_info
from fusc_lib.clustering import TrainedHead
from fusc_lib.config import EvaluateConfig
from fusc_lib.evaluation import figures_of, flags, label_free, labelled_scores, scores, spread
from fusc_lib.k_sweep import sweep, sweep_seeds
from fusc_lib.labels import ScanLabels, load_labels
from fusc_lib.layout import (
    HEAD_WEIGHTS,
    MATCHED_LABELS,
    METRICS,
)
from fusc_lib.metrics import kmeans_clusters
from fusc_lib.models.encoder import parse_embedding_key, weight_files
from fusc_lib.preprocess import decode_png
from fusc_lib.progress import progress_bar
from fusc_lib.store import Workdir, rows_by_id
from schemas.metrics import (
    Baseline,
    Evaluation,
    LabelledScores,
    SeedRun,
    SeedsSummary,
    Sweep,
)
from schemas.tables import SCANS

PIXEL_SIDE = 32  # raw-pixel baseline: the stored image shrunk to 32 × 32 grey levels


def run_evaluate(workdir: Workdir, config: EvaluateConfig,
                 progress: Callable[[str], None] = lambda _: None,
                 data: AssignedModel | None = None) -> Evaluation:
    """Evaluate a cluster model (`data`, where the caller loaded it already) and write its
    metrics.json; returns what was written.

    Raises ValueError when the model, its assignments, its embeddings or neighbours are
    missing (the message names the command to run), or the label file cannot be read.
    """
    data = data or AssignedModel(workdir, ClusterModel.load(workdir, config.cluster_model))
    model = data.model
    labels = load_labels(workdir, config.labels)
    figures = label_free(data.clusters, model.n_clusters, confidences=data.confidences,
                         fusc_loss=data.fusc_loss(model.head), sites=data.sites)
    views = _labelled(data, labels.views, labels.sites)
    evaluation = Evaluation(
        version=model.version, created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        embedding=model.embedding, n_clusters=model.n_clusters,
        labels_source=labels.source if views else None, label_rows_unmatched=labels.unmatched,
        label_free=figures, views=views,
        super_classes=_labelled(data, labels.super_classes(), labels.sites) if views else None,
        flags=flags(figures, model.n_clusters, _self_label_records(workdir, model)),
        weights=model_weights(workdir, model), config=model.head.metadata())
    if views:
        progress("k-means baselines")
        evaluation.baselines = baselines(workdir, data, labels, config.baseline_scans)
    if config.seeds:
        evaluation.seeds = _seeds(workdir, data, labels, config.seeds)
    if config.sweep:
        evaluation.sweep = _sweep(data, labels if views else None, config)
    _write(workdir, evaluation, data, labels)
    return evaluation


def _sweep(data: AssignedModel, labels: ScanLabels | None, config: EvaluateConfig) -> Sweep:
    """The K sweep on the model's clustering space, one progress step per training."""
    trainings = len(config.sweep) * sweep_seeds(config.seeds)
    with progress_bar("K sweep", total=trainings, unit="trainings") as advance:
        def train(k: int, seed: int) -> TrainedHead:
            head = data.train(k, seed)
            advance(1)
            return head

        views = [labels.views.get(i) for i in data.space.image_ids] if labels else None
        return sweep(config.sweep, config.seeds, train, views)


def _labelled(data: AssignedModel, labels: dict[str, str], sites: dict[str, str]
              ) -> LabelledScores | None:
    """Scores of the assigned scans that carry a label, or None when fewer than two do;
    with NMI against the label file's `sites` where it gives them all."""
    known = np.asarray([i in labels for i in data.image_ids])
    if known.sum() < 2:
        return None
    ids = np.asarray(data.image_ids)[known]
    sizes = np.bincount(data.clusters, minlength=data.model.n_clusters)
    result = labelled_scores([labels[i] for i in ids], data.clusters[known],
                             data.confidences[known], data.model.n_clusters, data.model.names,
                             sizes)
    if all(i in sites for i in ids) and len({sites[i] for i in ids}) > 1:
        result.nmi_site = float(normalized_mutual_info_score([sites[i] for i in ids],
                                                             data.clusters[known]))
    return result


def baselines(workdir: Workdir, data: AssignedModel, labels: ScanLabels, most: int) -> list[Baseline]:
    """k-means with the model's K on a seeded sample of at most `most` labelled scans: on the
    embeddings as stored, on the site-centred ones, and on raw pixels; each beside the model's
    scores on the same sample."""
    labelled = np.flatnonzero([i in labels.views for i in data.image_ids])
    sample = np.sort(np.random.default_rng(0).permutation(labelled)[:most])
    ids = [data.image_ids[i] for i in sample]
    views = [labels.views[i] for i in ids]
    model = scores(views, data.clusters[sample])
    rows = data.rows[sample]
    inputs = {"k-means, embeddings": ("embeddings as stored", data.space.raw[rows]),
              "k-means, site-centred": ("embeddings centred per site", data.space.vectors[rows]),
              "k-means, raw pixels": (f"stored image at {PIXEL_SIDE}×{PIXEL_SIDE}",
                                      pixels(workdir, ids))}
    k = data.model.n_clusters
    return [Baseline(name=name, input=what, scans=len(ids), model_scores=model,
                     scores=scores(views, kmeans_clusters(vectors, k)))
            for name, (what, vectors) in inputs.items()]


def pixels(workdir: Workdir, image_ids: list[str]) -> np.ndarray:
    """(N, PIXEL_SIDE²) grey levels in [0, 1] of the stored images, rows in `image_ids` order."""
    table = rows_by_id(workdir.table_uri(SCANS), image_ids, ["image_id", "image"])
    by_id = dict(zip(table.column("image_id").to_pylist(), table.column("image").to_pylist()))
    small = [cv2.resize(_grey(decode_png(by_id[i])), (PIXEL_SIDE, PIXEL_SIDE),
                        interpolation=cv2.INTER_AREA) for i in image_ids]
    return np.stack(small).reshape(len(image_ids), -1).astype(np.float32) / 255.0


def _grey(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


def _seeds(workdir: Workdir, data: AssignedModel, labels: ScanLabels, n: int) -> SeedsSummary:
    """The heads trained again with seeds 0..n-1: each run's figures, then their spread."""
    weights = {k: v for k, v in model_weights(workdir, data.model).items()
               if not k.endswith(HEAD_WEIGHTS)}  # a retrained head loads no head weights
    runs = []
    with progress_bar("seeds", total=n, unit="trainings") as advance:
        for seed in range(n):
            runs.append(_seed_run(data, labels, seed, weights))
            advance(1)
    return SeedsSummary(runs=runs, spread=spread([figures_of(r.label_free, r.scores)
                                                  for r in runs]))


def _seed_run(data: AssignedModel, labels: ScanLabels, seed: int, weights: dict[str, str]
              ) -> SeedRun:
    """The heads trained again with `seed`: their label-free figures and, with labels, scores."""
    head = data.train(data.model.n_clusters, seed)
    clusters = head.assignments[data.rows]
    figures = label_free(clusters, head.n_clusters,
                         confidences=head.probabilities.max(dim=1).values.numpy()[data.rows],
                         fusc_loss=head.head_losses[head.head_index].total, sites=data.sites)
    known = np.asarray([i in labels.views for i in data.image_ids])
    view_scores = scores([labels.views[i] for i in np.asarray(data.image_ids)[known]],
                         clusters[known]) if known.sum() >= 2 else None
    return SeedRun(seed=seed, config=head.config, weights=weights, label_free=figures,
                   scores=view_scores)


def model_weights(workdir: Workdir, model: ClusterModel) -> dict[str, str]:
    """sha256 of every weight file behind the model, by path: the backbone that made its
    embeddings (an SSL run's, or the ImageNet file of a pip package) and its head."""
    run, _ = parse_embedding_key(model.embedding)
    files = [*weight_files(workdir, run),
             f"{workdir.cluster_model_dir(model.version)}/{HEAD_WEIGHTS}"]
    return {path: hashlib.sha256(read_bytes(path)).hexdigest() for path in files if exists(path)}


def _self_label_records(workdir: Workdir, model: ClusterModel) -> list[dict]:
    """Notes of the self-label stages behind this model: its own when it is one, and every
    rejected try that started from it."""
    records = [model.notes] if model.notes.get("stage") == "self-label" else []
    for version in workdir.cluster_versions():
        notes = model_info(workdir, version).get("notes", {})
        if notes.get("input") == model.version and notes.get("accepted") is False:
            records.append(notes)
    return records


def _write(workdir: Workdir, evaluation: Evaluation, data: AssignedModel, labels: ScanLabels) -> None:
    folder = workdir.report_dir(evaluation.version)
    write_bytes(f"{folder}/{METRICS}",
                json.dumps(evaluation.model_dump(mode="json"), indent=1).encode())
    ids = [i for i in data.image_ids if i in labels.views]
    merged = labels.super_classes()
    table = pa.table({"image_id": ids, "view": [labels.views[i] for i in ids],
                      "site": [labels.sites.get(i) for i in ids],
                      "super_class": [merged[i] for i in ids]})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    write_bytes(f"{folder}/{MATCHED_LABELS}", buffer.getvalue())


def read_evaluation(workdir: Workdir, version: str) -> Evaluation | None:
    """The metrics.json `fusc evaluate` wrote for `version`, or None."""
    path = f"{workdir.report_dir(version)}/{METRICS}"
    return Evaluation.model_validate_json(read_bytes(path)) if exists(path) else None
