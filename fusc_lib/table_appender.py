"""Appending a stream of Arrow batches to a LanceDB table in commits of bounded size.

Rows reach the driver from Ray Data and are committed every `commit_rows`: memory stays flat, and
a killed job loses at most one uncommitted buffer, which its rerun redoes.
"""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa


class TableAppender:
    """Buffers rows for one table; `flush` commits them as one LanceDB append (`append`, e.g.
    `partial(workdir.append, ASSIGNMENTS)`)."""

    def __init__(self, append: Callable[[pa.Table], None], commit_rows: int):
        self.append = append
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
            self.append(pa.concat_tables(self._pending))
            self.committed += self._pending_rows
        self._pending, self._pending_rows = [], 0
