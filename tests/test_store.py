"""The workdir's typed readers on a real LanceDB: filters are expressions, never pasted SQL."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

from fusc_lib import table_upkeep
from fusc_lib.artifacts import load_torch, save_torch
from fusc_lib.store import Workdir, rows_by_id
from fusc_lib.table_appender import TableAppender
from fusc_lib.table_upkeep import (
    COMPACTION_FANOUT,
    INDEX_STALE_SHARE,
    KEY_INDEX_MIN_ROWS,
    _compaction_run,
)
from schemas.tables import ASSIGNMENTS, NEIGHBORS, QUARANTINE, SITES, embeddings_table_name

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


# --- many small commits (issue 18): idempotent, compacted, indexed ---

NOW = datetime.now(UTC).replace(microsecond=0)


def _assignments(ids: list[str], version: str = "v1") -> pa.Table:
    n = len(ids)
    return pa.table({
        "image_id": pa.array(ids, pa.string()), "cluster_id": pa.array(np.zeros(n, np.int32)),
        "confidence": pa.array(np.ones(n, np.float32)),
        "probabilities": pa.array([[1.0]] * n, pa.list_(pa.float32())),
        "model_version": pa.array([version] * n, pa.string()),
        "assigned_at": pa.array([NOW] * n, pa.timestamp("ms", tz="UTC"))})


def _vectors(ids: list[str], dim: int = 8, seed: int = 0) -> pa.Table:
    values = np.random.default_rng(seed).standard_normal((len(ids), dim), dtype=np.float32)
    return pa.table({"image_id": pa.array(ids, pa.string()),
                     "embedding_key": pa.array(["k"] * len(ids), pa.string()),
                     "vector": pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), dim),
                     "embedded_at": pa.array([NOW] * len(ids), pa.timestamp("ms", tz="UTC"))})


def test_a_commit_repeated_after_a_crash_adds_no_row(tmp_path):
    """The crash falls between LanceDB's commit and the appender forgetting its buffer, so the
    retry commits the same rows again: the keyed append leaves every one of them out."""
    store = Workdir(str(tmp_path / "w"))
    crashes = [True]

    def append_then_crash(rows: pa.Table) -> int:
        appended = store.append(ASSIGNMENTS, rows)
        if crashes.pop():
            raise ConnectionError("driver lost after the commit")
        return appended

    sink = TableAppender(append_then_crash, commit_rows=3)
    sink.add(_assignments(["a", "b", "c"], AWKWARD))
    with pytest.raises(ConnectionError):
        sink.flush()
    crashes.append(False)
    sink.flush()  # the retry
    assert sink.committed == 0
    assert sorted(store.column(ASSIGNMENTS, "image_id").to_pylist()) == ["a", "b", "c"]
    # The key is (image_id, model_version): the same scans under another version are new rows,
    # and of a batch only the rows not there yet are appended.
    assert store.append(ASSIGNMENTS, _assignments(["a", "b"], "v2")) == 2
    assert store.append(ASSIGNMENTS, _assignments(["b", "d", "a"], "v2")) == 1
    assert store.assignments("v2", ["image_id"])["image_id"].to_pylist() == ["a", "b", "d"]

    assert store.append_embeddings("k", _vectors(["a", "b"])) == 2
    assert store.append_embeddings("k", _vectors(["b", "c"], seed=1)) == 1
    assert sorted(store.embeddings("k", ["image_id"])["image_id"].to_pylist()) == ["a", "b", "c"]


def test_a_table_whose_creation_was_killed_is_made_again(tmp_path):
    """A `fusc run` killed while LanceDB created a table leaves its folder with no committed
    version: listed, but "not found" to open (a CI run met it in the neighbours stage). The
    workdir drops the leftover and the stage writes the table as new."""
    store = Workdir(str(tmp_path / "w"))
    store.table(NEIGHBORS)
    shutil.rmtree(tmp_path / "w" / "lancedb" / f"{NEIGHBORS}.lance" / "_versions")
    again = Workdir(store.root)
    assert NEIGHBORS in again.db.list_tables().tables and not again.has_table(NEIGHBORS)
    again.delete_where(NEIGHBORS, "embedding_key", ["k"])  # what `fusc neighbors` does first
    rows = pa.table({"image_id": ["a"], "embedding_key": ["k"], "neighbor_ids": [["b"]],
                     "similarities": pa.array([[0.5]], pa.list_(pa.float32()))})
    assert again.append(NEIGHBORS, rows) == 1 and again.has_table(NEIGHBORS)
    assert store.has_table(SITES) is False  # never made: nothing to drop


def test_a_missing_embedding_key_is_refused_with_the_keys_there_are(tmp_path):
    store = Workdir(str(tmp_path / "w"))
    with pytest.raises(ValueError, match="keys in this workdir: none yet"):
        store.embeddings_table("simclr~views20")
    store.append_embeddings("simclr-efficientnet_lite0~views20", _vectors(["a"], seed=0))
    with pytest.raises(ValueError, match=r"simclr~views20'.*keys in this workdir: "
                                         r"simclr-efficientnet_lite0~views20\)"):
        store.embeddings_table("simclr~views20")


def test_many_small_commits_end_in_few_fragments_every_row_readable(tmp_path):
    store = Workdir(str(tmp_path / "w"))
    sink = TableAppender(partial(store.append_embeddings, "k"), commit_rows=5)
    ids = [f"scan-{i:04d}" for i in range(5 * 4 * COMPACTION_FANOUT)]
    for start in range(0, len(ids), 5):
        sink.add(_vectors(ids[start:start + 5], seed=start))
        sink.flush()
    dataset = store.embeddings_table("k").to_lance()
    assert len(dataset.get_fragments()) < COMPACTION_FANOUT < len(ids) // 5
    assert sink.committed == len(ids)
    assert sorted(dataset.to_table(columns=["image_id"])["image_id"].to_pylist()) == ids
    assert rows_by_id(dataset.uri, ["scan-0003", "scan-0317"], ["image_id"]).num_rows == 2


def test_compaction_merges_a_tail_of_like_fragments_and_leaves_the_big_ones():
    small, fanout = 1_000, COMPACTION_FANOUT
    assert _compaction_run([small] * (fanout - 1)) == fanout - 1  # none due
    assert _compaction_run([small] * fanout) == 0
    # Older, bigger fragments are not rewritten to take in the small ones...
    bigger = [small * fanout] * 3
    assert _compaction_run(bigger + [small] * fanout) == 3
    # ...until there are `fanout` of their own size; smaller ones after them ride along.
    assert _compaction_run([small * fanout] * fanout + [small] * 2) == 0
    assert _compaction_run([2 ** 31] + [small] * fanout) == 1  # past the size cap: left alone


def test_a_merge_writes_fragments_of_at_most_the_cap_and_leaves_them_alone_after(tmp_path):
    """Ray Data reads a fragment per task, so a merge must not make fragments that grow with
    the table: a run bigger than the cap is written as several fragments of about the cap."""
    import lance

    uri = str(tmp_path / "t.lance")
    rng = np.random.default_rng(0)
    for commit in range(2 * COMPACTION_FANOUT):  # 32 commits of 10 rows of 1 KB
        rows = pa.table({"image_id": [f"{commit}-{i}" for i in range(10)],
                         "image": [rng.bytes(1024) for _ in range(10)]})
        lance.write_dataset(rows, uri, mode="append")
    cap = 64 << 10  # 64 KiB: about 60 rows
    upkeep = table_upkeep.Upkeep(fragments_before=2 * COMPACTION_FANOUT)
    table_upkeep._compact(lance.dataset(uri), upkeep, max_bytes=cap)
    dataset = lance.dataset(uri)
    sizes = [table_upkeep._fragment_bytes(f) for f in dataset.get_fragments()]
    assert upkeep.compactions >= 1 and 1 < len(sizes) < 2 * COMPACTION_FANOUT
    assert max(sizes) < 2 * cap and dataset.count_rows() == 320  # the last takes the remainder
    again = table_upkeep.Upkeep(fragments_before=len(sizes))
    table_upkeep._compact(lance.dataset(uri), again, max_bytes=cap)
    assert again.compactions == 0  # fragments of about the cap are not rewritten again


def test_the_key_index_is_built_past_its_threshold_and_finds_rows_appended_after(tmp_path):
    store = Workdir(str(tmp_path / "w"))
    first = [f"old-{i:06d}" for i in range(KEY_INDEX_MIN_ROWS - 10)]
    store.append(ASSIGNMENTS, _assignments(first))
    assert not store.table(ASSIGNMENTS).list_indices()  # below the threshold: no index
    store.append(ASSIGNMENTS, _assignments([f"mid-{i}" for i in range(20)]))
    (index,) = store.table(ASSIGNMENTS).list_indices()
    assert index.columns == ["image_id"] and index.index_type == "BTree"

    store.append(ASSIGNMENTS, _assignments(["new-1", "new-2"]))  # after the index was built
    table = store.table(ASSIGNMENTS)
    assert table.index_stats(index.name).num_unindexed_rows == 2
    found = rows_by_id(table.uri, ["new-2", "old-000042", "mid-3", "absent"], ["image_id"])
    assert sorted(found["image_id"].to_pylist()) == ["mid-3", "new-2", "old-000042"]
    assert store.append(ASSIGNMENTS, _assignments(["new-1", "old-000042"])) == 0  # keyed

    # Once the rows no index covers are INDEX_STALE_SHARE of the table they are folded in.
    late = [f"late-{i:06d}" for i in range(int(2 * INDEX_STALE_SHARE * KEY_INDEX_MIN_ROWS))]
    store.append(ASSIGNMENTS, _assignments(late))
    table = store.table(ASSIGNMENTS)
    assert table.index_stats(index.name).num_unindexed_rows == 0
    assert rows_by_id(table.uri, [late[-1], "new-1"], ["image_id"]).num_rows == 2


def test_indexed_uri_covers_every_row_and_then_keeps_the_version(tmp_path):
    store = Workdir(str(tmp_path / "w"))
    store.append(ASSIGNMENTS, _assignments(["a", "b"]))
    store.indexed_uri(ASSIGNMENTS)
    store.append(ASSIGNMENTS, _assignments(["c"]))
    uri = store.indexed_uri(ASSIGNMENTS)  # folds "c" into the index
    table = store.table(ASSIGNMENTS)
    (index,) = table.list_indices()
    assert table.index_stats(index.name).num_unindexed_rows == 0
    assert rows_by_id(uri, ["c"], ["image_id"]).num_rows == 1
    version = table.version
    store.indexed_uri(ASSIGNMENTS)
    assert store.table(ASSIGNMENTS).version == version


def test_a_vector_index_covers_vectors_appended_after_it(tmp_path, monkeypatch):
    """The vector index is built where embed builds it (`ensure_vector_index`); the appends
    after it fold new vectors into it, so a search does not scan them one by one."""
    from jobs.embed import ensure_vector_index

    store = Workdir(str(tmp_path / "w"))
    store.append_embeddings("k", _vectors([f"s{i}" for i in range(300)], dim=16))
    assert ensure_vector_index(store, "k", min_rows=256)
    monkeypatch.setattr(table_upkeep, "INDEX_STALE_SHARE", 0.0)  # fold at every commit
    store.append_embeddings("k", _vectors(["new"], dim=16, seed=5))
    table = store.db.open_table(embeddings_table_name("k"))
    (vector_index,) = [i for i in table.list_indices() if i.columns == ["vector"]]
    assert table.index_stats(vector_index.name).num_unindexed_rows == 0
    query = store.embeddings("k", ["vector"], pc.field("image_id") == "new")["vector"][0]
    hits = table.search(np.asarray(query.as_py(), np.float32)).refine_factor(50).limit(1).to_arrow()
    assert hits["image_id"].to_pylist() == ["new"]
