"""The workdir's typed readers on a real LanceDB: filters are expressions, never pasted SQL."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

from fusc_lib.artifacts import load_torch, save_torch
from fusc_lib.store import Workdir
from schemas.tables import ASSIGNMENTS, NEIGHBORS, QUARANTINE, SITES

AWKWARD = "O'Brien's \"clinic\" -- ' OR '1'='1"  # quotes and SQL that must stay a value


@pytest.fixture()
def store(tmp_path) -> Workdir:
    store = Workdir(str(tmp_path / "w"))
    now = datetime.now(UTC).replace(microsecond=0)
    store.append(SITES, pa.table({"image_id": ["a", "b"], "site": [AWKWARD, "plain"],
                                  "inferred": [False, True]}))
    store.append(ASSIGNMENTS, pa.table({
        "image_id": ["a", "b", "a"], "cluster_id": pa.array([0, 1, 2], pa.int32()),
        "confidence": pa.array([0.9, 0.8, 0.7], pa.float32()),
        "probabilities": pa.array([[0.9, 0.1]] * 3, pa.list_(pa.float32())),
        "model_version": [AWKWARD, AWKWARD, "v2"], "assigned_at": [now] * 3}))
    store.append(NEIGHBORS, pa.table({
        "image_id": ["a", "b"], "embedding_key": [AWKWARD, "other"],
        "neighbor_ids": [["b"], ["a"]], "similarities": pa.array([[0.5], [0.5]],
                                                                  pa.list_(pa.float32()))}))
    return store


def test_readers_filter_by_value_whatever_it_holds(store):
    assert store.site_of() == {"a": AWKWARD, "b": "plain"}
    assigned = store.assignments(AWKWARD, ["image_id", "cluster_id"])
    assert assigned.to_pydict() == {"image_id": ["a", "b"], "cluster_id": [0, 1]}
    assert store.assignments("' OR '1'='1", ["image_id"]).num_rows == 0
    assert store.neighbors(AWKWARD)["neighbor_ids"].to_pylist() == [["b"]]
    assert store.read(SITES, ["image_id"], pc.field("site") == "plain")["image_id"].to_pylist() \
        == ["b"]


def test_delete_where_takes_values_literally(store):
    now = datetime.now(UTC).replace(microsecond=0)
    uris = [AWKWARD, "/archive/plain.png", "/archive/it's.png"]
    store.append(QUARANTINE, pa.table({"source_uri": uris, "frame": pa.nulls(3, pa.int32()),
                                       "reason": ["x"] * 3, "stage": ["read"] * 3,
                                       "quarantined_at": [now] * 3}))
    store.delete_where(QUARANTINE, "source_uri", [AWKWARD, "/archive/it's.png"])
    assert store.column(QUARANTINE, "source_uri").to_pylist() == ["/archive/plain.png"]
    store.delete_where(QUARANTINE, "source_uri", [])  # nothing named: nothing deleted
    assert store.table(QUARANTINE).count_rows() == 1


def test_torch_state_round_trips_through_bytes(tmp_path):
    state = {"weight": torch.randn(3, 4), "sites": ["a", "b"], "history": [{"loss": 1.5}]}
    save_torch(str(tmp_path / "models" / "head.pt"), state)
    loaded = load_torch(str(tmp_path / "models" / "head.pt"))
    assert torch.equal(loaded["weight"], state["weight"])
    assert loaded["sites"] == ["a", "b"] and loaded["history"] == [{"loss": 1.5}]


def test_an_older_neighbors_table_gets_todays_column_names(tmp_path):
    old = pa.table({"image_id": ["a"], "model_run": ["k"], "neighbor_ids": [["b"]],
                    "similarities": pa.array([[0.5]], pa.list_(pa.float32()))})
    Workdir(str(tmp_path / "w")).db.create_table(NEIGHBORS, old)
    store = Workdir(str(tmp_path / "w"))
    assert store.neighbors("k", ["image_id", "embedding_key"]).to_pydict() == {
        "image_id": ["a"], "embedding_key": ["k"]}
