"""`fusc report`: one HTML page showing what each cluster of a model holds.

Reads the model's evaluation (metrics.json; `jobs.run.report_flow` runs `fusc evaluate` first
when there is none, or when labels are given), its assignments, the scans' pictures, pseudo-views and sites, and the loss
logs of the training stages; writes `reports/<version>/report.html` with every picture inside.
Large archives are sampled: `montage` scans per cluster and side, `map_points` on the map.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pyarrow.parquet as pq

from fusc_lib.artifacts import exists, read_bytes, write_bytes
from fusc_lib.assigned_model import AssignedModel
from fusc_lib.cluster_model import ClusterModel, model_info
from fusc_lib.config import ReportConfig
from fusc_lib.evaluation import score_rows
from fusc_lib.io import scan_name
from fusc_lib.layout import (
    INGEST_CONFIG,
    LOSS_LOG,
    MATCHED_LABELS,
    PREPROCESS,
    REPORT_PAGE,
    SSL_CONFIG,
)
from fusc_lib.models.encoder import parse_embedding_key
from fusc_lib.report import figures
from fusc_lib.report.embedding_map import map_2d
from fusc_lib.report.page import ClusterCard, Thumb, colours_of, map_data, mix, palette, render
from fusc_lib.report.thumbnails import thumbnails
from fusc_lib.ssl_training import parse_loss_csv
from fusc_lib.store import Workdir
from schemas.metrics import Evaluation

MONTAGE_SIDE = 96  # pixels of a montage thumbnail
MAP_THUMB_SIDE = 80  # pixels of the scan shown when a map point is hovered


class ScanFacts:
    """What the page names about each scan: file name, pseudo-view, label, and site: the label
    file's where it gives one, else the workdir's (given or inferred)."""

    def __init__(self, workdir: Workdir, data: AssignedModel, version: str):
        scans = workdir.scans(["image_id", "source_uri", "frame", "pseudo_view"])
        ids = scans.column("image_id").to_pylist()
        self.title = {i: scan_name(uri, frame)
                      for i, uri, frame in zip(ids, scans.column("source_uri").to_pylist(),
                                               scans.column("frame").to_pylist())}
        self.pseudo_view = dict(zip(ids, scans.column("pseudo_view").to_pylist()))
        labels_path = f"{workdir.report_dir(version)}/{MATCHED_LABELS}"
        labelled = pq.read_table(labels_path) if exists(labels_path) else None
        self.label = (dict(zip(labelled.column("image_id").to_pylist(),
                               labelled.column("view").to_pylist())) if labelled else {})
        given = (dict(zip(labelled.column("image_id").to_pylist(),
                          labelled.column("site").to_pylist())) if labelled else {})
        self.site = {i: given.get(i) or site for i, site in zip(data.image_ids, data.sites)}

    def view(self, image_id: str) -> str:
        """The label where there is one, else the pseudo-view."""
        return self.label.get(image_id) or self.pseudo_view[image_id]


def run_report(workdir: Workdir, config: ReportConfig, data: AssignedModel,
               evaluation: Evaluation, progress: Callable[[str], None] = lambda _: None) -> str:
    """Write the report of the cluster model `data` holds, as `evaluation` scored it;
    returns its path."""
    model = data.model
    facts = ScanFacts(workdir, data, model.version)
    progress("montages")
    cards = cluster_cards(workdir, data, facts, config.montage)
    progress(f"map of {min(config.map_points, len(data.image_ids))} scans (UMAP)")
    html = render(
        version=model.version, created_at=evaluation.created_at, embedding=model.embedding,
        scans=len(data.image_ids), n_clusters=model.n_clusters,
        labels_source=evaluation.labels_source, evaluation=evaluation, clusters=cards,
        thumb_side=MONTAGE_SIDE, map_thumb_side=MAP_THUMB_SIDE,
        sizes_svg=figures.cluster_sizes(evaluation.label_free.sizes, palette(model.n_clusters)),
        map_data=embedding_map(workdir, data, facts, config.map_points),
        map_count=min(config.map_points, len(data.image_ids)),
        map_modes=["cluster", "site", "view"],
        score_rows=score_rows(evaluation) if evaluation.views else [],
        confusion_svg=figures.confusion_matrix(evaluation.views.confusion)
        if evaluation.views else None,
        sweep_svg=figures.k_sweep(evaluation.sweep) if evaluation.sweep else None,
        loss_svg=figures.loss_curves(loss_curves(workdir, model)),
        configs=configs(workdir, model, evaluation))
    output = config.output or f"{workdir.report_dir(model.version)}/{REPORT_PAGE}"
    write_bytes(output, html.encode())
    return output


def cluster_cards(workdir: Workdir, data: AssignedModel, facts: ScanFacts, montage: int
                  ) -> list[ClusterCard]:
    """One card per cluster: size, its `montage` most and least confident scans, its
    pseudo-view and site mix."""
    view_colours = colours_of(list(facts.pseudo_view.values()))
    site_colours = colours_of(list(facts.site.values()))
    colours, total = palette(data.model.n_clusters), len(data.image_ids)
    ids = np.asarray(data.image_ids)
    cards, shown = [], {}
    for cluster in range(data.model.n_clusters):
        members = np.flatnonzero(data.clusters == cluster)
        by_confidence = members[np.argsort(-data.confidences[members], kind="stable")]
        most, least = by_confidence[:montage], by_confidence[::-1][:montage]
        shown[cluster] = (most, least)
        cards.append(ClusterCard(
            id=cluster, name=data.model.names.get(cluster), size=len(members),
            share=len(members) / total, colour=colours[cluster],
            mean_confidence=float(data.confidences[members].mean()) if len(members) else 0.0,
            view_mix=mix([facts.pseudo_view[i] for i in ids[members]], view_colours),
            site_mix=mix([facts.site[i] for i in ids[members]], site_colours)))
    wanted = sorted({ids[r] for most, least in shown.values() for r in (*most, *least)})
    uris = thumbnails(workdir, wanted, MONTAGE_SIDE)
    for card in cards:
        most, least = shown[card.id]
        card.most, card.least = ([Thumb(uris[ids[r]], float(data.confidences[r]),
                                        facts.title[ids[r]]) for r in rows]
                                 for rows in (most, least))
    return cards


def embedding_map(workdir: Workdir, data: AssignedModel, facts: ScanFacts, points: int) -> dict:
    """The map's data for a seeded sample of at most `points` assigned scans."""
    sample = np.sort(np.random.default_rng(0).permutation(len(data.image_ids))[:points])
    ids = [data.image_ids[r] for r in sample]
    coordinates = map_2d(data.space.vectors[data.rows[sample]])
    uris = thumbnails(workdir, ids, MAP_THUMB_SIDE)
    return map_data(coordinates, data.clusters[sample], data.model.n_clusters,
                    [facts.site[i] for i in ids], [facts.view(i) for i in ids],
                    [uris[i] for i in ids])


def loss_curves(workdir: Workdir, model: ClusterModel) -> dict[str, list[float]]:
    """Loss per epoch of every SSL run of the workdir (loss.csv), then of the model's heads
    and of the models it was made from (model.json `history`), oldest first."""
    curves = {}
    for run in workdir.ssl_runs(LOSS_LOG):
        rows = parse_loss_csv(read_bytes(f"{workdir.ssl_run_dir(run)}/{LOSS_LOG}"))
        curves[f"SSL / network run {run}"] = [row["loss"] for row in rows]
    chain, version = [], model.version
    while version:
        meta = model_info(workdir, version)
        chain.append((meta.get("notes", {}).get("stage", "cluster"), version,
                      meta.get("head", {}).get("history", [])))
        version = meta.get("notes", {}).get("input")
    for stage, version, history in reversed(chain):
        curves[f"{stage} heads {version}"] = history
    return curves


def configs(workdir: Workdir, model: ClusterModel, evaluation: Evaluation) -> dict[str, str]:
    """Every configuration behind the model, as indented JSON, by what it configured."""
    run, _ = parse_embedding_key(model.embedding)
    found = {"cluster model (model.json)": model_info(workdir, model.version),
             f"SSL run {run}": _json_at(f"{workdir.ssl_run_dir(run)}/{SSL_CONFIG}"),
             "ingest": workdir.read_json(*INGEST_CONFIG),
             "preprocess": workdir.read_json(PREPROCESS),
             "weights (sha256)": evaluation.weights}
    return {name: json.dumps(value, indent=1) for name, value in found.items() if value}


def _json_at(path: str) -> dict | None:
    return json.loads(read_bytes(path)) if exists(path) else None
