"""View labels to score clusters with (never to train): a user's file, or the typed view names.

A label file is CSV or Parquet: a `view` column, an optional `site`, and `image_id`, `path` or
`file` naming the scan. A row is matched to the scans of a workdir in this order:
1. by image id;
2. by path: the scan's (or its byte-identical copy's) source, as written or resolved against
   the label file's folder;
3. by file name, where exactly one ingested file has it;
4. by content: the sha256 of the file the row names is the id of its scan, so a copy renamed
   by a PACS export still matches.
A row naming a multi-frame file labels each of its frames. Rows matching no scan are counted.

Without a file, the labels are the pseudo-views ingest read from text typed on the scans
(`scans.pseudo_view`); scans without one are left out.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from fusc_lib.io import content_id
from fusc_lib.store import Workdir
from fusc_lib.views import UNKNOWN, load_vocabulary
from schemas.tables import DUPLICATES

PSEUDO_VIEWS = "pseudo-views"
KEY_COLUMNS = ("image_id", "path", "file")


@dataclass
class ScanLabels:
    """Labels of scans by image id, and where they came from."""

    source: str  # PSEUDO_VIEWS or the label file's path
    views: dict[str, str]  # image_id -> view
    sites: dict[str, str] = field(default_factory=dict)  # image_id -> site, where given
    unmatched: int = 0  # label rows naming no scan

    def super_classes(self) -> dict[str, str]:
        """image_id -> the view's super-class in the view vocabulary (itself when the label is
        no view of the vocabulary: a user's own class names are kept as they are)."""
        vocabulary = load_vocabulary()
        merged = {view: vocabulary.super_class(view) for view in set(self.views.values())}
        return {image_id: merged[view] if merged[view] != UNKNOWN else view
                for image_id, view in self.views.items()}


def load_labels(workdir: Workdir, path: str | Path | None) -> ScanLabels:
    """The labels of the workdir's scans: from `path`, else the pseudo-views.

    Raises ValueError when the file lacks a `view` column or every key column, or is neither
    CSV nor Parquet.
    """
    return label_file(workdir, Path(path)) if path else pseudo_view_labels(workdir)


def pseudo_view_labels(workdir: Workdir) -> ScanLabels:
    """The typed view names ingest read (region-only reads such as "heart" included)."""
    scans = workdir.scans(["image_id", "pseudo_view"])
    views = {i: v for i, v in zip(scans.column("image_id").to_pylist(),
                                  scans.column("pseudo_view").to_pylist()) if v != UNKNOWN}
    return ScanLabels(PSEUDO_VIEWS, views)


def label_file(workdir: Workdir, path: Path) -> ScanLabels:
    rows = _read_rows(path)
    matcher = _Matcher(workdir, path.parent)
    views, sites, unmatched = {}, {}, 0
    for row in rows:
        image_ids = matcher.match(row)
        unmatched += not image_ids
        for image_id in image_ids:
            views[image_id] = str(row["view"])
            if row.get("site"):
                sites[image_id] = str(row["site"])
    return ScanLabels(str(path), views, sites, unmatched)


def _read_rows(path: Path) -> list[dict]:
    if path.suffix.lower() == ".parquet":
        table = pq.read_table(path)
    elif path.suffix.lower() in (".csv", ".txt"):
        table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
            column_types={name: pa.string() for name in (*KEY_COLUMNS, "view", "site")}))
    else:
        raise ValueError(f"labels {path}: give a .csv or .parquet file")
    columns = set(table.column_names)
    if "view" not in columns or not columns & set(KEY_COLUMNS):
        raise ValueError(f"labels {path}: need a `view` column and one of "
                         f"{', '.join(KEY_COLUMNS)} (found: {', '.join(sorted(columns))})")
    return [row for row in table.to_pylist() if row.get("view")]


class _Matcher:
    """Finds the scans a label row names (id, path, file name, content; see module doc)."""

    def __init__(self, workdir: Workdir, folder: Path):
        self.folder = folder
        scans = workdir.scans(["image_id", "source_uri"])
        copies = workdir.read(DUPLICATES, ["image_id", "source_uri"])
        self.frames: dict[str, list[str]] = defaultdict(list)  # file id -> its frames' ids
        self.by_path: dict[str, set[str]] = defaultdict(set)  # source -> image ids
        for table in (scans, copies):
            for image_id, uri in zip(table.column("image_id").to_pylist(),
                                     table.column("source_uri").to_pylist()):
                self.by_path[_normal(uri)].add(image_id)
        for image_id in scans.column("image_id").to_pylist():
            self.frames[image_id.split("-f")[0]].append(image_id)
        by_name: dict[str, set[str]] = defaultdict(set)
        for uri in self.by_path:
            by_name[os.path.basename(uri)].add(uri)
        self.unique_names = {name: next(iter(uris)) for name, uris in by_name.items()
                             if len(uris) == 1}

    def match(self, row: dict) -> list[str]:
        if row.get("image_id"):
            file_id = row["image_id"].split("-f")[0]
            return [row["image_id"]] if row["image_id"] in self.frames.get(file_id, []) else []
        written = row.get("path") or row.get("file")
        if not written:
            return []
        for candidate in (written, str(self.folder / written)):
            if _normal(candidate) in self.by_path:
                return sorted(self.by_path[_normal(candidate)])
        name = self.unique_names.get(os.path.basename(written))
        if name:
            return sorted(self.by_path[name])
        return self._by_content(self.folder / written)

    def _by_content(self, path: Path) -> list[str]:
        if not path.is_file():
            return []
        return sorted(self.frames.get(content_id(path.read_bytes()), []))


def _normal(uri: str) -> str:
    return uri if "://" in uri else os.path.normpath(os.path.abspath(uri))
