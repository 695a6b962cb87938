"""The workdir: one place that knows where every table and artifact of a run lives.

A workdir is a local folder or an object-store URI (s3://...). LanceDB tables sit in
`<workdir>/lancedb/`, models in `<workdir>/models/`, reports in `<workdir>/reports/`.
Stages meet only through these, so each one can be rerun or run on another machine pool.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime

import lance
import lancedb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from fusc_lib import artifacts
from fusc_lib.config import DEFAULT_WORKDIR
from fusc_lib.layout import (
    CLUSTER_MODEL_INFO,
    CLUSTER_MODELS,
    ENCODER_INFO,
    LANCEDB,
    REPORTS,
    SSL_RUNS,
)
from fusc_lib.table_upkeep import Upkeep, maintain, unindexed_rows
from schemas.tables import (
    ASSIGNMENTS,
    EMBEDDING_KEY,
    EMBEDDINGS_PREFIX,
    LEGACY_EMBEDDINGS,
    NEIGHBORS,
    ROW_KEYS,
    SCANS,
    SCHEMAS,
    SITES,
    embeddings_schema,
    embeddings_table_name,
)


def rows_by_id(table_uri: str, image_ids: list[str], columns: list[str]) -> pa.Table:
    """The rows of a Lance table whose image_id is one of `image_ids` (any order)."""
    return lance.dataset(table_uri).to_table(columns=columns,
                                             filter=pc.field("image_id").isin(
                                                 pa.array(image_ids, pa.string())))


# Columns renamed since a release: old name -> name today.
RENAMED_COLUMNS = {NEIGHBORS: {"model_run": "embedding_key"}}
# Nullable columns added since a release: an older table gets them, all null, on first open.
ADDED_COLUMNS = {SCANS: ["style"]}


def _up_to_date(table: lancedb.table.Table) -> lancedb.table.Table:
    """`table` with today's column names and columns (`RENAMED_COLUMNS`, `ADDED_COLUMNS`)."""
    old_names = RENAMED_COLUMNS.get(table.name, {})
    renames = [{"path": old, "rename": new} for old, new in old_names.items()
               if old in table.schema.names]
    if renames:
        table.alter_columns(*renames)
    added = [SCHEMAS[table.name].field(name) for name in ADDED_COLUMNS.get(table.name, [])
             if name not in table.schema.names]
    if added:
        table.add_columns(added)
    return table


def by_embedding(embedding_key: str) -> pc.Expression:
    """The filter of rows made for one embedding key (`neighbors`; also for Ray Data's
    `read_lance(filter=...)`, which passes it to Lance as is)."""
    return pc.field("embedding_key") == embedding_key


def utc_now() -> datetime:
    return datetime.now(UTC)


def _add(table: lancedb.table.Table, rows: pa.Table, key: tuple[str, ...] = ()) -> int:
    """Append rows cast to the table's schema (so a batch cannot change a column's type), less
    those whose `key` (`ROW_KEYS`) the table holds already; returns how many were appended.

    A commit repeated after a crash therefore adds nothing. Not LanceDB's `merge_insert`: per
    1,000-row commit on a 1M-row table it cost 21-67x an `add` without an index on the key,
    uses one only when every key column has one, and reads every column of the fragments the
    index does not cover yet (embeddings, 8 such commits: 20x an add). Here only the key
    columns are read, through the key's BTREE where there is one (`maintain` builds it): 2-4x
    an add (bench/lancedb_scale.py, part 1). Look-up and add are two steps, which is safe with
    one writer per table, as every job has.
    """
    rows = rows.select(table.schema.names).cast(table.schema)
    if key and rows.num_rows:
        rows = _not_in_table(table, rows, key)
    if rows.num_rows:
        table.add(rows)
    return rows.num_rows


def _not_in_table(table: lancedb.table.Table, rows: pa.Table, key: tuple[str, ...]) -> pa.Table:
    """The rows whose `key` columns match no row of `table`, in their order."""
    found = table.to_lance().to_table(columns=list(key),
                                      filter=pc.field(key[0]).isin(pc.unique(rows[key[0]])))
    if not found.num_rows:
        return rows
    numbered = rows.select(list(key)).append_column("_row", pa.array(range(rows.num_rows),
                                                                      pa.int64()))
    kept = numbered.join(found, keys=list(key), join_type="left anti").column("_row")
    return rows.take(kept.sort())


def _row_key(name: str) -> tuple[str, ...]:
    """The key columns of table `name` (`ROW_KEYS`), () for a table without one."""
    if name.startswith(EMBEDDINGS_PREFIX):
        return ROW_KEYS[EMBEDDINGS_PREFIX]
    return ROW_KEYS.get(name, ())


class Workdir:
    """Paths and tables of one FUSC workdir."""

    def __init__(self, root: str = DEFAULT_WORKDIR):
        if "://" not in root:
            root = os.path.abspath(root)
        self.root = root.rstrip("/")
        self._db: lancedb.DBConnection | None = None
        self._embeddings_migrated = False

    def path(self, *parts: str) -> str:
        """A path (or URI) inside the workdir."""
        return "/".join([self.root, *parts])

    @property
    def lancedb_uri(self) -> str:
        return self.path(LANCEDB)

    @property
    def db(self) -> lancedb.DBConnection:
        if self._db is None:
            self._db = lancedb.connect(self.lancedb_uri)
        return self._db

    def table(self, name: str) -> lancedb.table.Table:
        """Open a table, creating it empty the first time with its schema from `schemas/`
        (embeddings: `embeddings_table`). Columns an older workdir named otherwise are renamed,
        and columns added since are added all null, on first open (`_up_to_date`)."""
        if self.has_table(name):
            return _up_to_date(self.db.open_table(name))
        return self.db.create_table(name, schema=SCHEMAS[name], exist_ok=True)

    def has_table(self, name: str) -> bool:
        """Whether table `name` exists with a committed version. The folder of a table whose
        creation was killed before its first commit (listed, but with no version to open: a
        `fusc run` killed in that instant) is dropped here, so its stage makes it again."""
        if name not in self.db.list_tables().tables:
            return False
        if artifacts.file_names(f"{self.lancedb_uri}/{name}.lance/_versions"):
            return True
        self.db.drop_table(name)
        return False

    def table_uri(self, name: str) -> str:
        """The Lance dataset URI of a table, for Ray Data's read_lance / write_lance."""
        return self.table(name).uri

    def indexed_uri(self, name: str) -> str:
        """The URI of a table with a BTREE index on `image_id` that covers every row, so that
        workers can look rows up by id (`rows_by_id`) without scanning it. Builds the index, or
        folds rows appended since into it, only where needed: a table already so indexed keeps
        its version."""
        table = self.table(name)
        dataset = table.to_lance()
        index = next((i for i in dataset.describe_indices() if i.field_names == ["image_id"]),
                     None)
        if index is None:
            dataset.create_scalar_index("image_id", index_type="BTREE")
        elif unindexed_rows(dataset, index):
            dataset.optimize.optimize_indices(index_names=[index.name])
        return table.uri

    def read(self, name: str, columns: list[str] | None = None,
             filter: pc.Expression | None = None) -> pa.Table:
        """The rows of table `name` matching `filter`, only `columns` (default all).

        Filters are pyarrow expressions (`pc.field("site") == site`): values are never pasted
        into SQL. Columns not asked for stay on disk (image bytes, vectors).
        """
        return self.table(name).to_lance().to_table(columns=columns, filter=filter)

    def column(self, name: str, column: str) -> pa.ChunkedArray:
        """One column of a table, read without touching the others."""
        return self.read(name, [column]).column(column)

    def scans(self, columns: list[str], filter: pc.Expression | None = None) -> pa.Table:
        """Rows of `scans` (see schemas/tables.py); ask only for the columns needed."""
        return self.read(SCANS, columns, filter)

    def site_of(self) -> dict[str, str]:
        """image_id -> site of every scan, as `fusc sites` wrote them (given or inferred)."""
        sites = self.read(SITES, ["image_id", "site"])
        return dict(zip(sites.column("image_id").to_pylist(), sites.column("site").to_pylist()))

    def neighbors(self, embedding_key: str, columns: list[str] | None = None) -> pa.Table:
        """The neighbour rows mined in the clustering space of `embedding_key`."""
        return self.read(NEIGHBORS, columns, by_embedding(embedding_key))

    def assignments(self, version: str, columns: list[str] | None = None) -> pa.Table:
        """The rows `fusc assign` wrote for cluster model `version`."""
        return self.read(ASSIGNMENTS, columns, pc.field("model_version") == version)

    def append(self, name: str, rows: pa.Table) -> int:
        """Append rows to a table of `schemas/` in one commit, less those whose key (`ROW_KEYS`)
        it holds already (see `_add`), then keep it compact and indexed (`maintain`). Returns
        the number of rows appended. Columns are cast to the table's schema; a missing column
        raises KeyError, a value that does not cast pyarrow's ArrowInvalid."""
        return self._append_to(self.table(name), rows) if rows.num_rows else 0

    def overwrite(self, name: str, rows: pa.Table) -> None:
        """Replace a table's content in one commit (stages that rewrite their whole output)."""
        schema = SCHEMAS[name]
        self.db.create_table(name, rows.select(schema.names).cast(schema), mode="overwrite")

    def delete_where(self, name: str, column: str, values: list[str]) -> None:
        """Delete, in one commit, the rows whose `column` is one of `values`."""
        if values:
            self.table(name).to_lance().delete(pc.field(column).isin(values))

    # --- embeddings: one table per embedding key, each its own vector space of any width ---

    def embedding_keys(self) -> list[str]:
        """The embedding keys that have a table, sorted."""
        self._migrate_embeddings()
        names = [n for n in self.db.list_tables().tables if n.startswith(EMBEDDINGS_PREFIX)]
        return sorted(self.db.open_table(n).schema.metadata[EMBEDDING_KEY].decode()
                      for n in names)

    def has_embeddings(self, key: str) -> bool:
        self._migrate_embeddings()
        return self.has_table(embeddings_table_name(key))

    def embeddings_table(self, key: str, dim: int | None = None) -> lancedb.table.Table:
        """The table of `key`'s vectors; made empty with `dim`-wide vectors where it does not
        exist yet and `dim` is given (else that is an error saying to embed first)."""
        if self.has_embeddings(key):
            return self.db.open_table(embeddings_table_name(key))
        if dim is None:
            known = ", ".join(self.embedding_keys()) or "none yet"
            raise ValueError(f"no embeddings for {key!r}: run `fusc embed` for it first "
                             f"(embedding keys in this workdir: {known})")
        return self.db.create_table(embeddings_table_name(key),
                                    schema=embeddings_schema(dim, key), exist_ok=True)

    def embeddings(self, key: str, columns: list[str] | None = None,
                   filter: pc.Expression | None = None) -> pa.Table:
        """`columns` (default all) of `key`'s rows that match `filter`; `vector` is an (N, dim)
        fixed-size list column."""
        return self.embeddings_table(key).to_lance().to_table(columns=columns, filter=filter)

    def append_embeddings(self, key: str, rows: pa.Table) -> int:
        """Append vectors of `key` (rows of `embeddings_schema`: `vector` a fixed-size list of
        float32), its table made at their width, less those of an image_id it holds already;
        then `maintain` it. Returns the number of rows appended."""
        if not rows.num_rows:
            return 0
        width = rows.schema.field("vector").type.list_size
        return self._append_to(self.embeddings_table(key, width), rows)

    def _append_to(self, table: lancedb.table.Table, rows: pa.Table) -> int:
        """The keyed append (`_add`) of a non-empty batch, then the table's upkeep."""
        appended = _add(table, rows, _row_key(table.name))
        if appended:
            self.maintain(table.name)
        return appended

    def maintain(self, name: str) -> Upkeep:
        """Keep table `name` (of `schemas/`, or `embeddings_table_name(key)`) compact and indexed
        however many small commits built it (`table_upkeep.maintain`). Every append calls it."""
        return maintain(self.db.open_table(name).to_lance(), _row_key(name))

    def _migrate_embeddings(self) -> None:
        """Split the single `embeddings` table of an older workdir by its `model_run` column
        (today's `embedding_key`) into the per-key tables, then drop it. Checked once per Workdir; a killed migration is redone
        whole on the next call (the per-key tables are overwritten while the old one exists)."""
        if self._embeddings_migrated:
            return
        if self.has_table(LEGACY_EMBEDDINGS):
            legacy = self.db.open_table(LEGACY_EMBEDDINGS).to_lance()
            dim = legacy.schema.field("vector").type.list_size
            for key in pc.unique(legacy.to_table(columns=["model_run"])["model_run"]).to_pylist():
                schema = embeddings_schema(dim, key)
                batches = legacy.to_batches(columns=["image_id", "model_run", "vector",
                                                     "embedded_at"],
                                            filter=pc.field("model_run") == key)
                self.db.create_table(embeddings_table_name(key), mode="overwrite",
                                     data=pa.RecordBatchReader.from_batches(schema, (
                                         b.rename_columns(schema.names).cast(schema)
                                         for b in batches)))
            self.db.drop_table(LEGACY_EMBEDDINGS)
        self._embeddings_migrated = True

    def ssl_run_dir(self, run: str) -> str:
        return self.path(*SSL_RUNS, run)

    def cluster_model_dir(self, version: str) -> str:
        return self.path(*CLUSTER_MODELS, version)

    def report_dir(self, version: str) -> str:
        return self.path(REPORTS, version)

    def ssl_runs(self, marker: str = ENCODER_INFO) -> list[str]:
        """Names of the SSL runs holding `marker` (what a finished run exports), oldest first."""
        return self._model_folders(SSL_RUNS, marker)

    def cluster_versions(self) -> list[str]:
        """Every cluster model version saved here, current or not, oldest first."""
        return self._model_folders(CLUSTER_MODELS, CLUSTER_MODEL_INFO)

    def _model_folders(self, parts: tuple[str, ...], marker: str) -> list[str]:
        filesystem, root = artifacts.resolve(self.path(*parts))
        folders = filesystem.get_file_info(pafs.FileSelector(root, allow_not_found=True))
        markers = filesystem.get_file_info([f"{f.path}/{marker}" for f in folders
                                            if f.type == pafs.FileType.Directory])
        found = [m for m in markers if m.type == pafs.FileType.File]
        return [m.path.rsplit("/", 2)[-2] for m in sorted(found, key=lambda m: m.mtime)]

    # --- small JSON artifacts (configs the stages share) ---

    def read_json(self, *parts: str) -> dict | None:
        uri = self.path(*parts)
        return json.loads(artifacts.read_bytes(uri)) if artifacts.exists(uri) else None

    def write_json(self, payload: dict, *parts: str) -> None:
        data = json.dumps(payload, indent=2, sort_keys=True).encode()
        artifacts.write_bytes(self.path(*parts), data)
