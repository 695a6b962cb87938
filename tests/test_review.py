"""The clinicians' review: decisions replayed, suggestions, strays, carrying to a new model, and
`fusc clusters ...` → `fusc export` on a real workdir."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fusc_lib.cli import app
from fusc_lib.cluster_model import ClusterModel, current_version
from fusc_lib.config import ClusterConfig, IngestConfig
from fusc_lib.export import export_table
from fusc_lib.preprocess import workdir_preprocess
from fusc_lib.review import (
    CLUSTER,
    EXCLUDED,
    MOVED,
    SUGGESTED,
    Decision,
    ReviewState,
    carry,
    history,
    record,
    review_state,
    stray_scores,
    suggestions,
)
from jobs.ingest import run_ingest
from jobs.review import Review
from jobs.run import assign_flow, cluster_flow
from tests.archive_run import CLUSTERS, copy_of

runner = CliRunner()


def _replay(*decisions: dict) -> ReviewState:
    state = ReviewState("v")
    for decision in decisions:
        state.apply({"cluster_id": None, "image_id": None, "name": None, **decision})
    return state


def test_replay_names_renames_merges_clears_and_labels_by_precedence():
    state = _replay({"action": "name", "cluster_id": 0, "name": "brain"},
                    {"action": "name", "cluster_id": 1, "name": "4CH"},
                    {"action": "name", "cluster_id": 2, "name": "4CH"},  # merged with 1
                    {"action": "name", "cluster_id": 0, "name": "head"},  # renamed
                    {"action": "name", "cluster_id": 3, "name": "femur"},
                    {"action": "name", "cluster_id": 3, "name": None},  # cleared
                    {"action": "mixed", "cluster_id": 1}, {"action": "mixed", "cluster_id": 2},
                    {"action": "unmixed", "cluster_id": 2},
                    {"action": "move", "image_id": "a", "name": "LVOT"},
                    {"action": "exclude", "image_id": "b"},
                    {"action": "move", "image_id": "c", "name": "x"},
                    {"action": "restore", "image_id": "c"})
    assert state.names == {0: "head", 1: "4CH", 2: "4CH"} and state.mixed == {1}
    assert state.label("a", 0) == ("LVOT", MOVED)
    assert state.label("b", 0) == (None, EXCLUDED)
    assert state.label("c", 1) == ("4CH", CLUSTER)  # restored to its cluster
    assert state.label("d", 3, suggested="femur") == ("femur", SUGGESTED)
    assert state.label("d", 3) == (None, None)


def test_decisions_are_checked_before_they_are_kept():
    with pytest.raises(ValueError, match="give the name"):
        Decision(action="move", model_version="v", image_id="a")
    with pytest.raises(ValueError, match="which cluster"):
        Decision(action="name", model_version="v", name="x")
    with pytest.raises(ValueError, match="unknown review action"):
        Decision(action="delete", model_version="v", cluster_id=1)
    with pytest.raises(ValueError, match="at most"):
        Decision(action="name", model_version="v", cluster_id=1, name="x" * 201)
    assert Decision(action="name", model_version="v", cluster_id=1, name="  ").name is None


def test_suggestions_need_a_majority_of_typed_names():
    views = ["brain"] * 3 + ["unknown"] * 5 + ["4ch", "4ch", "lvot", "rvot"] + ["femur"] * 2
    clusters = np.array([0] * 8 + [1] * 4 + [2] * 2)
    assert suggestions(views, clusters, 3) == {0: ("brain", 1.0), 1: ("4ch", 0.5)}


def test_the_misplaced_scan_is_the_first_stray():
    rng = np.random.default_rng(0)
    centres = np.eye(8)[:2]
    vectors = np.repeat(centres, 10, axis=0) + 0.05 * rng.normal(size=(20, 8))
    vectors[3] = centres[1] + 0.05 * rng.normal(size=8)  # a cluster-1 scan put in cluster 0
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    clusters = np.array([0] * 10 + [1] * 10)
    confidences = np.full(20, 0.9)
    confidences[3] = 0.55
    neighbor_clusters = np.repeat(clusters[:, None], 5, axis=1)
    neighbor_clusters[3] = 1
    scores = stray_scores(vectors, clusters, confidences, neighbor_clusters)
    assert int(np.argmax(scores[:10])) == 3 and 0 <= scores.min() and scores.max() <= 1


def test_carry_follows_clusters_by_overlap_and_lists_what_it_cannot():
    old = {f"s{i}": i // 10 for i in range(40)}  # 4 clusters of 10
    new = {f"s{i}": (3 - i // 10) for i in range(30)}  # renumbered; cluster 3's scans gone
    new.update({f"s{i}": i % 2 for i in range(30, 40)})  # ... split over two clusters
    new["s99"] = 0  # a scan the old version did not have
    state = _replay({"action": "name", "cluster_id": 0, "name": "brain"},
                    {"action": "name", "cluster_id": 1, "name": "4CH"},
                    {"action": "name", "cluster_id": 3, "name": "femur"},
                    {"action": "move", "image_id": "s5", "name": "LVOT"},
                    {"action": "exclude", "image_id": "s6"})
    report = carry(state, "v2", old, new)
    names = {d.cluster_id: d.name for d in report.carried if d.action == "name"}
    assert names == {3: "brain", 2: "4CH"}
    assert {(d.action, d.image_id) for d in report.carried if d.image_id} == {
        ("move", "s5"), ("exclude", "s6")}
    assert all(d.carried_from == "v" and d.model_version == "v2" for d in report.carried)
    assert len(report.not_carried) == 1 and "femur" in report.not_carried[0]


def _invoke(*args: str, workdir) -> str:
    result = runner.invoke(app, [*args, "--workdir", workdir.root], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def test_cli_review_reaches_the_export_and_survives_assign_of_new_scans(
        labelled_run, tmp_path, data_dir):
    store = copy_of(labelled_run[0], tmp_path / "w")
    review = Review(store)
    strays = review.strays(0, limit=3)
    assert [s.stray_score for s in strays] == sorted((s.stray_score for s in strays),
                                                     reverse=True)
    _invoke("clusters", "name", "0", "<script>window.x=1</script>", workdir=store)
    _invoke("clusters", "merge", "1", "2", "--name", "4CH", workdir=store)
    _invoke("clusters", "move", strays[0].image_id[:12], "--to", "LVOT", workdir=store)
    _invoke("clusters", "exclude", strays[1].image_id, workdir=store)
    assert "<script>window.x=1</script>" in _invoke("clusters", "list", workdir=store)
    assert len(history(store)) == 5

    ingest_new_scans(store, data_dir, tmp_path / "new")
    assign_flow(store)
    rows = {r["image_id"]: r for r in export_table(store).to_pylist()}
    assert rows[strays[0].image_id]["label"] == "LVOT"
    assert rows[strays[0].image_id]["label_source"] == MOVED
    assert rows[strays[1].image_id]["label_source"] == EXCLUDED
    assert {r["label"] for r in rows.values() if r["cluster_id"] in (1, 2)
            and r["label_source"] == CLUSTER} == {"4CH"}
    assert len(rows) == len(store.scans(["image_id"]))  # the new scans too, each labelled
    assert all(r["label_source"] for r in rows.values() if r["cluster_id"] in (0, 1, 2))

    folder = tmp_path / "imagefolder"
    output = _invoke("export", "--output", str(folder), "--format", "imagefolder",
                     workdir=store)
    assert "1 excluded" in output
    assert {p.name for p in folder.iterdir()} == {"<script>window.x=1<_script>", "4CH", "LVOT"}
    assert len(list((folder / "LVOT").glob("*.png"))) == 1


def ingest_new_scans(store, data_dir: Path, folder: Path) -> None:
    folder.mkdir()
    for path in sorted((data_dir / "hc18" / "images").glob("*.png"))[-3:]:
        shutil.copy(path, folder / path.name)
    run_ingest(store, IngestConfig(paths=[str(folder)]),
               workdir_preprocess(store, {"ocr_engine": "none", "image_size": 64}))


def test_a_new_model_version_inherits_the_review(labelled_run, tmp_path):
    store = copy_of(labelled_run[0], tmp_path / "w")
    first = current_version(store)
    record(store, [Decision(action="name", model_version=first, cluster_id=c, name=f"view {c}")
                   for c in range(CLUSTERS)])
    model = ClusterModel.load(store)
    cluster_flow(store, ClusterConfig(clusters=CLUSTERS, embedding=model.embedding, heads=3,
                                      epochs=30, seed=1))
    summary = assign_flow(store)
    second = current_version(store)
    assert second != first
    carried = review_state(store, second)
    assert summary.review_carried == len(carried.names) + len(carried.mixed)
    assert len(carried.names) + len(summary.review_not_carried) == CLUSTERS
    old = dict(zip(*store.assignments(first, ["image_id", "cluster_id"]).to_pydict().values()))
    new = dict(zip(*store.assignments(second, ["image_id", "cluster_id"]).to_pydict().values()))
    for cluster, name in carried.names.items():  # each name went where most of its scans went
        members = [i for i, c in old.items() if c == int(name.split()[-1])]
        assert np.bincount([new[i] for i in members]).argmax() == cluster
    assert all(d["carried_from"] == first for d in history(store, second).to_pylist())
    names_file = tmp_path / "names.csv"
    with open(names_file, "w", newline="") as handle:
        csv.writer(handle).writerows([["cluster_id", "name"], [0, "brain"], [1, ""]])
    _invoke("clusters", "name", "--from", str(names_file), workdir=store)
    assert ClusterModel.load(store).names.get(0) == "brain" and 1 not in ClusterModel.load(
        store).names
