"""`fusc export`: the assignments of a cluster model as one CSV or Parquet file.

One row per file frame: source_uri, frame, image_id, cluster_id, cluster_name, confidence, site,
pseudo_view, duplicate_of. A file with several frames has one row per frame; a file whose bytes
equal an ingested one (table `duplicates`) has its twin's cluster, and `duplicate_of` names the
twin's source (null for every other row).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from fusc_lib.cluster_model import ClusterModel
from fusc_lib.store import Workdir
from schemas.tables import ASSIGNMENTS, DUPLICATES, SITES

FORMATS = ("csv", "parquet")
COLUMNS = ["source_uri", "frame", "image_id", "cluster_id", "cluster_name", "confidence",
           "site", "pseudo_view", "duplicate_of"]


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
    return joined.select(COLUMNS).sort_by([("source_uri", "ascending"), ("frame", "ascending")])


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
    """Write as `file_format`, or as the output's suffix says (csv | parquet)."""
    output = Path(output)
    file_format = file_format or output.suffix.lstrip(".").lower()
    if file_format not in FORMATS:
        raise ValueError(f"unknown export format {file_format!r}; use one of {', '.join(FORMATS)}")
    output.parent.mkdir(parents=True, exist_ok=True)
    if file_format == "csv":
        pacsv.write_csv(table, output)
    else:
        pq.write_table(table, output)
    return str(output)
