"""`fusc sites`: the site of every scan (the site and machine named, or an inferred style
group) into the `sites` table.

The style statistics of each scan (`fusc_lib.sites.style_features`) are stored in `scans` by
ingest; only rows without them (a workdir ingested before the column existed) are computed here,
by Ray Data from the stored image. The driver groups the scans without a named site and
rewrites `sites` whole. The style-group model is saved to `models/sites/site_model.json` so a
scan served online is put in a group the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from time import monotonic

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from fusc_lib.layout import SITE_MODEL
from fusc_lib.preprocess import decode_png
from fusc_lib.progress import progress_bar
from fusc_lib.sites import named_style_group, resolve_sites
from fusc_lib.store import Workdir
from fusc_lib.style import NEEDS_STYLE, STYLE_WIDTH, style_features
from jobs.ray_runtime import IMAGE_READ_ROWS, ray_for_job
from schemas.tables import SCANS, SITES


@dataclass
class SitesSummary:
    scans: int
    given: int
    inferred_groups: int  # 0 when every scan had a named site
    sizes: dict[str, int]
    seconds: float
    styles_computed: int = 0  # scans whose style statistics ingest had not stored


def style_columns(batch: pa.Table) -> pa.Table:
    """Ray Data batch function: `scans` rows -> image_id + (STYLE_WIDTH,) style vectors."""
    features = [style_features(decode_png(image), width, height) for image, width, height in
                zip(*(batch.column(c).to_pylist() for c in ("image", "width", "height")))]
    flat = np.stack(features) if features else np.zeros((0, STYLE_WIDTH), np.float32)
    return pa.table({"image_id": batch.column("image_id"),
                     "style": pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()),
                                                                 STYLE_WIDTH)})


def computed_styles(workdir: Workdir, count: int) -> dict[str, np.ndarray]:
    """Style vectors of the `count` scans whose stored `style` is missing or stale
    (`NEEDS_STYLE`), computed from their images by Ray Data: image_id -> (STYLE_WIDTH,)."""
    dataset = (ray.data.read_lance(workdir.table_uri(SCANS), filter=NEEDS_STYLE,
                                   columns=["image_id", "image", "width", "height"],
                                   scanner_options={"batch_size": IMAGE_READ_ROWS})
               .map_batches(style_columns, batch_size=256, batch_format="pyarrow"))
    styles: dict[str, np.ndarray] = {}
    with progress_bar("style statistics", total=count, unit="scans") as advance:
        for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            vectors = np.asarray(batch.column("style").combine_chunks().flatten())
            styles.update(zip(batch.column("image_id").to_pylist(),
                              vectors.reshape(batch.num_rows, STYLE_WIDTH)))
            advance(batch.num_rows)
    return styles


def style_matrix(workdir: Workdir, table: pa.Table, ray_address: str | None) -> tuple[
        np.ndarray, int]:
    """(N, STYLE_WIDTH) float32 style statistics of `table`'s rows (image_id, style) in order:
    the stored ones, the rest computed from the images; and how many were computed."""
    stale = np.asarray(pc.fill_null(pc.not_equal(pc.list_value_length(table.column("style")),
                                                 STYLE_WIDTH), True))
    features = np.zeros((table.num_rows, STYLE_WIDTH), np.float32)
    current = table.column("style").filter(pa.array(~stale)).combine_chunks()
    features[~stale] = np.asarray(current.flatten()).reshape(-1, STYLE_WIDTH)
    if stale.any():
        with ray_for_job(ray_address):
            styles = computed_styles(workdir, int(stale.sum()))
        ids = table.column("image_id").to_pylist()
        features[stale] = np.stack([styles[ids[row]] for row in np.flatnonzero(stale)])
    return features, int(stale.sum())


def run_sites(workdir: Workdir, ray_address: str | None = None, seed: int = 0) -> SitesSummary:
    started = monotonic()
    table = workdir.scans(["image_id", "site", "device", "style"]).sort_by("image_id")
    features, computed = style_matrix(workdir, table, ray_address)
    named = [named_style_group(site, device) for site, device in
             zip(table.column("site").to_pylist(), table.column("device").to_pylist())]
    sites, inferred, model = resolve_sites(named, features, seed=seed)
    workdir.overwrite(SITES, pa.table({"image_id": table.column("image_id"),
                                       "site": pa.array(sites, pa.string()),
                                       "inferred": pa.array(inferred)}))
    workdir.write_json(model.to_dict() if model else {}, *SITE_MODEL)
    names, counts = np.unique(sites, return_counts=True)
    return SitesSummary(scans=len(sites), given=int((~inferred).sum()),
                        inferred_groups=model.n_sites if model else 0,
                        sizes=dict(zip(names.tolist(), counts.tolist())),
                        seconds=monotonic() - started, styles_computed=computed)
