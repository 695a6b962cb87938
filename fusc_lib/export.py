"""`fusc export`: the assignments of a cluster model, with the review's labels.

CSV or Parquet, one row per file frame: source_uri, frame, image_id, cluster_id, cluster_name,
label, label_source, confidence, site, pseudo_view, duplicate_of. A file with several frames has
one row per frame; a file whose bytes equal an ingested one (table `duplicates`) has its twin's
cluster and label, and `duplicate_of` names the twin's source (null for every other row).
`label` is the reviewer's (fusc_lib/review.py): `label_source` says whether it is the cluster's
name, a move, an exclusion (no label) or only the cluster's suggested name.

`imagefolder`: the scans a reviewer labelled (cluster named, or moved) as
`DIR/<label>/<file>.png`, the preprocessed image, for torchvision's `ImageFolder`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from fusc_lib import artifacts
from fusc_lib.cluster_model import ClusterModel
from fusc_lib.review import CLUSTER, EXCLUDED, MOVED, ReviewState, review_state, suggestions
from fusc_lib.store import Workdir, rows_by_id
from schemas.tables import ASSIGNMENTS, DUPLICATES, SCANS, SITES

FORMATS = ("csv", "parquet", "imagefolder")
COLUMNS = ["source_uri", "frame", "image_id", "cluster_id", "cluster_name", "label",
           "label_source", "confidence", "site", "pseudo_view", "duplicate_of"]


def export_table(workdir: Workdir, version: str | None = None) -> pa.Table:
    model = ClusterModel.load(workdir, version)
    if not workdir.has_table(ASSIGNMENTS):
        raise ValueError("no assignments yet: run `fusc assign` first")
    assigned = workdir.assignments(model.version, ["image_id", "cluster_id", "confidence"])
    if not assigned.num_rows:
        raise ValueError(f"model {model.version} has assigned no scans: run `fusc assign`")
    scans = _source_files(workdir)
    sites = workdir.read(SITES, ["image_id", "site"])
    names = pa.table({"cluster_id": pa.array(list(model.names), pa.int32()),
                      "cluster_name": pa.array(list(model.names.values()), pa.string())})
    joined = (assigned.join(scans, "image_id").join(sites, "image_id", join_type="left outer")
              .join(names, "cluster_id", join_type="left outer"))
    joined = _with_labels(joined, review_state(workdir, model.version), model.n_clusters)
    return joined.select(COLUMNS).sort_by([("source_uri", "ascending"), ("frame", "ascending")])


def _with_labels(rows: pa.Table, state: ReviewState, n_clusters: int) -> pa.Table:
    """`rows` with the review's `label` and `label_source` of each (see fusc_lib/review.py);
    suggestions from the pseudo-views of each cluster's scans (copies not counted twice)."""
    originals = rows.filter(pc.is_null(rows["duplicate_of"]))
    suggested = suggestions(originals["pseudo_view"].to_pylist(),
                            originals["cluster_id"].to_numpy(), n_clusters)
    labels = [state.label(i, c, suggested.get(c, (None,))[0])
              for i, c in zip(rows["image_id"].to_pylist(), rows["cluster_id"].to_pylist())]
    return (rows.append_column("label", pa.array([label for label, _ in labels], pa.string()))
            .append_column("label_source", pa.array([s for _, s in labels], pa.string())))


def _source_files(workdir: Workdir) -> pa.Table:
    """Every ingested file frame: `scans` rows, then `duplicates` rows carrying their twin's
    image_id and pseudo view and its source in `duplicate_of`."""
    scans = workdir.scans(["image_id", "source_uri", "frame", "pseudo_view"])
    twins = scans.select(["image_id", "pseudo_view", "source_uri"]).rename_columns(
        ["image_id", "pseudo_view", "duplicate_of"])
    copies = workdir.read(DUPLICATES, ["image_id", "source_uri", "frame"]).join(twins, "image_id")
    originals = scans.append_column("duplicate_of", pa.nulls(scans.num_rows, pa.string()))
    return pa.concat_tables([originals, copies.select(originals.column_names)],
                            promote_options="permissive")


def write_export(table: pa.Table, output: str | Path, file_format: str | None = None) -> str:
    """Write as `file_format`, or as the output's suffix says (csv | parquet), to a local path
    or an object-store URI (s3://...); imagefolder through `write_imagefolder`. Returns where."""
    output = str(output)
    file_format = file_format or PurePosixPath(output).suffix.lstrip(".").lower()
    if file_format not in FORMATS[:2]:
        raise ValueError(f"unknown export format {file_format!r}; use one of {', '.join(FORMATS)}")
    with artifacts.open_output(output) as stream:
        if file_format == "csv":
            pacsv.write_csv(table, stream)
        else:
            pq.write_table(table, stream)
    return output


@dataclass
class ImageFolderSummary:
    folder: str
    written: dict[str, int]  # label -> images
    excluded: int
    unlabelled: int  # no reviewer label (a suggestion is not one)


def write_imagefolder(workdir: Workdir, table: pa.Table, folder: str | Path) -> ImageFolderSummary:
    """The labelled scans of an export `table` (label source cluster or moved; one per scan,
    copies left out) as `folder/<label>/<file name>[_fNNNN]_<id8>.png`: the stored image."""
    folder = str(folder).rstrip("/")
    scans = table.filter(pc.is_null(table["duplicate_of"]))
    sources = scans["label_source"].to_pylist()
    kept = scans.filter(pa.array([s in (CLUSTER, MOVED) for s in sources]))
    images = rows_by_id(workdir.table_uri(SCANS), kept["image_id"].to_pylist(),
                        ["image_id", "image"])
    png = dict(zip(images["image_id"].to_pylist(), images["image"].to_pylist()))
    written: dict[str, int] = {}
    for row in kept.select(["image_id", "source_uri", "frame", "label"]).to_pylist():
        artifacts.write_bytes(f"{folder}/{_folder_name(row['label'])}/{_file_name(row)}",
                              png[row["image_id"]])
        written[row["label"]] = written.get(row["label"], 0) + 1
    return ImageFolderSummary(folder, written, sources.count(EXCLUDED),
                              len(sources) - kept.num_rows - sources.count(EXCLUDED))


def _folder_name(label: str) -> str:
    """A label as one safe folder name: no separators, no leading dots."""
    return re.sub(r"[\\/\x00-\x1f]+", "_", label).lstrip(".") or "_"


def _file_name(row: dict) -> str:
    stem = Path(row["source_uri"]).stem or "scan"
    frame = f"_f{row['frame']:04d}" if row["frame"] else ""
    return f"{stem}{frame}_{row['image_id'][:8]}.png"
