"""Which hospital or machine a scan came from, and taking that style out of its embedding.

Generic image features group scans by hospital before anatomy (../shared/data/README.md): each
machine renders its own size, fan shape, grey map and speckle grain. When the archive names the
site (manifest column, DICOM InstitutionName) that is used; otherwise scans are grouped by
*style statistics* that say much about the machine and little about the anatomy (frame size,
fan geometry, grey-level distribution, speckle texture), clustered with the number of groups
chosen by silhouette. The clustering space is then the embedding centred per site: the mean
vector of a site is mostly its style, so subtracting it leaves what differs between scans of
one machine, which is the view.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

from fusc_lib.augment import fan_area

HISTOGRAM_BINS = 16
MAX_SITES = 10
MIN_SCANS_PER_SITE = 5  # smaller style groups are merged into their nearest neighbour


def style_features(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Machine-style statistics of one stored scan (uint8 square, black outside the fan) and
    its original frame size: what a hospital's machine decides, not what the probe points at."""
    fan = fan_area(image).astype(bool)
    inside = image[fan] if fan.any() else image.ravel()
    histogram = np.histogram(inside, bins=HISTOGRAM_BINS, range=(0, 256))[0] / max(inside.size, 1)
    rows, cols = np.nonzero(fan) if fan.any() else (np.array([0]), np.array([0]))
    side = image.shape[0]
    top = fan[rows.min()] if fan.any() else fan[0]
    texture = np.abs(cv2.Laplacian(image.astype(np.float32), cv2.CV_32F))[fan].mean() \
        if fan.any() else 0.0
    geometry = [np.log(width), np.log(height), np.log(width / height), fan.mean(),
                rows.min() / side, rows.max() / side, cols.min() / side, cols.max() / side,
                top.mean()]
    grey = [inside.mean() / 255, inside.std() / 255, texture / 255]
    return np.asarray(geometry + grey + list(np.sqrt(histogram)), dtype=np.float32)


@dataclass
class SiteModel:
    """Style groups learnt from scans without a named site: standardisation and centroids.

    `predict` puts a new scan (served online) in the group of the nearest centroid.
    """

    mean: np.ndarray
    scale: np.ndarray
    centroids: np.ndarray

    @property
    def n_sites(self) -> int:
        return len(self.centroids)

    def predict(self, features: np.ndarray) -> np.ndarray:
        z = (np.atleast_2d(features) - self.mean) / self.scale
        distances = ((z[:, None, :] - self.centroids[None]) ** 2).sum(axis=2)
        return distances.argmin(axis=1)

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "centroids": self.centroids.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> SiteModel:
        return cls(*(np.asarray(data[key], dtype=np.float64)
                     for key in ("mean", "scale", "centroids")))


def fit_site_model(features: np.ndarray, *, max_sites: int = MAX_SITES, seed: int = 0
                   ) -> SiteModel:
    """Cluster standardised style features; the number of groups (1..max_sites) is the one with
    the best silhouette, and one group when no split reaches a clear structure."""
    mean, scale = features.mean(axis=0), features.std(axis=0) + 1e-6
    z = (features - mean) / scale
    best, best_score = z.mean(axis=0, keepdims=True), 0.15  # below this: no clear groups
    for k in range(2, min(max_sites, len(z) // MIN_SCANS_PER_SITE) + 1):
        model = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(z)
        if np.bincount(model.labels_).min() < MIN_SCANS_PER_SITE:
            continue
        score = silhouette_score(z, model.labels_, random_state=seed,
                                 sample_size=min(len(z), 5000))
        if score > best_score:
            best, best_score = model.cluster_centers_, score
    return SiteModel(mean, scale, best)


def resolve_sites(given: Sequence[str | None], features: np.ndarray, *, seed: int = 0
                  ) -> tuple[list[str], np.ndarray, SiteModel | None]:
    """Site of every scan: the given one where named, else an inferred style group `style-N`.

    Returns (sites, inferred mask, the model of the style groups or None if all were given).
    """
    inferred = np.array([not site for site in given])
    if not inferred.any():
        return list(given), inferred, None
    model = fit_site_model(features[inferred], seed=seed)
    groups = iter(model.predict(features[inferred]))
    sites = [f"style-{next(groups)}" if missing else site for site, missing in zip(given, inferred)]
    return sites, inferred, model


@dataclass
class SiteCentering:
    """The mean embedding of each site, subtracted before clustering (then re-normalised)."""

    means: dict[str, np.ndarray]
    overall: np.ndarray  # used for a site never seen when the centering was fitted

    @classmethod
    def fit(cls, vectors: np.ndarray, sites: Sequence[str]) -> SiteCentering:
        sites = np.asarray(sites)
        means = {site: vectors[sites == site].mean(axis=0) for site in np.unique(sites)}
        return cls(means, vectors.mean(axis=0))

    def apply(self, vectors: np.ndarray, sites: Sequence[str]) -> np.ndarray:
        offsets = np.stack([self.means.get(site, self.overall) for site in sites]) \
            if len(sites) else np.zeros_like(vectors)
        centred = vectors - offsets
        return (centred / np.linalg.norm(centred, axis=1, keepdims=True).clip(1e-12)
                ).astype(np.float32)

    def to_dict(self) -> dict:
        return {"means": {site: mean.tolist() for site, mean in self.means.items()},
                "overall": self.overall.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> SiteCentering:
        return cls({site: np.asarray(mean, np.float32) for site, mean in data["means"].items()},
                   np.asarray(data["overall"], np.float32))
