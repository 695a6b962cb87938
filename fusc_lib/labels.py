"""View labels to score clusters with (never to train): a user's file, or the typed view names.

A label file is CSV or Parquet: a `view` column, an optional `site`, and `image_id`, `path` or
`file` naming the scan. A row is matched to the scans of a workdir in this order:
1. by image id;
2. by path: the scan's (or its byte-identical copy's) source, as written or resolved against
   the label file's folder;
3. by file name, where the files of that name hold the same scans (one file, or its copies);
4. by content: the sha256 of the file the row names is the id of its scan, so a copy renamed
   by a PACS export still matches.
A row naming a multi-frame file labels each of its frames. Rows matching no scan are counted.

Without a file, the labels are the pseudo-views ingest read from text typed on the scans
(`scans.pseudo_view`); scans without one are left out.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
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


def load_labels(workdir: Workdir, paths: str | Path | Sequence[str | Path] | None
                ) -> ScanLabels:
    """The labels of the workdir's scans: from the file(s) at `paths` (a later file's row wins
    over an earlier one's), else the pseudo-views.

    Raises ValueError when a file lacks a `view` column or every key column, or is neither
    CSV nor Parquet.
    """
    if not paths:
        return pseudo_view_labels(workdir)
    files = [label_file(workdir, Path(p)) for p in
             ([paths] if isinstance(paths, str | Path) else paths)]
    return ScanLabels(source=", ".join(f.source for f in files),
                      views={i: v for f in files for i, v in f.views.items()},
                      sites={i: s for f in files for i, s in f.sites.items()},
                      unmatched=sum(f.unmatched for f in files))


def labels_of(labels: ScanLabels, image_ids: Sequence[str]) -> tuple[list[str], list[str]]:
    """(views, sites) of the given scans, `unknown` where no site is given. Raises ValueError
    naming how many of the scans carry no label."""
    missing = [i for i in image_ids if i not in labels.views]
    if missing:
        raise ValueError(f"{len(missing)} of {len(image_ids)} scans have no label in "
                         f"{labels.source} (e.g. image id {missing[0]})")
    return ([labels.views[i] for i in image_ids],
            [labels.sites.get(i, UNKNOWN) for i in image_ids])


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
        # A name is kept when every file of that name holds the same scans (a copy in a
        # re-export folder keeps its name): two different files of one name stay ambiguous.
        scans_named: dict[str, set[frozenset[str]]] = defaultdict(set)
        for uri, image_ids in self.by_path.items():
            scans_named[os.path.basename(uri)].add(frozenset(image_ids))
        self.by_name = {name: sorted(next(iter(found))) for name, found in scans_named.items()
                        if len(found) == 1}

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
        return (self.by_name.get(os.path.basename(written))
                or self._by_content(self.folder / written))

    def _by_content(self, path: Path) -> list[str]:
        if not path.is_file():
            return []
        return sorted(self.frames.get(content_id(path.read_bytes()), []))


def _normal(uri: str) -> str:
    return uri if "://" in uri else os.path.normpath(os.path.abspath(uri))
