"""`fusc sites`: the site of every scan, given or inferred, into the `sites` table.

Ray Data computes the style statistics of each stored scan (`fusc_lib.sites.style_features`);
the driver groups the scans without a named site and rewrites `sites` whole. The style-group
model is saved to `models/sites/site_model.json` so a scan served online is put in a group the
same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from time import monotonic

import numpy as np
import pyarrow as pa
import ray

from fusc_lib.layout import SITE_MODEL
from fusc_lib.preprocess import decode_png
from fusc_lib.progress import progress_bar
from fusc_lib.sites import resolve_sites, style_features
from fusc_lib.store import Workdir
from jobs.ray_runtime import connect
from schemas.tables import SCANS, SITES


@dataclass
class SitesSummary:
    scans: int
    given: int
    inferred_groups: int  # 0 when every scan had a named site
    sizes: dict[str, int]
    seconds: float


def style_columns(batch: pa.Table) -> pa.Table:
    """Ray Data batch function: image bytes + original size -> style feature vectors."""
    features = [style_features(decode_png(image), width, height) for image, width, height in
                zip(*(batch.column(c).to_pylist() for c in ("image", "width", "height")))]
    flat = np.stack(features).astype(np.float32) if features else np.zeros((0, 1), np.float32)
    return pa.table({"image_id": batch.column("image_id"), "site": batch.column("site"),
                     "style": pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()),
                                                                 flat.shape[1])})


def run_sites(workdir: Workdir, ray_address: str | None = None, seed: int = 0) -> SitesSummary:
    started = monotonic()
    connect(ray_address)
    dataset = (ray.data.read_lance(workdir.table_uri(SCANS),
                                   columns=["image_id", "image", "width", "height", "site"])
               .map_batches(style_columns, batch_size=256, batch_format="pyarrow"))
    parts = []
    total = workdir.table(SCANS).count_rows()
    with progress_bar("style statistics", total=total, unit="scans") as advance:
        for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            parts.append(batch)
            advance(batch.num_rows)
    table = pa.concat_tables(parts).sort_by("image_id")
    features = np.asarray(table.column("style").combine_chunks().flatten()).reshape(
        table.num_rows, -1)
    sites, inferred, model = resolve_sites(table.column("site").to_pylist(), features, seed=seed)
    workdir.overwrite(SITES, pa.table({"image_id": table.column("image_id"),
                                       "site": pa.array(sites, pa.string()),
                                       "inferred": pa.array(inferred)}))
    workdir.write_json(model.to_dict() if model else {}, *SITE_MODEL)
    names, counts = np.unique(sites, return_counts=True)
    return SitesSummary(scans=len(sites), given=int((~inferred).sum()),
                        inferred_groups=model.n_sites if model else 0,
                        sizes=dict(zip(names.tolist(), counts.tolist())),
                        seconds=monotonic() - started)

