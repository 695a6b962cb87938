"""Which hospital or machine a scan came from, and taking that style out of its embedding.

Generic image features group scans by hospital before anatomy (../shared/data/README.md): each
machine renders its own frame size, fan shape, grey map and speckle grain. When the archive
names the site or the machine (manifest columns `site`, `device`; DICOM InstitutionName,
Manufacturer + ManufacturerModelName) the group is the site and machine named: one hospital's
machines look as different as two hospitals' (fetal-planes-db-large with its machines named:
`fusc run` purity at 15 clusters 0.886 -> 0.910, NMI at 6 0.649 -> 0.687; README, "Levers
measured"). Otherwise scans are put in *style groups*: first by the size of the exported frame,
which a machine and its preset fix whatever the probe points at (on the five-hospital
african-planes set it recovers the hospital exactly, where pixel statistics reach NMI 0.3-0.8);
where every frame has the same size, by pixel style instead (fan geometry, grey levels,
speckle). The number of groups is chosen by silhouette, and no split at all is made without
clear structure. The clustering space is then the embedding centred per site: a site's mean
vector is mostly its style, so subtracting it leaves what differs between scans of one machine,
which is mostly the view. That fails for a group that holds one view: frame size also splits a
machine's presets (a cardiac preset exports another frame), and a preset's mean is its view as
much as its style. Such a group is recognised by its narrow spread (`one_view_sites`) and centred
on the mean of the nearest style group that surely holds several views, most often its own
machine's main preset (fetal-planes-db-large: purity at 15 clusters 0.900 -> 0.920, NMI at 6
0.656 -> 0.686).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from scipy import sparse
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

from fusc_lib.layout import SITE_MODEL
from fusc_lib.store import Workdir
from fusc_lib.style import STYLE_WIDTH, stored_style

MAX_SITES = 10
CENTERING_ROWS = 8_192  # rows a centring pass copies at once (84 MB in float64 at D = 1280)
MIN_SCANS_PER_SITE = 5  # a smaller group would centre a handful of scans on themselves
MIN_SILHOUETTE = 0.25  # below this, no split: one group
FRAME_SIZE = [0, 1]  # columns of `style_features`: log width, log height
PIXEL_STYLE = list(range(2, STYLE_WIDTH))  # fan geometry, grey, texture, histogram
# A site whose embeddings spread less than this share of the median site's holds one view
# (`one_view_sites`). Measured on seven workdirs (README, "Levers measured"): presets holding
# one view 0.58-0.73 of the median, hospitals and machines with several views 0.85-1.15.
ONE_VIEW_SPREAD = 0.8


@dataclass
class SiteModel:
    """Style groups of scans without a named site: which feature columns, their
    standardisation, and the group centroids. `predict` puts any scan, including one served
    online, in the group of the nearest centroid."""

    columns: list[int]
    mean: np.ndarray
    scale: np.ndarray
    centroids: np.ndarray

    @property
    def n_sites(self) -> int:
        return len(self.centroids)

    def positions(self) -> dict[str, np.ndarray]:
        """Each group's site name -> its centroid in the standardised columns."""
        return {site_name(group): centroid for group, centroid in enumerate(self.centroids)}

    def predict(self, features: np.ndarray) -> np.ndarray:
        z = (np.atleast_2d(features)[:, self.columns] - self.mean) / self.scale
        distances = ((z[:, None, :] - self.centroids[None]) ** 2).sum(axis=2)
        return distances.argmin(axis=1)

    def to_dict(self) -> dict:
        return {"columns": self.columns, "mean": self.mean.tolist(),
                "scale": self.scale.tolist(), "centroids": self.centroids.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> SiteModel:
        return cls(list(data["columns"]), *(np.asarray(data[key], dtype=np.float64)
                                            for key in ("mean", "scale", "centroids")))


def load_site_model(workdir: Workdir) -> SiteModel | None:
    """The style-group model `fusc sites` saved; None when every scan had a named site."""
    saved = workdir.read_json(*SITE_MODEL)
    return SiteModel.from_dict(saved) if saved else None


def fit_site_model(features: np.ndarray, *, max_sites: int = MAX_SITES, seed: int = 0
                   ) -> SiteModel:
    """Style groups by frame size; by pixel style where frame size finds no groups."""
    model = _fit_groups(features, FRAME_SIZE, max_sites, seed)
    if model.n_sites == 1:
        model = _fit_groups(features, PIXEL_STYLE, max_sites, seed)
    return model


def _fit_groups(features: np.ndarray, columns: list[int], max_sites: int, seed: int
                ) -> SiteModel:
    """k-means on the standardised columns with the k (2..max_sites) of best silhouette, or
    one group when no k reaches MIN_SILHOUETTE or every k leaves a group too small."""
    x = features[:, columns].astype(np.float64)
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = (x - mean) / scale
    best, best_score = z.mean(axis=0, keepdims=True), MIN_SILHOUETTE
    distinct = len(np.unique(z.round(6), axis=0))
    for k in range(2, min(max_sites, distinct, len(z) // MIN_SCANS_PER_SITE) + 1):
        fitted = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(z)
        if np.bincount(fitted.labels_).min() < MIN_SCANS_PER_SITE:
            continue
        score = silhouette_score(z, fitted.labels_, random_state=seed,
                                 sample_size=min(len(z), 5000))
        if score > best_score:
            best, best_score = fitted.cluster_centers_, score
    return SiteModel(columns, mean, scale, best)


def named_style_group(site: str | None, device: str | None) -> str | None:
    """The style group an archive names for a scan: its site and machine, each where known
    ("st-marys / GE Voluson E8", "st-marys", "GE Voluson E8"); None where neither is."""
    named = [part.strip() for part in (site, device) if part and part.strip()]
    return " / ".join(named) or None


def resolve_sites(given: Sequence[str | None], features: np.ndarray, *, seed: int = 0
                  ) -> tuple[list[str], np.ndarray, SiteModel | None]:
    """Site of every scan: the given one (`named_style_group`) where named, else an inferred
    style group `style-N`.

    Returns (sites, inferred mask, the model of the style groups or None if all were given).
    """
    inferred = np.array([not site for site in given])
    if not inferred.any():
        return list(given), inferred, None
    model = fit_site_model(features[inferred], seed=seed)
    groups = iter(model.predict(features[inferred]))
    sites = [site_name(next(groups)) if missing else site
             for site, missing in zip(given, inferred)]
    return sites, inferred, model


def site_name(group: int) -> str:
    """The site name of an inferred style group (as stored in the `sites` table)."""
    return f"style-{group}"


def site_of_new_scan(given: str | None, style: np.ndarray, site_model: SiteModel | None
                     ) -> str | None:
    """The site of a scan the style groups were not fitted on (served, or ingested since
    `fusc sites`): the given one (`named_style_group`), else the group the saved model puts its
    (STYLE_WIDTH,) `style` statistics in, else None (the centering then uses its overall
    mean)."""
    if given:
        return given
    if site_model is None:
        return None
    return site_name(int(site_model.predict(style)[0]))


SCAN_SITE_COLUMNS = ["site", "device", "style", "image", "width", "height"]  # what a site needs


def sites_of_scan_rows(rows: pa.Table, site_model: SiteModel | None) -> list[str | None]:
    """`site_of_new_scan` of each `scans` row of `rows` (SCAN_SITE_COLUMNS), the style read
    from the row (`stored_style`)."""
    columns = (rows.column(name).to_pylist() for name in SCAN_SITE_COLUMNS)
    return [site_of_new_scan(named_style_group(site, device),
                             stored_style(style, image, width, height), site_model)
            for site, device, style, image, width, height in zip(*columns)]


@dataclass
class SiteCentering:
    """The mean embedding of each site, subtracted before clustering (then re-normalised).

    Both passes work through the rows `CENTERING_ROWS` at a time, so centring an archive's
    N × D space needs no second N × D array (1M × 1280 float32 is 5 GB)."""

    means: dict[str, np.ndarray]
    overall: np.ndarray  # used for a site never seen when the centering was fitted
    folded: dict[str, str] = field(default_factory=dict)  # one-view site -> whose mean

    @classmethod
    def fit(cls, vectors: np.ndarray, sites: Sequence[str],
            positions: Mapping[str, np.ndarray] | None = None) -> SiteCentering:
        """Per-site means of (N, D) `vectors`, summed in float64 a block of rows at a time.

        A site in `positions` (an inferred style group's place in style space, `SiteModel.
        positions`) that looks like one view (`one_view_sites`) takes the mean of the nearest
        such site that surely holds several: its scans keep their anatomy and lose their
        machine's style.
        """
        names, codes = np.unique(np.asarray(sites, dtype=str), return_inverse=True)
        sums, squares = np.zeros((len(names), vectors.shape[1])), np.zeros(len(names))
        for start in range(0, len(vectors), CENTERING_ROWS):
            block = np.asarray(vectors[start:start + CENTERING_ROWS], dtype=np.float64)
            block_codes = codes[start:start + len(block)]
            sums += sparse.csr_matrix((np.ones(len(block)), (block_codes, np.arange(len(block)))),
                                      shape=(len(names), len(block))) @ block
            squares += np.bincount(block_codes, (block ** 2).sum(axis=1), len(names))
        counts = np.bincount(codes, minlength=len(names))
        means = sums / counts.clip(1)[:, None]
        spreads = (squares / counts.clip(1) - (means ** 2).sum(axis=1)) * counts / (counts - 1
                                                                                  ).clip(1)
        folded = _fold_one_view_sites(dict(zip(names.tolist(), spreads)), positions or {})
        overall = (sums.sum(axis=0) / max(1, len(vectors))).astype(np.float32)
        by_name = dict(zip(names.tolist(), means.astype(np.float32)))
        return cls({site: by_name[folded.get(site, site)] for site in by_name}, overall, folded)

    def apply(self, vectors: np.ndarray, sites: Sequence[str]) -> np.ndarray:
        """(N, D) float32 unit rows: `vectors` less their site's mean; `vectors` is untouched."""
        return self.centre_in_place(np.array(vectors, dtype=np.float32), sites)

    def centre_in_place(self, vectors: np.ndarray, sites: Sequence[str]) -> np.ndarray:
        """`apply` written into `vectors` itself ((N, D) float32, C-contiguous), returned."""
        if vectors.dtype != np.float32 or not vectors.flags.c_contiguous:
            raise ValueError("centre_in_place needs a C-contiguous float32 array")
        row_of = {site: row for row, site in enumerate(self.means)}
        offsets = np.stack([*self.means.values(), self.overall]).astype(np.float32)
        codes = np.fromiter((row_of.get(site, len(row_of)) for site in sites), np.int64,
                            len(sites))
        for start in range(0, len(vectors), CENTERING_ROWS):
            block = vectors[start:start + CENTERING_ROWS]
            block -= offsets[codes[start:start + len(block)]]
            block /= np.linalg.norm(block, axis=1, keepdims=True).clip(1e-12)
        return vectors

    def to_dict(self) -> dict:
        return {"means": {site: mean.tolist() for site, mean in self.means.items()},
                "overall": self.overall.tolist(), "folded": self.folded}

    @classmethod
    def from_dict(cls, data: dict) -> SiteCentering:
        return cls({site: np.asarray(mean, np.float32) for site, mean in data["means"].items()},
                   np.asarray(data["overall"], np.float32), dict(data.get("folded", {})))


def one_view_sites(spreads: Mapping[str, float]) -> list[str]:
    """Sites whose within-site spread (mean squared distance of a scan's embedding to its
    site's mean, unbiased) is below ONE_VIEW_SPREAD × the median site's: a group that holds
    one view, such as a machine's cardiac preset that frame-size grouping split from its
    machine's other scans. Centring such a group on its own mean would remove the view."""
    median = _median_spread(spreads)
    return [site for site, spread in spreads.items() if spread < ONE_VIEW_SPREAD * median]


def _median_spread(spreads: Mapping[str, float]) -> float:
    return float(np.median(list(spreads.values()))) if spreads else 0.0


def _fold_one_view_sites(spreads: Mapping[str, float], positions: Mapping[str, np.ndarray]
                         ) -> dict[str, str]:
    """one-view site -> the nearest site (Euclidean, in `positions`) that surely holds several
    views (a spread at least the median's); only sites with a position take part."""
    one_view = set(one_view_sites(spreads))
    median = _median_spread(spreads)
    targets = [site for site in spreads if site in positions and spreads[site] >= median]
    return {site: min(targets, key=lambda t: float(np.linalg.norm(positions[site] -
                                                                  positions[t])))
            for site in sorted(one_view) if site in positions and targets}
