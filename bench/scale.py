"""Scale benchmark: how each stage's time, memory and disk grow with the archive.

Builds a generated archive of N scans from the real images of ../shared/data (every set), each
file a seeded random crop of one of them with a random gain and Gaussian noise, re-encoded as
PNG or JPEG at a random level/quality, so every file differs in bytes and in content (no scan
is skipped as a duplicate); then runs, in a fresh workdir per N, the stages `fusc run
--embedding pretrained:efficientnet_lite0` runs, called as `jobs/run.py` calls them: ingest →
sites → embed → neighbours → cluster → self-label → assign → export. No SSL training: its cost
is bounded by its image budget, not by N (README, `fusc train-ssl`), so it is left out.

Per stage and N: wall seconds and images/s (N / seconds; for ingest and embed also after their
start-up), peak summed RSS and PSS of the driver plus the local Ray it started (every process
descended from this one: bench/memory.PeakRss; PSS counts the object store's shared pages once,
RSS once per process that touched them), the workdir's `lancedb/` folder in bytes per scan
after the stage, and the load average at its end (the machine may be shared). Each N runs in a
fresh process with its own Ray. Then, per stage, peak(largest N) / peak(next N) in PSS, against
the bar "memory flat in N: 50,000 within 1.5 × 10,000". With `--folder`, archives are kept and reused
and figures accumulate in `<folder>/scale-results.json`, so sizes run one at a time (each
under the time a shared machine allows) print one table.

`--views-sweep`: the cost and the worth of the views averaged per scan. On african-planes (K = 4)
and fetal-planes-db-large (K = 6, 15), embedding with V views (V = 1, 5, 10, 20: V forward
passes per scan), then k-means on the site-centred space (what bench/quality.py and
bench/heads.py report as "k-means, site-centred"), 3 seeds, scored against the view labels.

    .venv/bin/python -m bench.scale --scans 1000 10000 50000 [--views 20] [--folder F --keep]
    .venv/bin/python -m bench.scale --views-sweep [--sweep-views 1 5 10 20] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import date
from multiprocessing import Pool, get_context
from pathlib import Path

import numpy as np
import ray
import torch
from PIL import Image

from bench.ingest import SETS
from bench.memory import PeakRss, own_memory
from bench.quality import DATA, dataset_folder
from fusc_lib.clustering_space import clustering_space
from fusc_lib.config import (
    ClusterConfig,
    EmbedConfig,
    IngestConfig,
    NeighborsConfig,
    PreprocessConfig,
    RunConfig,
    SelfLabelConfig,
    default_of,
)
from fusc_lib.diagnostics import clustering_scores
from fusc_lib.export import export_table, write_export
from fusc_lib.labels import labels_of, load_labels
from fusc_lib.layout import LANCEDB, RUN_EXPORT
from fusc_lib.memory import release_freed_memory
from fusc_lib.metrics import kmeans_clusters
from fusc_lib.models.encoder import PRETRAINED_PREFIX, embedding_key, model_encoder
from fusc_lib.preprocess import decode_png, workdir_preprocess
from fusc_lib.store import Workdir
from jobs.embed import resolve_model, run_embed
from jobs.ingest import run_ingest
from jobs.neighbors import run_neighbors
from jobs.run import assign_flow, cluster_flow, self_label_flow
from jobs.sites import run_sites

SOURCE_SETS = (*SETS, "fetal-planes-db-large")  # every set of ../shared/data
EMBEDDING = PRETRAINED_PREFIX + "efficientnet_lite0"
RUN_VIEWS = default_of(RunConfig, "embed").views  # what `fusc run` embeds with
OCR_ENGINE = default_of(PreprocessConfig, "ocr_engine")
RESULTS = "scale-results.json"
FLAT_BAR = 1.5  # memory flat in N: peak at 50,000 within 1.5 x that at 10,000
SWEEP = {"african-planes": (4,), "fetal-planes-db-large": (6, 15)}  # set -> K


# ------------------------------------------------------------------ the generated archive

@dataclass(frozen=True)
class SourceImage:
    path: Path
    dataset: str
    view: str
    site: str


def source_images() -> list[SourceImage]:
    """Every labelled image of SOURCE_SETS, in a fixed order."""
    images = []
    for name in SOURCE_SETS:
        for row in csv.DictReader(open(DATA / name / "labels.csv")):
            images.append(SourceImage(DATA / name / "images" / row["file"], name, row["view"],
                                      row["site"]))
    return images


def scan_variant(source: Path, rng: np.random.Generator) -> tuple[bytes, str]:
    """(file bytes, extension) of one new scan made from `source`: a crop of 70–100 % of each
    side at a random place, a gain of 0.8–1.2, Gaussian noise of σ 1–4 grey levels, written as
    PNG (compression 1–9) or JPEG (quality 60–95), half each."""
    with Image.open(source) as image:
        mode = "L" if image.mode in ("L", "I;16", "I") else "RGB"
        pixels = np.asarray(image.convert(mode), dtype=np.float32)
    height, width = pixels.shape[:2]
    crop_h, crop_w = (max(32, int(side * rng.uniform(0.7, 1.0))) for side in (height, width))
    top, left = rng.integers(0, height - crop_h + 1), rng.integers(0, width - crop_w + 1)
    crop = pixels[top:top + crop_h, left:left + crop_w] * rng.uniform(0.8, 1.2)
    crop += rng.normal(0.0, rng.uniform(1.0, 4.0), crop.shape)
    out = Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8), mode)
    buffer = io.BytesIO()
    if rng.random() < 0.5:
        out.save(buffer, "PNG", compress_level=int(rng.integers(1, 10)))
        return buffer.getvalue(), "png"
    out.save(buffer, "JPEG", quality=int(rng.integers(60, 96)))
    return buffer.getvalue(), "jpg"


_SOURCES: list[SourceImage] = []  # set in each generating process by _use_sources


def _use_sources(sources: list[SourceImage]) -> None:
    _SOURCES[:] = sources


def _write_scan(job: tuple[int, int, Path]) -> dict:
    index, seed, images = job
    rng = np.random.default_rng([seed, index])
    source = _SOURCES[int(rng.integers(len(_SOURCES)))]
    data, extension = scan_variant(source.path, rng)
    target = images / f"{index // 1000:04d}" / f"{index:07d}.{extension}"
    target.parent.mkdir(exist_ok=True)
    target.write_bytes(data)
    return {"file": target.name, "view": source.view, "site": source.site,
            "source": f"{source.dataset}/{source.path.name}", "bytes": len(data)}


def generated_archive(folder: Path, scans: int, seed: int = 0) -> Path:
    """`folder`/images holding `scans` generated scans (subfolders of 1,000), made once:
    a folder whose archive.json names the same size and seed is reused. Also writes
    `folder`/labels.csv (file, view, site, source) beside, not inside, the images. Scan i is
    the same whatever `scans` is (its generator is seeded by (seed, i))."""
    images, stamp = folder / "images", folder / "archive.json"
    wanted = {"scans": scans, "seed": seed, "sets": list(SOURCE_SETS)}
    if stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return images
    shutil.rmtree(images, ignore_errors=True)
    images.mkdir(parents=True)
    sources = source_images()
    started = time.monotonic()
    with warnings.catch_warnings():  # lance warns at fork; the generating processes never use it
        warnings.filterwarnings("ignore", message=".*fork")
        with Pool(os.cpu_count(), initializer=_use_sources, initargs=(sources,)) as pool:
            rows = pool.map(_write_scan, [(i, seed, images) for i in range(scans)],
                            chunksize=32)
    with open(folder / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "view", "site", "source"])
        writer.writeheader()
        writer.writerows({key: row[key] for key in writer.fieldnames} for row in rows)
    stamp.write_text(json.dumps(wanted))
    megabytes = sum(row["bytes"] for row in rows) / 2**20
    print(f"generated {scans:,} scans from {len(sources)} real images in "
          f"{time.monotonic() - started:.0f} s ({megabytes:,.0f} MiB)", flush=True)
    return images


# ------------------------------------------------------------------ measuring the stages

@dataclass
class StageFigure:
    """One stage's figures on an archive of `scans` scans."""

    stage: str
    scans: int
    views: int
    ocr_engine: str
    seconds: float
    startup_seconds: float | None  # ingest and embed report theirs
    peak_rss_bytes: int
    lancedb_bytes: int
    load: tuple[float, float, float]  # os.getloadavg() at the stage's end
    start_rss_bytes: int = 0  # driver + its Ray as the stage starts (idle workers of earlier
    #                           stages included): the peak's floor
    peak_pss_bytes: int = 0  # the same sums in PSS (bench/memory.own_memory): shared pages,
    start_pss_bytes: int = 0  # the object store's above all, counted once; 0 in older rows
    cpus: int = field(default_factory=os.cpu_count)
    day: str = field(default_factory=lambda: date.today().isoformat())

    @property
    def images_per_s(self) -> float:
        return self.scans / self.seconds

    @property
    def steady_images_per_s(self) -> float | None:
        if self.startup_seconds is None or self.seconds <= self.startup_seconds:
            return None
        return self.scans / (self.seconds - self.startup_seconds)


def folder_bytes(path: str) -> int:
    """Bytes of every file under `path` (0 when it does not exist)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def measure(stage: str, work: Callable[[], object], store: Workdir, scans: int, views: int,
            engine: str) -> StageFigure:
    """Run `work` under a PeakRss of the driver and its Ray, then size the workdir's lancedb
    folder. A result with `startup_seconds` (ingest's, embed's summary) gives its start-up."""
    before = own_memory()
    started = time.monotonic()
    with PeakRss(include_ray=True, own_only=True) as memory:
        result = work()
    release_freed_memory()  # as `fusc run` does after each stage
    figure = StageFigure(stage, scans, views, engine, time.monotonic() - started,
                         getattr(result, "startup_seconds", None), memory.peak_bytes,
                         folder_bytes(store.path(LANCEDB)), os.getloadavg(), before[0],
                         memory.peak_pss_bytes, before[1])
    print(f"  {stage:10} {figure.seconds:8.1f} s  {figure.images_per_s:8.1f} images/s  "
          f"peak RSS {figure.peak_rss_bytes / 2**30:5.2f} GiB  "
          f"PSS {figure.peak_pss_bytes / 2**30:5.2f} GiB  "
          f"lancedb {figure.lancedb_bytes / scans / 1024:7.1f} KiB/scan  "
          f"load {figure.load[0]:.2f}", flush=True)
    return figure


def run_stages(workdir: str, images: Path, scans: int, views: int, engine: str,
               clusters: int) -> list[StageFigure]:
    """The stages of `fusc run --embedding pretrained:efficientnet_lite0` on `images` into a new
    workdir, called as jobs/run.py calls them (same jobs, same configs), each measured; Ray is
    shut down at the end."""
    store = Workdir(workdir)
    preprocess = workdir_preprocess(store, {"ocr_engine": engine})
    embed = RunConfig().embed.model_copy(update={"views": views})
    model = resolve_model(store, EMBEDDING, embed.input_size)
    embed = embed.model_copy(update={"embedding": model})
    key = embedding_key(model, views)
    made: list[str] = []  # the version the cluster stage made, which self-label starts from

    def cluster() -> None:
        made.append(cluster_flow(store, ClusterConfig(clusters=clusters, embedding=key)).version)

    steps: list[tuple[str, Callable[[], object]]] = [
        ("ingest", lambda: run_ingest(store, IngestConfig(paths=[str(images)]), preprocess)),
        ("sites", lambda: run_sites(store)),
        ("embed", lambda: run_embed(store, embed)),
        ("neighbours", lambda: run_neighbors(store, NeighborsConfig(embedding=key))),
        ("cluster", cluster),
        ("self-label", lambda: self_label_flow(store, SelfLabelConfig(cluster_model=made[0]))),
        ("assign", lambda: assign_flow(store)),
        ("export", lambda: write_export(export_table(store), store.path(*RUN_EXPORT))),
    ]
    try:
        return [measure(name, work, store, scans, views, engine) for name, work in steps]
    finally:
        ray.shutdown()


# ------------------------------------------------------------------ the table

def load_results(path: Path | None) -> list[dict]:
    """The rows saved in the results file (StageFigure fields), none without one."""
    return json.loads(path.read_text()) if path and path.exists() else []


def save_results(path: Path, figures: list[StageFigure]) -> list[dict]:
    """Merge `figures` into the results file (a rerun of a size, views and engine replaces its
    rows); returns every row."""
    new = [asdict(f) for f in figures]
    fresh = {(r["scans"], r["views"], r["ocr_engine"]) for r in new}
    rows = [r for r in load_results(path) if (r["scans"], r["views"], r["ocr_engine"]) not in fresh]
    rows += new
    path.write_text(json.dumps(rows, indent=1))
    return rows


def print_table(rows: list[dict], views: int, engine: str) -> None:
    """Stage × N: seconds, images/s (after start-up), peak RSS and PSS, lancedb bytes per scan,
    load; then the memory ratio of the two largest N per stage, in PSS where both rows have it
    (RSS counts the object store's pages once per process that touched them)."""
    figures = [StageFigure(**{**r, "load": tuple(r["load"])}) for r in rows
               if r["views"] == views and r["ocr_engine"] == engine]
    sizes = sorted({f.scans for f in figures})
    print(f"\n{views} views, OCR {engine}, {EMBEDDING}; peak RSS / PSS = summed over the driver "
          "and its Ray processes; disk = <workdir>/lancedb after the stage; load = 1-min load "
          "average at its end")
    print("| stage | N | seconds | images/s | after start-up | peak RSS GiB (at start) "
          "| peak PSS GiB (at start) | disk/scan KiB | load |")
    print("|---|---|---|---|---|---|---|---|---|")
    stages = list(dict.fromkeys(f.stage for f in figures))
    by_key = {(f.stage, f.scans): f for f in figures}
    for stage in stages:
        for scans in sizes:
            f = by_key.get((stage, scans))
            if f is None:
                continue
            steady = f"{f.steady_images_per_s:.1f}" if f.steady_images_per_s else ""
            floor = f" ({f.start_rss_bytes / 2**30:.2f})" if f.start_rss_bytes else ""
            pss = (f"{f.peak_pss_bytes / 2**30:.2f} ({f.start_pss_bytes / 2**30:.2f})"
                   if f.peak_pss_bytes else "")
            print(f"| {stage} | {scans:,} | {f.seconds:.1f} | {f.images_per_s:.1f} | {steady} | "
                  f"{f.peak_rss_bytes / 2**30:.2f}{floor} | {pss} | "
                  f"{f.lancedb_bytes / scans / 1024:.1f} | {f.load[0]:.2f} |")
    if len(sizes) < 2:
        return
    large, next_ = sizes[-1], sizes[-2]
    print(f"\nmemory ratio peak(N = {large:,}) / peak(N = {next_:,}) "
          f"(bar: memory flat in N, 50,000 within {FLAT_BAR} × 10,000):")
    for stage in stages:
        if (stage, large) in by_key and (stage, next_) in by_key:
            a, b = by_key[stage, large], by_key[stage, next_]
            rss = a.peak_rss_bytes / b.peak_rss_bytes
            pss = a.peak_pss_bytes / b.peak_pss_bytes if a.peak_pss_bytes and b.peak_pss_bytes \
                else None
            ratio = pss or rss
            verdict = "flat" if ratio <= FLAT_BAR else "GROWS"
            shown = f"PSS {pss:5.2f} (RSS {rss:5.2f})" if pss else f"RSS {rss:5.2f}"
            print(f"  {stage:10} {shown}  {verdict}")


# ------------------------------------------------------------------ the views sweep

def views_rate(store: Workdir, model: str, views: int, scans: int = 64) -> float:
    """Scans/s of embedding `scans` stored scans over `views` views in this process (making the
    seeded views + forward, every core, after one warm-up batch): a view's cost without Ray's
    start-up, which on a few hundred scans is most of the job."""
    table = store.scans(["image_id", "image"]).slice(0, scans)
    images = [decode_png(data) for data in table.column("image").to_pylist()]
    ids = table.column("image_id").to_pylist()
    torch.set_num_threads(os.cpu_count())
    encoder = model_encoder(store, model, "cpu").eval()
    encoder.embed(images[:8], ids[:8], views, "cpu")
    started = time.monotonic()
    encoder.embed(images, ids, views, "cpu")
    return len(images) / (time.monotonic() - started)


def views_sweep(root: Path, views: list[int], seeds: list[int], engine: str) -> None:
    """Per set of SWEEP and each V: the embed job's seconds, the in-process embedding rate,
    then k-means on the site-centred space at each K over `seeds`, scored against the labels;
    prints one table."""
    print("| set | V | embed job s | scans/s in-process | views/s | K | CP | NMI | ACC | load |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, ks in SWEEP.items():
        images, labels = dataset_folder(name, root)
        workdir = root / f"sweep-{name}"
        shutil.rmtree(workdir, ignore_errors=True)  # fresh: every V embeds every scan
        store = Workdir(str(workdir))
        run_ingest(store, IngestConfig(paths=[str(images)]),
                   workdir_preprocess(store, {"ocr_engine": engine}))
        run_sites(store)
        model = resolve_model(store, EMBEDDING, default_of(EmbedConfig, "input_size"))
        for v in views:
            summary = run_embed(store, EmbedConfig(embedding=model, views=v))
            rate = views_rate(store, model, v)
            load = os.getloadavg()[0]
            space = clustering_space(store, summary.embedding_key)
            truth, sites = labels_of(load_labels(store, labels), space.image_ids)
            for k in ks:
                runs = [clustering_scores(truth, sites, kmeans_clusters(space.vectors, k, seed))
                        for seed in seeds]
                cells = [f"{np.mean([r[c] for r in runs]):.3f} [{min(r[c] for r in runs):.3f}–"
                         f"{max(r[c] for r in runs):.3f}]" for c in ("purity", "nmi", "accuracy")]
                print(f"| {name} ({summary.embedded} scans) | {v} | {summary.seconds:.0f} | "
                      f"{rate:.1f} | {rate * v:.0f} | {k} | " + " | ".join(cells) +
                      f" | {load:.2f} |", flush=True)


# ------------------------------------------------------------------ main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, nargs="+", default=[1000, 10000, 50000],
                        help="archive sizes, one generated archive and workdir each")
    parser.add_argument("--views", type=int, default=RUN_VIEWS,
                        help=f"views averaged per scan (default {RUN_VIEWS}, as `fusc run`)")
    parser.add_argument("--ocr-engine", default=OCR_ENGINE, choices=["easyocr", "tesseract", "none"],
                        help=f"ingest's OCR engine (default {OCR_ENGINE}, as `fusc run`)")
    parser.add_argument("--clusters", type=int, default=default_of(ClusterConfig, "clusters"))
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated archive")
    parser.add_argument("--folder", type=Path, default=None,
                        help="where archives, workdirs and scale-results.json go; archives and "
                             "results are kept there (an archive of the same size and seed is "
                             "reused). Default: a temporary folder")
    parser.add_argument("--keep", action="store_true",
                        help="keep the workdirs (and the temporary folder)")
    parser.add_argument("--views-sweep", action="store_true",
                        help="measure embed time and k-means quality over --sweep-views instead")
    parser.add_argument("--sweep-views", type=int, nargs="+", default=[1, 5, 10, 20])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="k-means seeds of the views sweep")
    args = parser.parse_args()
    if os.environ.get("RAY_ADDRESS"):
        parser.error("this benchmark measures the local Ray it starts itself: unset RAY_ADDRESS")
    root = args.folder or Path(tempfile.mkdtemp(prefix="fusc-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"{os.cpu_count()} CPUs, load {os.getloadavg()}, folder {root}", flush=True)
    try:
        if args.views_sweep:
            views_sweep(root, args.sweep_views, args.seeds, args.ocr_engine)
            return
        figures = []
        for scans in args.scans:
            images = generated_archive(root / f"archive-{scans}-seed{args.seed}", scans,
                                       args.seed)
            workdir = root / f"work-{scans}"
            shutil.rmtree(workdir, ignore_errors=True)  # a fresh workdir: every stage does all
            print(f"N = {scans:,} (load {os.getloadavg()[0]:.2f})", flush=True)
            # A fresh process (and Ray) per N, as one `fusc run` is: memory a process took for
            # one size is never handed back, and would count in the next size's peaks.
            with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as process:
                figures += process.submit(run_stages, str(workdir), images, scans, args.views,
                                          args.ocr_engine, args.clusters).result()
            if not args.keep:
                shutil.rmtree(workdir)
        rows = save_results(root / RESULTS, figures) if args.folder else \
            [asdict(f) for f in figures]
        print_table(rows, args.views, args.ocr_engine)
    finally:
        ray.shutdown()
        if not (args.keep or args.folder):
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
