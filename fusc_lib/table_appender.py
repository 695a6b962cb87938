"""Appending a stream of Arrow batches to a LanceDB table in commits of bounded size.

Rows reach the driver from Ray Data and are committed every `commit_rows`: memory stays flat, and
a killed job loses at most one uncommitted buffer, which its rerun redoes. The commit itself is
`Workdir.append` (or `append_embeddings`): it leaves out rows whose key the table holds already,
so a buffer committed twice adds nothing, and it compacts and indexes the table as it grows
(`Workdir.maintain`), so many small commits do not leave as many small fragments.
"""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa


class TableAppender:
    """Buffers rows for one table; `flush` commits them as one LanceDB append (`append`, e.g.
    `partial(workdir.append, ASSIGNMENTS)`, which returns the rows it appended)."""

    def __init__(self, append: Callable[[pa.Table], int], commit_rows: int):
        self.append = append
        self.commit_rows = commit_rows
        self.committed = 0  # rows appended by the commits so far
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
        """Commit the buffered rows, if any, in one append; the buffer is emptied either way
        except when the append raises (the rows stay buffered for a retry)."""
        if self._pending:
            self.committed += self.append(pa.concat_tables(self._pending))
        self._pending, self._pending_rows = [], 0
