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
from schemas.tables import SCHEMAS

DEFAULT_WORKDIR = "./fusc-work"


def rows_by_id(table_uri: str, image_ids: list[str], columns: list[str]) -> pa.Table:
    """The rows of a Lance table whose image_id is one of `image_ids` (any order)."""
    return lance.dataset(table_uri).to_table(columns=columns,
                                             filter=pc.field("image_id").isin(image_ids))


def utc_now() -> datetime:
    return datetime.now(UTC)


class Workdir:
    """Paths and tables of one FUSC workdir."""

    def __init__(self, root: str = DEFAULT_WORKDIR):
        if "://" not in root:
            root = os.path.abspath(root)
        self.root = root.rstrip("/")
        self._db: lancedb.DBConnection | None = None

    def path(self, *parts: str) -> str:
        """A path (or URI) inside the workdir."""
        return "/".join([self.root, *parts])

    @property
    def lancedb_uri(self) -> str:
        return self.path("lancedb")

    @property
    def db(self) -> lancedb.DBConnection:
        if self._db is None:
            self._db = lancedb.connect(self.lancedb_uri)
        return self._db

    def table(self, name: str, schema: pa.Schema | None = None) -> lancedb.table.Table:
        """Open a table, creating it empty the first time with its schema from `schemas/`.

        Tables whose schema depends on the data (the vector width of `embeddings`) pass it.
        """
        if self.has_table(name):
            return self.db.open_table(name)
        return self.db.create_table(name, schema=SCHEMAS.get(name) or schema, exist_ok=True)

    def has_table(self, name: str) -> bool:
        return name in self.db.list_tables().tables

    def table_uri(self, name: str) -> str:
        """The Lance dataset URI of a table, for Ray Data's read_lance / write_lance."""
        return self.table(name).uri

    def indexed_uri(self, name: str) -> str:
        """The URI of a table with a BTREE index on `image_id`, so that workers can look rows
        up by id (`rows_by_id`) without scanning it."""
        table = self.table(name)
        if not any(index.columns == ["image_id"] for index in table.list_indices()):
            table.create_scalar_index("image_id")
        return table.uri

    def column(self, name: str, column: str) -> pa.ChunkedArray:
        """One column of a table, read without touching the others (image bytes stay on disk)."""
        return self.table(name).to_lance().to_table(columns=[column]).column(column)

    def append(self, name: str, rows: pa.Table) -> None:
        """Append rows, cast to the table's schema (so a batch cannot change a column's type)."""
        if rows.num_rows:
            table = self.table(name, rows.schema)
            table.add(rows.select(table.schema.names).cast(table.schema))

    def overwrite(self, name: str, rows: pa.Table) -> None:
        """Replace a table's content in one commit (stages that rewrite their whole output)."""
        schema = SCHEMAS[name]
        self.db.create_table(name, rows.select(schema.names).cast(schema), mode="overwrite")

    def delete_where(self, name: str, column: str, values: list[str]) -> None:
        """Delete the rows whose `column` is one of `values` (in chunks: SQL IN lists stay short)."""
        for start in range(0, len(values), 1000):
            chunk = values[start:start + 1000]
            quoted = ", ".join("'" + v.replace("'", "''") + "'" for v in chunk)
            self.table(name).delete(f"{column} IN ({quoted})")

    def ssl_run_dir(self, run: str) -> str:
        return self.path("models", "ssl", run)

    def cluster_model_dir(self, version: str) -> str:
        return self.path("models", "cluster", version)

    def ssl_runs(self, marker: str = "encoder.json") -> list[str]:
        """Names of the SSL runs holding `marker` (what a finished run exports), oldest first."""
        filesystem, root = pafs.FileSystem.from_uri(self.path("models", "ssl"))
        runs = filesystem.get_file_info(pafs.FileSelector(root, allow_not_found=True))
        configs = filesystem.get_file_info([f"{r.path}/{marker}" for r in runs
                                            if r.type == pafs.FileType.Directory])
        found = [c for c in configs if c.type == pafs.FileType.File]
        return [c.path.rsplit("/", 2)[-2] for c in sorted(found, key=lambda c: c.mtime)]

    # --- small JSON artifacts (configs the stages share) ---

    def read_json(self, *parts: str) -> dict | None:
        uri = self.path(*parts)
        return json.loads(artifacts.read_bytes(uri)) if artifacts.exists(uri) else None

    def write_json(self, payload: dict, *parts: str) -> None:
        data = json.dumps(payload, indent=2, sort_keys=True).encode()
        artifacts.write_bytes(self.path(*parts), data)
