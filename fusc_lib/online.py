"""One new scan through the offline path, in memory: what `fusc serve` runs for each request.

bytes -> `io.decode` (frame 0; a multi-frame file's id is that of its first frame, as in
`scans`) -> `preprocess.Preprocessor` (the workdir's own settings: image size, OCR engine) ->
`Encoder.embed` with the model's number of views, seeded by the image id -> site (the DICOM's or
the caller's, else the style group `fusc sites` would give, else unknown) -> the cluster head.
Each step is the code the offline stages call, so a file already in the archive gets the cluster
`assignments` holds for it.

No Ray and no HTTP here: `services/deployment.py` wraps this class; the benchmark calls it directly.
Nothing from the burnt-in text but the view name leaves this module (never the OCR text).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc

from fusc_lib.cluster_model import ClusterModel, current_version
from fusc_lib.io import BadInput, content_id, decode, frame_id
from fusc_lib.layout import PREPROCESS
from fusc_lib.models.encoder import Encoder, model_encoder, parse_embedding_key
from fusc_lib.models.site_norms import SiteNorms, site_norms_uri
from fusc_lib.preprocess import PreparedFrame, PreprocessConfig, Preprocessor
from fusc_lib.review import review_state
from fusc_lib.sites import named_style_group, site_of_new_scan
from fusc_lib.store import Workdir
from fusc_lib.style import style_features
from schemas.tables import ASSIGNMENTS, SCANS

MAX_SIMILAR = 100
TOP_K = 5  # clusters listed in a response, most probable first


@dataclass(frozen=True)
class ScanRequest:
    """One file to place: its bytes (the format is read from them) and the site and machine it
    comes from if the caller knows them (a DICOM's InstitutionName, Manufacturer and
    ManufacturerModelName otherwise)."""

    data: bytes
    site: str | None = None
    device: str | None = None


@dataclass(frozen=True)
class _Version:
    """A cluster model with the encoder its embedding key names: swapped whole on reload."""

    model: ClusterModel
    encoder: Encoder
    n_views: int


@dataclass
class EmbeddedScan:
    """A scan after the shared preprocessing and the encoder, under one model version."""

    image_id: str
    vector: np.ndarray  # (dim,) unit length, as stored in `embeddings`
    site: str | None  # None: unknown site, the centering's overall mean is used
    pseudo_view: str
    version: _Version


class OnlineClusterer:
    """The workdir's current (or a pinned) cluster model, ready for scans sent one by one.

    `embed_batch` and `cluster_batch` take many requests at once (dynamic batching); a request
    that cannot be used comes back as its `BadInput` in its place, never failing the others.
    """

    def __init__(self, workdir_root: str, version: str | None = None, device: str = "cpu"):
        self.workdir = Workdir(workdir_root)
        self.device = device
        self.pinned = version
        self._reload_lock = threading.Lock()  # the watcher and a reconfigure may both reload
        self._version = self._load(version or current_version(self.workdir))
        stored = self.workdir.read_json(PREPROCESS)
        if stored is None:
            raise ValueError(f"{self.workdir.root} has no {PREPROCESS}: not an ingested workdir")
        self.preprocess = PreprocessConfig(**stored)
        self.preprocessor = Preprocessor(self.preprocess)
        self._lock = threading.Lock()  # OCR engines and the encoder run one batch at a time

    # --- model versions -----------------------------------------------------------------------

    @property
    def model(self) -> ClusterModel:
        return self._version.model

    @property
    def encoder(self) -> Encoder:
        return self._version.encoder

    @property
    def n_views(self) -> int:
        return self._version.n_views

    def _load(self, version: str) -> _Version:
        model = ClusterModel.load(self.workdir, version)
        old = getattr(self, "_version", None)
        if old is not None and old.model.embedding == model.embedding:
            return _Version(model, old.encoder, old.n_views)  # same embedding: keep the encoder
        name, n_views = parse_embedding_key(model.embedding)
        encoder = model_encoder(self.workdir, name, self.device).eval()
        encoder.site_norms = SiteNorms.load(site_norms_uri(self.workdir, model.embedding))
        return _Version(model, encoder, n_views)

    def switch(self, version: str | None) -> bool:
        """Pin `version` (None: follow `current.json`); True if the served model changed."""
        self.pinned = version
        return self.reload_if_changed()

    def reload_if_changed(self) -> bool:
        """Load the pinned version, or the workdir's current one, if it is not the one served;
        else take the review's current cluster names (a name given since the last reload).

        The new version is loaded completely before it replaces the old one, so requests never
        see half a model; a batch already running finishes with the version it started with.
        """
        with self._reload_lock:
            wanted = self.pinned or current_version(self.workdir)
            if wanted == self.model.version:
                self.model.names = review_state(self.workdir, wanted).names  # renamed since
                return False
            self._version = self._load(wanted)
            return True

    def info(self) -> dict:
        model = self.model
        return {"model_version": model.version, "embedding": model.embedding,
                "pinned": self.pinned is not None, "n_clusters": model.n_clusters,
                "clusters": [{"cluster_id": c, "name": model.names.get(c)}
                             for c in range(model.n_clusters)],
                "site_groups": model.site_model.n_sites if model.site_model else 0,
                "image_size": self.preprocess.image_size, "ocr_engine": self.preprocess.ocr_engine}

    # --- the offline path, in memory --------------------------------------------------------

    def embed_batch(self, requests: Sequence[ScanRequest]) -> list[EmbeddedScan | BadInput]:
        """Decode, prepare (one OCR batch) and embed (one forward pass) every usable request."""
        version = self._version
        opened: list[tuple[int, str, np.ndarray, str | None]] = []
        results: list[EmbeddedScan | BadInput] = [BadInput("not processed")] * len(requests)
        for index, request in enumerate(requests):
            try:
                opened.append((index, *self.first_frame(request)))
            except BadInput as error:
                results[index] = error
            except Exception as error:  # a decoder bug must not cost the rest of the batch
                results[index] = BadInput(f"unexpected decode error: {type(error).__name__}")
        if not opened:
            return results
        with self._lock:
            prepared = self._prepare([pixels for _, _, pixels, _ in opened])
            usable = [(item, p) for item, p in zip(opened, prepared)
                      if not isinstance(p, BadInput)]
            sites = [self._site(site, p, pixels, version) for (_, _, pixels, site), p in usable]
            vectors = version.encoder.embed([p.pixels for _, p in usable],
                                            [image_id for (_, image_id, _, _), _ in usable],
                                            version.n_views, self.device, sites) if usable else []
        for (index, _, _, _), p in zip(opened, prepared):
            if isinstance(p, BadInput):
                results[index] = p
        for ((index, image_id, _, _), p), site, vector in zip(usable, sites, vectors):
            results[index] = EmbeddedScan(image_id, vector, site, p.pseudo_view, version)
        return results

    def first_frame(self, request: ScanRequest) -> tuple[str, np.ndarray, str | None]:
        """(image id, frame 0 pixels, named style group) as ingest and `fusc sites` read a
        file."""
        scan = decode(request.data, self.preprocess.max_megapixels, frame_limit=1)
        _, pixels = next(scan.frames)
        image_id = frame_id(content_id(request.data), 0, scan.n_frames)
        return image_id, pixels, named_style_group(request.site or scan.tags.get("site"),
                                                   request.device or scan.tags.get("device"))

    def _prepare(self, frames: list[np.ndarray]) -> list[PreparedFrame | BadInput]:
        """Prepare together; if that fails, one by one to find the culprit (as ingest does)."""
        try:
            return self.preprocessor.prepare(frames)
        except Exception:
            return [self._prepare_alone(frame) for frame in frames]

    def _prepare_alone(self, frame: np.ndarray) -> PreparedFrame | BadInput:
        try:
            return self.preprocessor.prepare([frame])[0]
        except Exception as error:
            return BadInput(f"preprocessing failed: {type(error).__name__}", "preprocess")

    @staticmethod
    def _site(given: str | None, prepared: PreparedFrame, frame: np.ndarray,
              version: _Version) -> str | None:
        """The given site, else the style group `fusc sites` would infer."""
        height, width = frame.shape[:2]
        return site_of_new_scan(given, style_features(prepared.pixels, width, height),
                                version.model.site_model)

    def classify(self, scan: EmbeddedScan) -> dict:
        """The response of /v1/cluster for an embedded scan."""
        model = scan.version.model
        probabilities = model.probabilities(scan.vector[None], [scan.site])[0]
        order = np.argsort(-probabilities, kind="stable")
        best = int(order[0])
        return {"image_id": scan.image_id, "cluster_id": best,
                "cluster_name": model.names.get(best),
                "confidence": float(probabilities[best]),
                "top_k": [{"cluster_id": int(c), "probability": float(probabilities[c])}
                          for c in order[:TOP_K]],
                "model_version": model.version, "pseudo_view": scan.pseudo_view}

    def cluster_batch(self, requests: Sequence[ScanRequest]) -> list[dict | BadInput]:
        return [scan if isinstance(scan, BadInput) else self.classify(scan)
                for scan in self.embed_batch(requests)]

    def cluster(self, request: ScanRequest) -> dict:
        result = self.cluster_batch([request])[0]
        if isinstance(result, BadInput):
            raise result
        return result

    # --- neighbours in the archive -----------------------------------------------------------

    def similar(self, scan: EmbeddedScan, k: int = 10) -> dict:
        """The k archived scans nearest to `scan` (cosine), by LanceDB vector search over the
        table of the model's embedding key (through its IVF index when built)."""
        k = max(1, min(k, MAX_SIMILAR))
        model = scan.version.model
        hits = (self.workdir.embeddings_table(model.embedding)
                .search(scan.vector.astype(np.float32), vector_column_name="vector")
                .distance_type("cosine")
                .select(["image_id", "_distance"]).limit(k).to_arrow())
        ids = hits.column("image_id").to_pylist()
        similarity = 1.0 - np.asarray(hits.column("_distance"), dtype=np.float64)
        sources = self._rows(SCANS, ["image_id", "source_uri", "frame"], ids)
        clusters = self._rows(ASSIGNMENTS, ["image_id", "cluster_id"], ids,
                              pc.field("model_version") == model.version)
        results = []
        for image_id, sim in zip(ids, similarity):
            source = sources.get(image_id, {})
            cluster = clusters.get(image_id, {}).get("cluster_id")
            results.append({"image_id": image_id, "source_uri": source.get("source_uri"),
                            "frame": source.get("frame"), "similarity": round(float(sim), 6),
                            "cluster_id": cluster,
                            "cluster_name": None if cluster is None else model.names.get(cluster)})
        return {"image_id": scan.image_id, "model_version": model.version,
                "embedding": model.embedding, "results": results}

    def _rows(self, table: str, columns: list[str], ids: list[str],
              condition: pc.Expression | None = None) -> dict[str, dict]:
        """Rows of a table for a few image ids (k at most), keyed by image id."""
        if not ids or not self.workdir.has_table(table):
            return {}
        where = pc.field("image_id").isin(ids)
        rows = self.workdir.read(table, columns, where if condition is None else where & condition)
        return {row["image_id"]: row for row in rows.to_pylist()}
