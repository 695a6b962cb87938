"""`fusc run` and the clustering stages end to end on real scans, a real LanceDB and Ray.

Tiny settings (64 px scans, 32 px SSL, 2 views, few epochs) keep the file near two minutes.
"""

from __future__ import annotations

import csv
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow.compute as pc
import pytest
import torch

from fusc_lib.cluster_model import ClusterModel, current_version
from fusc_lib.config import ClusterConfig, EmbedConfig, RunConfig, SelfLabelConfig, SSLConfig
from fusc_lib.export import COLUMNS, export_table, write_export
from fusc_lib.ledger import StageLedger
from fusc_lib.models.encoder import embedding_key, pretrained_model
from fusc_lib.preprocess import workdir_preprocess
from fusc_lib.store import Workdir
from jobs.assign import run_assign
from jobs.cluster import run_cluster
from jobs.embed import run_embed
from jobs.run import CLUSTER_OUTPUT, assign_flow, run_all
from schemas.tables import ASSIGNMENTS, NEIGHBORS, SCANS, SITES

PRETRAINED = "pretrained:efficientnet_lite0"
TINY_SSL = {"image_size": 32, "epochs": 2, "batch_size": 8}
NETWORK_EPOCHS = 2  # network modes: enough for a loss row per epoch and a changed head


def _archive(data_dir: Path, folder: Path, per_set: int = 8) -> Path:
    """Scans of two hospitals' machines (african-planes, hc18): two clear style groups."""
    folder.mkdir()
    for name in ("african-planes", "hc18"):
        for path in sorted((data_dir / name / "images").glob("*.png"))[:per_set]:
            shutil.copy(path, folder / f"{name}__{path.name}")
    return folder


def _tiny_workdir(root: Path) -> Workdir:
    store = Workdir(str(root))
    workdir_preprocess(store, {"ocr_engine": "none", "image_size": 64})
    return store


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_dir, ray_session):
    root = tmp_path_factory.mktemp("run")
    store = _tiny_workdir(root / "w")
    config = RunConfig(ingest={"paths": [str(_archive(data_dir, root / "in"))]},
                       embed={"embedding": PRETRAINED, "views": 2}, neighbors={"k": 5},
                       cluster={"clusters": 3, "heads": 3, "epochs": 20, "k": 5})
    folder = Path(config.ingest.paths[0])
    first = sorted(folder.iterdir())[0]
    (folder / "re-export").mkdir()
    # Same bytes and name in another folder, as a re-export holds them: whichever of the two
    # ingest meets first is the scan, the other its recorded copy.
    shutil.copy(first, folder / "re-export" / first.name)
    reports = []
    summary = run_all(store, config, echo=reports.append)
    return store, config, summary, reports


def test_run_assigns_every_scan_once_and_exports_them(finished):
    store, _, summary, reports = finished
    assert [r.stage for r in reports] == ["ingest", "sites", "embed", "neighbors", "cluster",
                                          "self-label", "assign", "export"]
    scans = store.table(SCANS).count_rows()
    assigned = store.table(ASSIGNMENTS).to_arrow()
    assert scans == 16 and sum(summary.sizes) == scans
    assert set(assigned.column("model_version").to_pylist()) == {summary.version}
    assert len(set(assigned.column("image_id").to_pylist())) == scans
    probabilities = np.asarray(assigned.column("probabilities").to_pylist())
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)
    assert (np.asarray(assigned.column("confidence")) == probabilities.max(axis=1)).all()
    with open(summary.export, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == COLUMNS and len(rows) == scans + 1  # + the byte-identical copy
    (copy,) = [r for r in rows if r["duplicate_of"]]  # whichever of the two came second
    (twin,) = [r for r in rows if r["source_uri"] == copy["duplicate_of"]]
    assert Path(copy["source_uri"]).name == Path(twin["source_uri"]).name
    assert copy["source_uri"] != twin["source_uri"]
    assert (copy["image_id"], copy["cluster_id"]) == (twin["image_id"], twin["cluster_id"])
    assert {Path(r["source_uri"]).name.split("__")[0] for r in rows} == {"african-planes", "hc18"}


def test_sites_are_inferred_from_style_when_none_is_given(finished):
    store, *_ = finished
    sites = store.table(SITES).to_arrow()
    scans = store.scans(["image_id", "source_uri"])
    dataset = {i: Path(u).name.split("__")[0] for i, u in
               zip(scans.column("image_id").to_pylist(), scans.column("source_uri").to_pylist())}
    assert all(sites.column("inferred").to_pylist())
    groups = {}
    for image_id, site in zip(sites.column("image_id").to_pylist(),
                              sites.column("site").to_pylist()):
        groups.setdefault(site, set()).add(dataset[image_id])
    # hc18 (800×540 Voluson) and african-planes never share a style group.
    assert len(groups) >= 2 and all(len(members) == 1 for members in groups.values())


def test_neighbors_are_k_other_scans_best_first(finished):
    store, config, *_ = finished
    table = store.table(NEIGHBORS).to_arrow()
    for image_id, ids, similarities in zip(*(table.column(c).to_pylist() for c in
                                             ("image_id", "neighbor_ids", "similarities"))):
        assert len(ids) == config.neighbors.k and image_id not in ids
        assert similarities == sorted(similarities, reverse=True)


def test_a_second_run_skips_every_finished_stage(finished):
    store, config, summary, _ = finished
    reports = []
    again = run_all(store, config, echo=reports.append)
    skipped = {r.stage for r in reports if r.skipped}
    assert skipped == {"sites", "neighbors", "cluster", "self-label"}
    assert again.version == summary.version and again.sizes == summary.sizes
    assert store.table(ASSIGNMENTS).count_rows() == sum(summary.sizes)


def test_cluster_model_round_trips_and_gives_the_stored_assignments(finished):
    store, *_ = finished
    model = ClusterModel.load(store)
    assert model.version == current_version(store)
    assert model.embedding == f"{PRETRAINED}~views2"
    assigned = store.table(ASSIGNMENTS).to_arrow()
    assert sorted(set(assigned.column("cluster_id").to_pylist())) <= list(range(3))
    assert run_assign(store).assigned == 0  # incremental: nothing new


def test_export_writes_parquet_and_refuses_unknown_formats(finished, tmp_path):
    store, *_ = finished
    table = export_table(store)
    path = write_export(table, tmp_path / "out.parquet")
    import pyarrow.parquet as pq

    assert pq.read_table(path).num_rows == table.num_rows
    with pytest.raises(ValueError, match="csv"):
        write_export(table, tmp_path / "out.xlsx")


def test_killed_run_resumes_without_redoing_finished_stages(tmp_path, data_dir, ray_session):
    """SIGKILL a real `fusc run` once SSL, sites and embedding are done (the neighbours stage
    recorded); the rerun skips SSL and embeds nothing again."""
    folder = _archive(data_dir, tmp_path / "in", per_set=6)
    store = _tiny_workdir(tmp_path / "w")
    command = [sys.executable, "-m", "fusc_lib", "run", str(folder), "--clusters", "3",
               "--ssl-epochs", "2", "--image-size", "32", "--views", "2", "--k", "5",
               "--cluster-epochs", "20", "--workdir", store.root,
               "--ray-address", ray_session.get_runtime_context().gcs_address]
    process = subprocess.Popen(command, cwd=Path(__file__).parents[1],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stamp = Path(store.root) / "stages" / "neighbors.json"
    deadline = time.monotonic() + 900  # a loaded 2-core machine took over 300 s to get there
    while time.monotonic() < deadline and process.poll() is None and not stamp.exists():
        time.sleep(0.1)
    assert process.poll() is None, "the run ended before it could be killed"
    assert stamp.exists(), "the run did not get past the neighbours stage in time"
    process.send_signal(signal.SIGKILL)
    process.wait()
    run_dir = Path(store.ssl_run_dir(SSLConfig().run))
    trained_at = (run_dir / "backbone.pt").stat().st_mtime

    ssl = SSLConfig.from_profile("quick", **TINY_SSL)
    reports = []
    summary = run_all(store, RunConfig(ingest={"paths": [str(folder)]}, ssl=ssl,
                                       embed={"views": 2}, neighbors={"k": 5},
                                       cluster={"clusters": 3, "epochs": 20, "k": 5}),
                      echo=reports.append)
    by_stage = {r.stage: r for r in reports}
    assert by_stage["train-ssl"].skipped and by_stage["sites"].skipped
    assert by_stage["embed"].detail.startswith("0 embedded")
    assert (run_dir / "backbone.pt").stat().st_mtime == trained_at
    assert sum(summary.sizes) == store.table(SCANS).count_rows() == 12


def test_over_clustering_and_a_rejected_self_label_keep_a_usable_current_model(finished):
    """C far above the number of views trains; self-label that cannot help leaves the input."""
    from jobs.self_label import run_self_label

    store, config, summary, _ = finished
    before = current_version(store)
    over = run_cluster(store, ClusterConfig(embedding=f"{PRETRAINED}~views2", clusters=12,
                                            heads=2, epochs=10))
    assert ClusterModel.load(store).n_clusters == 12 and sum(over.sizes) == 16
    # A threshold no head reaches in 1 epoch at a tiny step: nothing to learn from but the
    # lent samples; whatever the verdict, the current model is a loadable 12-cluster model.
    outcome = run_self_label(store, SelfLabelConfig(threshold=1.0, epochs=1, lr=1e-6))
    assert ClusterModel.load(store).version == (outcome.version if outcome.accepted
                                                else over.version)
    store.write_json({"version": before}, "models", "cluster", "current.json")


def test_a_changed_self_label_starts_again_from_the_model_the_cluster_stage_made(finished):
    """Changing only self-label's options reruns it on the cluster stage's model, not on the
    current one (an earlier self-label's result, or here any other model)."""
    store, config, *_ = finished
    before = current_version(store)
    made = StageLedger(store).stamp(CLUSTER_OUTPUT)["version"]
    other = run_cluster(store, ClusterConfig(embedding=f"{PRETRAINED}~views2", clusters=5,
                                             heads=2, epochs=5, k=5))
    assert current_version(store) == other.version != made
    changed = config.model_copy(update={"self_label": SelfLabelConfig(threshold=0.9)})
    reports = []
    run_all(store, changed, echo=reports.append)
    ran = {r.stage for r in reports if not r.skipped}
    assert "self-label" in ran and not ran & {"sites", "neighbors", "cluster"}
    model = ClusterModel.load(store)
    assert model.version == made or model.notes["input"] == made
    assert model.n_clusters == ClusterModel.load(store, made).n_clusters == 3
    store.write_json({"version": before}, "models", "cluster", "current.json")


def test_network_mode_fine_tunes_the_backbone_on_neighbour_pairs(finished):
    """The paper's mode: backbone + heads on augmented neighbour pairs (2 Ray Train workers),
    then embedding, neighbours and heads again on the fine-tuned backbone."""
    from jobs.run import cluster_flow

    store, *_ = finished
    before = current_version(store)
    summary = cluster_flow(store, ClusterConfig(
        embedding=f"{PRETRAINED}~views2", clusters=3, heads=2, epochs=10, mode="network",
        network_epochs=NETWORK_EPOCHS, k=5, workers=2))
    run = "pretrained-efficientnet_lite0-fusc3"
    history = (Path(store.ssl_run_dir(run)) / "loss.csv").read_text().splitlines()
    assert len(history) == 1 + NETWORK_EPOCHS
    assert (Path(store.ssl_run_dir(run)) / "backbone.pt").exists()
    model = ClusterModel.load(store)
    assert model.version == summary.version and model.embedding == f"{run}~views2"
    assert sum(summary.sizes) == store.table(SCANS).count_rows()
    neighbors = store.neighbors(f"{run}~views2")
    assert neighbors.num_rows == store.table(SCANS).count_rows()
    store.write_json({"version": before}, "models", "cluster", "current.json")


def test_network_self_label_trains_backbone_and_head_on_images(finished):
    """The paper's stage 3 through `fusc run --self-label-mode network`: 2 Ray Train workers
    self-label backbone and head on weak/strong views; the run is embedded and judged like any
    model, and self-labeling the same input again reuses it."""
    from fusc_lib.models.self_label_network import read_head
    from jobs.run import self_label_flow

    store, config, *_ = finished
    network = config.model_copy(update={"self_label": SelfLabelConfig(
        mode="network", workers=2, network_epochs=NETWORK_EPOCHS)})
    run_all(store, network)
    reports = []
    run_all(store, network, echo=reports.append)  # nothing the network run did is redone
    assert {r.stage for r in reports if r.skipped} == {"sites", "neighbors", "cluster",
                                                       "self-label"}
    start = ClusterModel.load(store, store.read_json("stages", "cluster-output.json")["version"])
    folder = Path(store.ssl_run_dir(f"selflabel-{start.version}"))
    loss_csv = folder / "loss.csv"
    assert len(loss_csv.read_text().splitlines()) == 1 + NETWORK_EPOCHS
    assert not torch.equal(read_head(str(folder))["weight"], start.head.weight)
    embedding = f"selflabel-{start.version}~views2"
    embedded = store.embeddings_table(embedding).count_rows()
    assert embedded == store.table(SCANS).count_rows()
    trained_at = loss_csv.stat().st_mtime_ns
    summary = self_label_flow(store, SelfLabelConfig(cluster_model=start.version, mode="network",
                                                     network_epochs=NETWORK_EPOCHS))
    assert loss_csv.stat().st_mtime_ns == trained_at  # the finished run was reused
    written = ClusterModel.load(store, summary.written)
    # a rejected try is recorded as the input model, so a written version is always coherent
    assert written.embedding == (embedding if summary.accepted else start.embedding)
    assert written.notes["mode"] == "network" and written.notes["input"] == start.version
    assert current_version(store) == (summary.written if summary.accepted else start.version)
    store.write_json({"version": start.version}, "models", "cluster", "current.json")


def test_run_command_prints_site_nmi_and_scores_against_labels(finished, tmp_path, data_dir):
    from typer.testing import CliRunner

    from fusc_lib.cli import app

    store, *_ = finished
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "view", "site"])
        for name in ("african-planes", "hc18"):
            with open(data_dir / name / "labels.csv", newline="") as source:
                for row in csv.DictReader(source):
                    writer.writerow([f"{name}__{row['file']}", row["view"], row["site"]])
    result = CliRunner().invoke(app, [
        "run", "--clusters", "3", "--embedding", PRETRAINED, "--views", "2", "--k", "5",
        "--cluster-epochs", "20", "--labels", str(labels), "--workdir", store.root],
        env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "NMI of the clusters against site" in result.output
    assert "clusters against the labels" in result.output and "purity" in result.output
    assert "FUSC heads (this model)" in result.output  # beside k-means on the same embeddings
    assert "k-means, embeddings as stored" in result.output and "k-means, site-centred" in \
        result.output


def test_assign_embeds_and_places_scans_ingested_after_the_model(finished, tmp_path, data_dir):
    """New scans, ingested after clustering, with no vector and no site: `fusc assign` embeds
    them with the model's encoder, puts them in a style group and assigns them like the rest
    (last in this file: it adds scans to the shared workdir)."""
    from fusc_lib.ingest import IngestConfig
    from jobs.ingest import run_ingest

    store, *_ = finished
    model = ClusterModel.load(store)
    newer = tmp_path / "newer"
    newer.mkdir()
    for path in sorted((data_dir / "african-planes" / "images").glob("*.png"))[8:10]:
        shutil.copy(path, newer / f"african-planes__{path.name}")
    run_ingest(store, IngestConfig(paths=[str(newer)]), workdir_preprocess(store))
    scans = store.table(SCANS).count_rows()
    assert scans == 18 and store.table(SITES).count_rows() == 16
    summary = assign_flow(store)
    assert summary.embedded == 2 and summary.assigned == 2 and sum(summary.sizes) == scans
    vectors = store.embeddings_table(model.embedding).count_rows()
    assert vectors == scans


class ActorKiller(threading.Thread):
    """SIGKILLs the worker process of the first Ray actor of `actor_class` in this process's own
    local Ray (a descendant process titled `ray::<class>`) once `ready()`, as a node's OOM
    killer or a crashed library would; `killed` is set once it has."""

    def __init__(self, actor_class: str, ready=lambda: True):
        super().__init__(daemon=True)
        self.title, self.ready = f"ray::{actor_class}", ready
        self.killed = self.done = False

    def run(self) -> None:
        while not (self.done or self.killed):
            actors = [p for p in psutil.Process().children(recursive=True)
                      if " ".join(_cmdline(p)).startswith(self.title)]
            if actors and self.ready():
                actors[0].kill()
                self.killed = True
            time.sleep(0.05)

    def __enter__(self) -> ActorKiller:
        self.start()
        return self

    def __exit__(self, *_) -> None:
        self.done = True
        self.join()


def test_embed_and_assign_workers_killed_mid_job_lose_and_repeat_no_scan(finished, tmp_path):
    """SIGKILL the embed actor once its first vectors are committed, and the assign actor as
    it starts: Ray restarts them and retries their tasks; every scan ends with one vector and
    one assignment (the keyed commits drop what a retried task sends twice)."""
    store = Workdir(str(shutil.copytree(finished[0].root, tmp_path / "w")))
    scans = sorted(store.column(SCANS, "image_id").to_pylist())
    config = EmbedConfig(embedding=PRETRAINED, input_size=64, views=48, batch_size=1,
                         commit_rows=1, concurrency=1)
    key = embedding_key(pretrained_model("efficientnet_lite0", 64), 48)

    def some_committed() -> bool:
        return store.has_embeddings(key) and 0 < store.embeddings_table(key).count_rows() < 8

    with ActorKiller("MapWorker(MapBatches(_EmbedActor))", some_committed) as killer:
        summary = run_embed(store, config)
    assert killer.killed and summary.embedding_key == key
    assert sorted(store.embeddings(key, ["image_id"]).column("image_id").to_pylist()) == scans

    model = ClusterModel.load(store)
    stored = _assignments_of(store, model.version)
    store.db.drop_table(ASSIGNMENTS)
    with ActorKiller("MapWorker(MapBatches(_AssignActor))") as killer:
        run_assign(store, model.version)
    again = _assignments_of(store, model.version)
    assert killer.killed and again["image_id"].to_pylist() == scans
    assert again["cluster_id"].to_pylist() == stored["cluster_id"].to_pylist()


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:  # ended meanwhile
        return []


def _assignments_of(store: Workdir, version: str):
    rows = store.table(ASSIGNMENTS).to_arrow()
    return rows.filter(pc.equal(rows["model_version"], version)).sort_by("image_id")


def test_clusters_are_checked_against_the_scans_before_the_work(tmp_path, data_dir, ray_session):
    folder = _archive(data_dir, tmp_path / "in", per_set=2)  # 4 stills
    store = _tiny_workdir(tmp_path / "w")
    with pytest.raises(ValueError, match="--clusters 70 needs more scans .* can hold 64"):
        run_all(store, RunConfig(ingest={"paths": [str(folder)]}, cluster={"clusters": 70},
                                 embed={"embedding": PRETRAINED}))
    assert not store.has_table(SCANS)  # refused before any work
    with pytest.raises(ValueError, match="--clusters 5 needs more scans .* holds 4"):
        run_all(store, RunConfig(ingest={"paths": [str(folder)]}, cluster={"clusters": 5},
                                 embed={"embedding": PRETRAINED}))
    assert store.embedding_keys() == []  # refused after ingest, before the costly stages
