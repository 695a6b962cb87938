"""LanceDB at archive scale: what many small commits through the product's writer
(`TableAppender` -> `Workdir.append`) cost and leave behind, and what reading them back costs.

    nice -n 10 .venv/bin/python -m bench.lancedb_scale [--rows 100000] [--commit-rows 1000]
        [--image-bytes 30000] [--dim 1280] [--merge-sizes 10000 100000 1000000]

1. Keyed commits: one 1,000-row commit at N existing rows by LanceDB `add`, by
   `merge_insert(on=key).when_not_matched_insert_all()` and by the product's keyed add
   (`fusc_lib.store._add`: look the keys up, add the rest), without an index on the key, with a
   BTREE just folded ("fresh"), and with 8 commits the BTREE does not cover yet ("stale"); then
   the upkeep of a tail of small commits: `Workdir.maintain` against LanceDB's `optimize()`.
   Tables: scans (images of --merge-image-bytes, to keep 1M rows on disk), embeddings (--dim
   float32) and assignments (key image_id + model_version, 10 versions).
2. scans: --rows rows in commits of --commit-rows through the product's writer, with its upkeep
   and without (a Workdir whose `maintain` does nothing): fragments, disk, time per commit; then
   `rows_by_id` of 1 and of 100 ids (50 look-ups each, p50/p95) with and without the BTREE.
3. embeddings: the same through `append_embeddings`; then a 20-NN search (50 queries, p50/p95)
   without and with the IVF-PQ index of `jobs.embed.ensure_vector_index`, and how many rows the
   index leaves out after 20 more commits.

Synthetic rows: image bytes are random, as incompressible as PNG; --image-bytes 30000 is about
a 256x256 grey PNG of a real scan (median 30.8 kB over examples/scans). The load average of the
machine (1 min) is printed on every line: figures taken under load are slower.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial

import lance
import lancedb
import numpy as np
import pyarrow as pa

from fusc_lib.store import Workdir, _add, rows_by_id
from fusc_lib.table_appender import TableAppender
from fusc_lib.table_upkeep import Upkeep
from jobs.embed import ensure_vector_index
from schemas.tables import (
    ASSIGNMENTS,
    ASSIGNMENTS_SCHEMA,
    ROW_KEYS,
    SCANS,
    SCANS_SCHEMA,
    embeddings_schema,
    embeddings_table_name,
)

NOW = datetime.now(UTC).replace(microsecond=0)
KEY = "bench"  # embedding key


def load() -> str:
    return f"[load {os.getloadavg()[0]:.1f}]"


def scan_rows(start: int, n: int, image_bytes: int) -> pa.Table:
    """`n` rows of `scans` with ids start.. and random `image_bytes`-byte images."""
    ids = [f"{i:064x}" for i in range(start, start + n)]
    blob = np.random.default_rng(start).bytes(image_bytes * n)
    int32 = partial(pa.array, type=pa.int32())
    return pa.table({
        "image_id": ids, "source_uri": [f"/archive/{i}.dcm" for i in ids],
        "frame": int32(np.zeros(n)), "width": int32(np.full(n, 256)),
        "height": int32(np.full(n, 256)), "site": pa.nulls(n, pa.string()),
        "device": pa.nulls(n, pa.string()), "patient_hash": pa.nulls(n, pa.string()),
        "study_hash": pa.nulls(n, pa.string()),
        "image": pa.array([blob[i * image_bytes:(i + 1) * image_bytes] for i in range(n)],
                          pa.binary()),
        "pseudo_view": ["unknown"] * n, "ocr_confidence": pa.array(np.zeros(n, np.float32)),
        "ocr_text": pa.nulls(n, pa.string()), "preprocess_version": ["bench"] * n,
        "ingested_at": pa.array([NOW] * n, pa.timestamp("ms", tz="UTC")),
        "decode_notes": pa.nulls(n, pa.string())}, schema=SCANS_SCHEMA)


def embedding_rows(start: int, n: int, dim: int) -> pa.Table:
    vectors = np.random.default_rng(start).standard_normal((n, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return pa.table({
        "image_id": [f"{i:064x}" for i in range(start, start + n)],
        "embedding_key": [KEY] * n,
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
        "embedded_at": pa.array([NOW] * n, pa.timestamp("ms", tz="UTC"))},
        schema=embeddings_schema(dim, KEY))


def assignment_rows(start: int, n: int, versions: int = 10) -> pa.Table:
    """Rows of `versions` model versions over the scans start // versions..."""
    rows = range(start, start + n)
    return pa.table({
        "image_id": [f"{i // versions:064x}" for i in rows],
        "cluster_id": pa.array(np.zeros(n, np.int32)),
        "confidence": pa.array(np.ones(n, np.float32)),
        "probabilities": pa.array([[0.125] * 8] * n, pa.list_(pa.float32())),
        "model_version": [f"v{i % versions}" for i in rows],
        "assigned_at": pa.array([NOW] * n, pa.timestamp("ms", tz="UTC"))},
        schema=ASSIGNMENTS_SCHEMA)


def disk_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(folder, name))
               for folder, _, names in os.walk(path) for name in names)


def live_bytes(dataset: lance.LanceDataset) -> int:
    """Bytes of the data files of the latest version (no older version, no index)."""
    return sum(f.file_size_bytes or 0 for fragment in dataset.get_fragments()
               for f in fragment.metadata.files)


def percentiles(seconds: list[float]) -> str:
    ms = np.asarray(seconds) * 1000
    return f"p50 {np.percentile(ms, 50):7.1f} ms, p95 {np.percentile(ms, 95):7.1f} ms"


def timed(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


# --- 1. keyed commits ---

class _Commits:
    """1,000-row commits of fresh rows into one table, each timed."""

    def __init__(self, table: lancedb.table.Table, make: Callable[[int, int], pa.Table],
                 key: tuple[str, ...], start: int):
        self.table, self.make, self.key, self.next = table, make, key, start

    def rows(self) -> pa.Table:
        rows = self.make(self.next, 1000)
        self.next += 1000
        return rows

    def median_ms(self, commit: Callable[[pa.Table], object], times: int = 5,
                  before: Callable[[], object] | None = None) -> float:
        seconds = []
        for _ in range(times):
            if before:
                before()
            rows = self.rows()
            seconds.append(timed(lambda rows=rows: commit(rows)))
        return statistics.median(seconds) * 1000

    def add(self, rows: pa.Table) -> None:
        self.table.add(rows)

    def merge(self, rows: pa.Table) -> None:
        self.table.merge_insert(list(self.key)).when_not_matched_insert_all().execute(rows)

    def keyed(self, rows: pa.Table) -> None:
        _add(self.table, rows, self.key)

    def fold(self) -> None:
        self.table.to_lance().optimize.optimize_indices()
        self.table.checkout_latest()

    def unindexed_commits(self, n: int) -> None:
        for _ in range(n):
            self.table.add(self.rows())


def keyed_commit_costs(root: str, sizes: list[int], image_bytes: int, dim: int) -> None:
    print(f"\n1. One 1,000-row commit at N existing rows (median of 5; ms) {load()}")
    kinds = {SCANS: partial(scan_rows, image_bytes=image_bytes),
             "embeddings": partial(embedding_rows, dim=dim),
             ASSIGNMENTS: assignment_rows}
    for n in sizes:
        for kind, make in kinds.items():
            workdir = Workdir(os.path.join(root, f"keyed-{kind}-{n}"))
            if kind == "embeddings":
                table = workdir.embeddings_table(KEY, dim)
                key = ROW_KEYS["embeddings-"]
            else:
                table, key = workdir.table(kind), ROW_KEYS[kind]
            for start in range(0, n, 100_000):
                table.add(make(start, min(100_000, n - start)))
            commits = _Commits(table, make, key, start=10 * max(sizes))
            figures = {"add": commits.median_ms(commits.add),
                       "merge_insert, no index": commits.median_ms(commits.merge),
                       "keyed add, no index": commits.median_ms(commits.keyed)}
            table.to_lance().create_scalar_index(key[0], index_type="BTREE")
            table.checkout_latest()
            figures[f"merge_insert, BTREE {key[0]} fresh"] = commits.median_ms(
                commits.merge, before=commits.fold)
            if len(key) > 1:
                table.to_lance().create_scalar_index(key[1], index_type="BTREE")
                table.checkout_latest()
                figures[f"merge_insert, BTREE on {' and '.join(key)} fresh"] = \
                    commits.median_ms(commits.merge, before=commits.fold)
            commits.fold()
            commits.unindexed_commits(8)
            figures["merge_insert, BTREE + 8 unindexed commits"] = commits.median_ms(commits.merge)
            figures["keyed add, BTREE + 8+ unindexed commits"] = commits.median_ms(commits.keyed)
            add = figures["add"]
            print(f"  {kind:<11} N={n:>9,} {load()}")
            for what, ms in figures.items():
                print(f"    {what:<52} {ms:8.1f} ms  {ms / add:5.1f}x add")
            if n == max(sizes):
                _upkeep_against_optimize(workdir, table, commits)
            shutil.rmtree(workdir.root)


def _upkeep_against_optimize(workdir: Workdir, table: lancedb.table.Table,
                             commits: _Commits) -> None:
    """Time the product's upkeep of 16 fresh commits, then LanceDB's optimize() of 16 more."""
    commits.unindexed_commits(16)
    before = len(table.to_lance().get_fragments())
    upkeep = workdir.maintain(table.name)
    table.checkout_latest()
    print(f"    Workdir.maintain after 16 more commits: {upkeep.seconds:6.1f} s, fragments "
          f"{before} -> {upkeep.fragments_after}, {upkeep.compactions} merges, "
          f"folded {upkeep.folded} {load()}")
    commits.unindexed_commits(16)
    table.checkout_latest()
    before = len(table.to_lance().get_fragments())
    seconds = timed(table.optimize)
    table.checkout_latest()
    print(f"    LanceDB optimize() after 16 more commits: {seconds:6.1f} s, fragments "
          f"{before} -> {len(table.to_lance().get_fragments())} {load()}")


# --- 2. and 3. the product's writer ---

class _Recording(Workdir):
    """The product's Workdir, recording what each upkeep did."""

    def __init__(self, root: str):
        super().__init__(root)
        self.upkeeps: list[Upkeep] = []

    def maintain(self, name: str) -> Upkeep:
        upkeep = super().maintain(name)
        self.upkeeps.append(upkeep)
        return upkeep


class _NoUpkeep(_Recording):
    """The product's Workdir with its upkeep turned off: no compaction, no index."""

    def maintain(self, name: str) -> Upkeep:
        return Upkeep(fragments_before=0)


def append_through_writer(workdir: _Recording, append: Callable[[pa.Table], int],
                          make: Callable[[int, int], pa.Table], rows: int, commit_rows: int,
                          start: int = 0) -> list[float]:
    """Commit `rows` rows in commits of `commit_rows` through a TableAppender; seconds each."""
    sink = TableAppender(append, commit_rows)
    seconds = []
    for offset in range(start, start + rows, commit_rows):
        sink.add(make(offset, min(commit_rows, start + rows - offset)))
        seconds.append(timed(sink.flush))
    assert sink.committed == rows, (sink.committed, rows)
    return seconds


def report_appends(label: str, workdir: _Recording, uri: str, seconds: list[float]) -> None:
    dataset = lance.dataset(uri)
    upkeep = sum(u.seconds for u in workdir.upkeeps)
    merges = sum(u.compactions for u in workdir.upkeeps)
    ms = np.asarray(seconds) * 1000
    print(f"  {label:<17} {len(seconds)} commits: fragments {len(dataset.get_fragments()):>4}, "
          f"disk {disk_bytes(uri) / 2**20:8.1f} MiB (latest version's data "
          f"{live_bytes(dataset) / 2**20:8.1f} MiB), per commit first 10 mean "
          f"{ms[:10].mean():6.1f} max {ms[:10].max():6.1f} ms, last 10 mean "
          f"{ms[-10:].mean():6.1f} max {ms[-10:].max():6.1f} ms, total {ms.sum() / 1000:6.1f} s "
          f"of which upkeep {upkeep:5.1f} s ({merges} merges) {load()}")


def lookups(uri: str, ids: list[str], label: str, rng: np.random.Generator) -> None:
    for count in (1, 100):
        asked = [rng.choice(ids, count, replace=False).tolist() for _ in range(50)]
        seconds = [timed(lambda some=some: rows_by_id(uri, some, ["image_id", "image"]))
                   for some in asked]
        print(f"    rows_by_id of {count:>3} ids, {label:<34} {percentiles(seconds)} {load()}")


def drop_indexes(uri: str) -> None:
    dataset = lance.dataset(uri)
    for index in dataset.describe_indices():
        dataset.drop_index(index.name)


def scans_part(root: str, rows: int, commit_rows: int, image_bytes: int) -> None:
    print(f"\n2. scans: {rows:,} rows of {image_bytes:,}-byte images in commits of "
          f"{commit_rows:,} through TableAppender + Workdir.append {load()}")
    rng = np.random.default_rng(0)
    make = partial(scan_rows, image_bytes=image_bytes)
    ids = [f"{i:064x}" for i in range(rows)]
    for label, kind in (("with upkeep", _Recording), ("without upkeep", _NoUpkeep)):
        workdir = kind(os.path.join(root, f"scans-{kind.__name__}"))
        seconds = append_through_writer(workdir, partial(workdir.append, SCANS), make, rows,
                                        commit_rows)
        uri = workdir.table_uri(SCANS)
        report_appends(label, workdir, uri, seconds)
        indexed = any(d.field_names == ["image_id"]
                      for d in lance.dataset(uri).describe_indices())
        if indexed:
            lookups(uri, ids, f"{label}, BTREE on image_id", rng)
            drop_indexes(uri)
            lookups(uri, ids, f"{label}, no index", rng)
        else:
            lookups(uri, ids, f"{label}, no index", rng)
            workdir.indexed_uri(SCANS)
            lookups(uri, ids, f"{label}, BTREE on image_id", rng)
        shutil.rmtree(workdir.root)


def search(table: lancedb.table.Table, queries: np.ndarray) -> list[float]:
    return [timed(lambda q=q: table.search(q).limit(20).to_arrow()) for q in queries]


def embeddings_part(root: str, rows: int, commit_rows: int, dim: int) -> None:
    print(f"\n3. embeddings: {rows:,} vectors of {dim} float32 in commits of {commit_rows:,} "
          f"through TableAppender + Workdir.append_embeddings {load()}")
    make = partial(embedding_rows, dim=dim)
    for label, kind in (("without upkeep", _NoUpkeep), ("with upkeep", _Recording)):
        workdir = kind(os.path.join(root, f"embeddings-{kind.__name__}"))
        append = partial(workdir.append_embeddings, KEY)
        seconds = append_through_writer(workdir, append, make, rows, commit_rows)
        table = workdir.embeddings_table(KEY)
        report_appends(label, workdir, table.uri, seconds)
        if kind is _NoUpkeep:
            shutil.rmtree(workdir.root)
    queries = np.random.default_rng(1).standard_normal((50, dim), dtype=np.float32)
    print(f"    20-NN search, no vector index:      {percentiles(search(table, queries))} "
          f"{load()}")
    built = timed(lambda: ensure_vector_index(workdir, KEY, min_rows=1))
    table = workdir.embeddings_table(KEY)
    print(f"    IVF-PQ index built by jobs.embed.ensure_vector_index in {built:.1f} s {load()}")
    print(f"    20-NN search, IVF-PQ index:         {percentiles(search(table, queries))} "
          f"{load()}")
    workdir.upkeeps.clear()
    more = 20 * commit_rows
    append_through_writer(workdir, partial(workdir.append_embeddings, KEY), make, more,
                          commit_rows, start=rows)
    table = workdir.db.open_table(embeddings_table_name(KEY))
    for index in table.list_indices():
        stats = table.index_stats(index.name)
        print(f"    after {more:,} more rows: index {index.name} covers "
              f"{stats.num_indexed_rows:,} rows, leaves out {stats.num_unindexed_rows:,}; "
              f"{sum(u.folded for u in workdir.upkeeps)} folds took "
              f"{sum(u.seconds for u in workdir.upkeeps if u.folded):.1f} s {load()}")
    print(f"    20-NN search, IVF-PQ index then:    {percentiles(search(table, queries))} "
          f"{load()}")
    shutil.rmtree(workdir.root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--commit-rows", type=int, default=1_000)
    parser.add_argument("--image-bytes", type=int, default=30_000)
    parser.add_argument("--merge-image-bytes", type=int, default=1_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--merge-sizes", type=int, nargs="*",
                        default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--parts", default="123", help="which parts to run, e.g. 23")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temp one)")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="lancedb-scale-", dir=args.workdir)
    print(f"lancedb {lancedb.__version__}, pylance {lance.__version__}, {os.cpu_count()} CPUs, "
          f"scratch {root} {load()}")
    try:
        if "1" in args.parts and args.merge_sizes:
            keyed_commit_costs(root, args.merge_sizes, args.merge_image_bytes, args.dim)
        if "2" in args.parts:
            scans_part(root, args.rows, args.commit_rows, args.image_bytes)
        if "3" in args.parts:
            embeddings_part(root, args.rows, args.commit_rows, args.dim)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
