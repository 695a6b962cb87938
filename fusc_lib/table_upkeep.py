"""Upkeep of a LanceDB table written in many small commits: size-tiered compaction, a BTREE on
its key once large, indexes folded to cover new rows, old versions pruned.

Figures behind every constant: `bench/lancedb_scale.py` (its parts 1-3).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import timedelta
from time import monotonic

import lance

# Compaction is size-tiered: once COMPACTION_FANOUT fragments at the end of a table are of the
# same size class (classes a factor COMPACTION_FANOUT apart, in bytes) they are merged into one.
# So a million commits leave O(FANOUT * log_FANOUT(bytes)) fragments, and a row is rewritten
# about log_FANOUT(MAX_FRAGMENT_BYTES / bytes of a commit) times (twice for scans).
# LanceDB's `optimize()` instead merges every fragment under 1M rows each time: to take in 16
# commits of 1,000 rows on a 1M-row table held in 100k-row fragments it rewrote the whole
# table, 49 s for 1280-d embeddings where this took 3.4 s (bench part 1).
COMPACTION_FANOUT = 16
# A merge writes fragments of about this many bytes (under twice it), and fragments of half
# this or more are left alone (a read costs the same whatever their neighbours; a rewrite would
# cost their size). Ray Data reads a Lance table a whole fragment per task, and a task holds ~2-5x its
# fragment while it reads (scans at 50,000: 240 MB fragments, read workers of 1.2-1.3 GiB
# private; bench/README.md): bounding the fragment bounds that in the archive's size.
MAX_FRAGMENT_BYTES = 128 << 20
# A keyed table gets a BTREE on its first key column from this many rows on. Below, the scan
# of that one column that `_add` does instead costs about one add (at 100k rows the keyed add
# took 1.6-3x an add; at 1M, 6-18x without the index, 2-4x with it: bench part 1).
KEY_INDEX_MIN_ROWS = 100_000
# Rows not yet in a table's indexes are folded in once they are this share of it. A fold
# rewrites the indexes (the IVF-PQ and BTREE of 112k 1280-d embeddings: 16 s, bench part 3),
# so folding at a fixed share costs O(1) per row; meanwhile a look-up or a vector search scans
# at most this share without index (a 20-NN search with 8k of 120k vectors out of the index:
# 82 ms, against 10 ms with none out).
INDEX_STALE_SHARE = 0.1
# Old versions are pruned once this old: LanceDB's default for `optimize()`. A Ray Data job
# reads the version it started with to its end, and FUSC's longest (embed, train-ssl over an
# archive on CPU) take days; the price is that compacted-away files stay on disk for a week.
VERSION_RETENTION = timedelta(days=7)

log = logging.getLogger(__name__)


@dataclass
class Upkeep:
    """What `Workdir.maintain` did to one table."""

    fragments_before: int
    fragments_after: int = 0
    compactions: int = 0  # merges of a run of fragments into one
    indexed: list[str] = field(default_factory=list)  # columns that got a new BTREE
    folded: bool = False  # rows not yet indexed were folded into the indexes
    pruned_bytes: int = 0  # freed by pruning versions older than VERSION_RETENTION
    seconds: float = 0.0


def _compaction_run(sizes: list[int], fanout: int = COMPACTION_FANOUT,
                    biggest: int = MAX_FRAGMENT_BYTES // 2) -> int:
    """Where the run of trailing fragments to merge starts, given every fragment's size in bytes
    (oldest first); len(sizes) when none is due.

    The run is the longest tail of fragments under `biggest` in which at least `fanout`
    fragments share the tail's largest size class (floor(log_fanout(bytes))): small fragments
    after them ride along, a big one before them waits until `fanout` of its class exist.
    """
    start, top, count = len(sizes), -1, 0
    for i in range(len(sizes) - 1, -1, -1):
        if sizes[i] >= biggest:
            break
        size_class = int(math.log(max(sizes[i], 1), fanout))
        if size_class > top:
            top, count = size_class, 0
        count += size_class == top
        if count >= fanout:
            start = i
    return start


def _fragment_bytes(fragment: lance.LanceFragment) -> int:
    return sum(f.file_size_bytes or 0 for f in fragment.metadata.files)


def unindexed_rows(dataset: lance.LanceDataset, index: lance.lance.indices.IndexDescription
                    ) -> int:
    """Rows of `dataset` in fragments that no segment of `index` covers (manifest only)."""
    return sum(f.metadata.num_rows for f in dataset.get_fragments()
               if not any(f.fragment_id in s.fragment_ids for s in index.segments))




def maintain(dataset: lance.LanceDataset, key: tuple[str, ...]) -> Upkeep:
    """Keep `dataset` cheap to read and to append to; with nothing due it only reads its
    manifest. `key`: the table's key columns (`schemas.tables.ROW_KEYS`), () for none.

    - Compaction, size-tiered: a run of trailing fragments is merged into one once
      COMPACTION_FANOUT of them share a size class (`_compaction_run`).
    - A keyed table gets a BTREE on its first key column from KEY_INDEX_MIN_ROWS rows on.
      Vector indexes are built by `jobs.embed.ensure_vector_index`; folding, below, keeps
      them, like every index, covering the table.
    - Rows that no index covers are folded into the indexes once they are
      INDEX_STALE_SHARE of the table.
    - After a compaction or a fold, versions older than VERSION_RETENTION are pruned.

    A commit conflict with another process (say one building an index through
    `indexed_uri`) ends the upkeep early, logged: the next append takes it up again.
    """
    started = monotonic()
    upkeep = Upkeep(fragments_before=len(dataset.get_fragments()))
    try:
        _compact(dataset, upkeep)
        _keep_indexed(dataset, key, upkeep)
        if upkeep.compactions or upkeep.folded:
            upkeep.pruned_bytes = dataset.cleanup_old_versions(
                older_than=VERSION_RETENTION).bytes_removed
    except OSError as error:
        if "commit conflict" not in str(error).lower():
            raise
        log.warning("upkeep of %s left for the next commit: %s", dataset.uri, error)
    upkeep.fragments_after = len(dataset.get_fragments())
    upkeep.seconds = monotonic() - started
    return upkeep


def _compact(dataset: lance.LanceDataset, upkeep: Upkeep,
             max_bytes: int = MAX_FRAGMENT_BYTES) -> None:
    """Merge runs of trailing fragments while one is due (a merge can complete the next) into
    fragments of at most about `max_bytes`."""
    while True:
        fragments = dataset.get_fragments()
        start = _compaction_run([_fragment_bytes(f) for f in fragments], biggest=max_bytes // 2)
        if start == len(fragments):
            return
        run = fragments[start:]
        rows = sum(f.metadata.num_rows for f in run)
        row_bytes = sum(_fragment_bytes(f) for f in run) / max(rows, 1)
        # Fragments before the run are left out; the run becomes one fragment, or several of
        # MAX_FRAGMENT_BYTES. Lance keeps apart fragments that different indexes cover.
        merged = dataset.optimize.compact_files(
            target_rows_per_fragment=max(1, min(rows + 1, int(max_bytes / row_bytes))),
            excluded_fragment_ids=[f.fragment_id for f in fragments[:start]])
        if not merged.fragments_removed:
            return
        upkeep.compactions += 1


def _keep_indexed(dataset: lance.LanceDataset, key: tuple[str, ...], upkeep: Upkeep) -> None:
    indexes = dataset.describe_indices()
    rows = dataset.count_rows()
    if key and rows >= KEY_INDEX_MIN_ROWS and not any(i.field_names == [key[0]]
                                                      for i in indexes):
        dataset.create_scalar_index(key[0], index_type="BTREE")
        upkeep.indexed.append(key[0])
    stale = max((unindexed_rows(dataset, i) for i in indexes), default=0)
    if stale and stale >= INDEX_STALE_SHARE * rows:
        dataset.optimize.optimize_indices()
        upkeep.folded = True
