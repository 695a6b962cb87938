"""`fusc embed`: one L2-normalised vector per scan into the LanceDB table of the embedding key.

Ray Data reads `scans` (ids and image bytes only), an actor pool holds the model (loaded once per
actor) and the driver commits vectors every `commit_rows`. Incremental: scans that already have a
vector for this model are skipped, so a rerun adds nothing and a killed run resumes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from time import monotonic

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import torch

from fusc_lib.artifacts import remove
from fusc_lib.config import EmbedConfig
from fusc_lib.id_sets import contains, sorted_ids
from fusc_lib.models.encoder import (
    PRETRAINED_PREFIX,
    Encoder,
    adopt_run,
    embedding_key,
    is_run_folder,
    model_encoder,
    pretrained_model,
)
from fusc_lib.models.site_norms import (
    SITE_NORM_MIN_SCANS,
    SiteNorms,
    fit_site_norms,
    rows_by_site,
    site_norms_uri,
    views_for_statistics,
)
from fusc_lib.preprocess import decode_png
from fusc_lib.progress import progress_bar
from fusc_lib.sites import SCAN_SITE_COLUMNS, load_site_model, sites_of_scan_rows
from fusc_lib.store import Workdir, rows_by_id, utc_now
from fusc_lib.table_appender import TableAppender
from jobs.ray_runtime import IMAGE_READ_ROWS, cluster_cpus, ray_for_job, read_for_actors
from schemas.tables import SCANS, SITES, embeddings_schema


@dataclass
class EmbedSummary:
    embedding_key: str  # model, with ~views<n> when averaged
    embedded: int = 0
    already_done: int = 0
    seconds: float = 0.0
    startup_seconds: float = 0.0  # until the first vectors came back: Ray, model loading
    indexed: bool = False
    site_norms: list[str] = field(default_factory=list)  # sites with BatchNorm statistics
    site_norms_fitted: bool = False  # fitted by this run (else stored, or none)


def resolve_model(workdir: Workdir, model: str | None, input_size: int) -> str:
    """The model to embed with: as given (a pretrained one at `input_size`; the folder of a run
    trained elsewhere is copied into the workdir first), or the newest SSL run in the
    workdir."""
    if model and model.startswith(PRETRAINED_PREFIX) and "@" not in model:
        return pretrained_model(model.removeprefix(PRETRAINED_PREFIX), input_size)
    if model and is_run_folder(model):
        return adopt_run(workdir, model)
    if model:
        return model
    runs = workdir.ssl_runs()
    if not runs:
        raise ValueError("no trained model in this workdir: run `fusc train-ssl` first, or pass "
                         f"--embedding {PRETRAINED_PREFIX}efficientnet_lite0 for ImageNet "
                         "features")
    return runs[-1]


class _EmbedActor:
    """Ray Data actor: the model is loaded once, then each call embeds the pending scans of a
    batch, each with its site's BatchNorm statistics where the embedding has them."""

    def __init__(self, workdir_root: str, model: str, views: int, use_gpu: bool,
                 pending_ref: ray.ObjectRef, sites_ref: ray.ObjectRef):
        workdir = Workdir(workdir_root)
        self.device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.encoder = model_encoder(workdir, model, self.device).eval()
        self.views = views
        self.key = embedding_key(model, views)
        self.encoder.site_norms = SiteNorms.load(site_norms_uri(workdir, self.key))
        self.pending = ray.get(pending_ref)  # zero-copy: one copy per node, in the object store
        self.sites = ray.get(sites_ref)  # image_id -> site of `fusc sites`
        self.site_model = load_site_model(workdir) if self.encoder.site_norms else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        batch = batch.filter(pa.array(contains(self.pending, batch.column("image_id"))))
        if not batch.num_rows:
            return embedding_rows(batch.column("image_id"), self.key,
                                  np.zeros((0, self.encoder.dim), np.float32))
        images = [decode_png(data) for data in batch.column("image").to_pylist()]
        ids = batch.column("image_id").to_pylist()
        vectors = self.encoder.embed(images, ids, self.views, self.device, self._sites(batch))
        return embedding_rows(batch.column("image_id"), self.key, vectors)

    def _sites(self, batch: pa.Table) -> list[str | None] | None:
        """The site of each scan: as `fusc sites` wrote it, else (ingested since) the style
        group its saved model infers; None without site statistics."""
        if self.encoder.site_norms is None:
            return None
        ids = batch.column("image_id").to_pylist()
        unseen = [row for row, image_id in enumerate(ids) if image_id not in self.sites]
        inferred = dict(zip((ids[row] for row in unseen),
                            sites_of_scan_rows(batch.take(pa.array(unseen, pa.int64())),
                                               self.site_model)))
        return [self.sites[i] if i in self.sites else inferred[i] for i in ids]


def embedding_rows(image_ids: pa.ChunkedArray, key: str, vectors: np.ndarray) -> pa.Table:
    """Rows of `key`'s table for (N, dim) `vectors`, one per image id."""
    dim = vectors.shape[1]
    flat = pa.array(vectors.astype(np.float32).ravel(), pa.float32())
    return pa.table({
        "image_id": image_ids,
        "embedding_key": pa.array([key] * len(vectors), pa.string()),
        "vector": pa.FixedSizeListArray.from_arrays(flat, dim),
        "embedded_at": pa.array([utc_now()] * len(vectors), pa.timestamp("ms", tz="UTC")),
    }, schema=embeddings_schema(dim, key))


def embedded_ids(workdir: Workdir, key: str) -> set[str]:
    if not workdir.has_embeddings(key):
        return set()
    return set(workdir.embeddings(key, ["image_id"]).column("image_id").to_pylist())


def run_embed(workdir: Workdir, config: EmbedConfig, ray_address: str | None = None) -> EmbedSummary:
    """Embed every scan that has no vector for the model yet."""
    started = monotonic()
    model = resolve_model(workdir, config.embedding, config.input_size)
    summary = EmbedSummary(embedding_key(model, config.views))
    done = embedded_ids(workdir, summary.embedding_key)
    all_ids = workdir.column(SCANS, "image_id")
    pending = all_ids.filter(pc.invert(pc.is_in(all_ids, value_set=pa.array(list(done), pa.string()))))
    summary.already_done = len(all_ids) - len(pending)
    if len(pending):
        norms = prepared_site_norms(workdir, model, summary, config, fresh=not done)
        summary.site_norms = norms.sites if norms else []
        with ray_for_job(ray_address):
            _stream_vectors(workdir, config, model, pending, summary, started)
        summary.indexed = ensure_vector_index(workdir, summary.embedding_key, config.index_min_rows)
    summary.seconds = monotonic() - started
    return summary


def prepared_site_norms(workdir: Workdir, model: str, summary: EmbedSummary,
                        config: EmbedConfig, fresh: bool) -> SiteNorms | None:
    """The per-site BatchNorm statistics the vectors of `summary.embedding_key` use: fitted and
    stored when the key has no vector yet (`fresh`), `config.site_norms` is on and `fusc sites`
    has run (for each site of at least SITE_NORM_MIN_SCANS scans); else those stored with the
    key, if any (a key is never embedded two ways)."""
    uri = site_norms_uri(workdir, summary.embedding_key)
    if not fresh:
        return SiteNorms.load(uri)
    remove(uri)  # a fresh key's old statistics (its vectors deleted) are not its own any more
    if not (config.site_norms and workdir.has_table(SITES)):
        return None
    sites = workdir.read(SITES, ["image_id", "site"])
    by_site = {site: rows for site, rows in rows_by_site(sites.column("site").to_pylist()).items()
               if len(rows) >= SITE_NORM_MIN_SCANS}
    if not by_site:
        return None
    encoder = model_encoder(workdir, model)
    with progress_bar("site statistics", total=len(by_site), unit="sites") as advance:
        norms = fit_site_norms(encoder.backbone, _site_views(
            workdir, encoder, sites.column("image_id"), by_site, config.views, advance))
    norms.save(uri)
    summary.site_norms_fitted = True
    return norms


def _site_views(workdir: Workdir, encoder: Encoder, image_ids: pa.ChunkedArray,
                by_site: dict[str, np.ndarray], views: int, advance: Callable[[int], None]
                ) -> Iterator[tuple[str, torch.Tensor]]:
    """(site, its views as the encoder embeds them) of a seeded sample of each site's scans,
    one site at a time."""
    rng = np.random.default_rng(0)
    for site, rows in sorted(by_site.items()):
        chosen = rng.choice(rows, min(len(rows), views_for_statistics(views)), replace=False)
        scans = rows_by_id(workdir.table_uri(SCANS), image_ids.take(np.sort(chosen)).to_pylist(),
                           ["image_id", "image"])
        images = [decode_png(data) for data in scans.column("image").to_pylist()]
        yield site, encoder.views_of(images, scans.column("image_id").to_pylist(), views)
        advance(1)


def _stream_vectors(workdir: Workdir, config: EmbedConfig, model: str,
                    pending: pa.ChunkedArray, summary: EmbedSummary, started: float) -> None:
    workers = config.concurrency or (1 if config.use_gpu else cluster_cpus())
    sites = workdir.site_of() if summary.site_norms else {}
    columns = ["image_id", *SCAN_SITE_COLUMNS] if summary.site_norms else ["image_id", "image"]
    dataset = (read_for_actors(workdir.table_uri(SCANS), columns, workers, IMAGE_READ_ROWS)
               .map_batches(_EmbedActor,
                            fn_constructor_kwargs={"workdir_root": workdir.root, "model": model,
                                                   "views": config.views,
                                                   "use_gpu": config.use_gpu,
                                                   "pending_ref": ray.put(sorted_ids(pending)),
                                                   "sites_ref": ray.put(sites)},
                            batch_size=config.batch_size, batch_format="pyarrow",
                            num_gpus=1 if config.use_gpu else 0,
                            num_cpus=0 if config.use_gpu else 1,
                            compute=ray.data.ActorPoolStrategy(size=workers)))
    sink = TableAppender(partial(workdir.append_embeddings, summary.embedding_key), config.commit_rows)
    with progress_bar("embed", total=len(pending), unit="scans") as advance:
        for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            summary.startup_seconds = summary.startup_seconds or monotonic() - started
            sink.add(batch)
            advance(batch.num_rows)
            if sink.full:
                sink.flush()
        sink.flush()
    summary.embedded = sink.committed


def ensure_vector_index(workdir: Workdir, key: str, min_rows: int) -> bool:
    """Build LanceDB's IVF-PQ cosine index of `key`'s vector space once its table is big enough
    for brute force to hurt."""
    table = workdir.embeddings_table(key)
    rows = table.count_rows()
    if rows < min_rows or any(i.columns == ["vector"] for i in table.list_indices()):
        return False
    dim = table.schema.field("vector").type.list_size
    sub_vectors = next(n for n in (dim // 16, dim // 8, dim // 4, 1) if n and dim % n == 0)
    table.create_index(metric="cosine", vector_column_name="vector", index_type="IVF_PQ",
                       num_partitions=max(1, int(math.sqrt(rows))), num_sub_vectors=sub_vectors)
    return True
