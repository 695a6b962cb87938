"""Appending a stream of Arrow batches to a LanceDB table in commits of bounded size.

Rows reach the driver from Ray Data and are committed every `commit_rows`: memory stays flat, and
a killed job loses at most one uncommitted buffer, which its rerun redoes.
"""

from __future__ import annotations

import pyarrow as pa

from fusc_lib.store import Workdir


class TableAppender:
    """Buffers rows for one table; `flush` commits them as one LanceDB append."""

    def __init__(self, workdir: Workdir, table: str, commit_rows: int):
        self.workdir = workdir
        self.table = table
        self.commit_rows = commit_rows
        self.committed = 0
        self._pending: list[pa.Table] = []
        self._pending_rows = 0

    @property
    def full(self) -> bool:
        return self._pending_rows >= self.commit_rows

    def add(self, rows: pa.Table) -> None:
        if rows.num_rows:
            self._pending.append(rows)
            self._pending_rows += rows.num_rows

    def flush(self) -> None:
        if self._pending:
            self.workdir.append(self.table, pa.concat_tables(self._pending))
            self.committed += self._pending_rows
        self._pending, self._pending_rows = [], 0
