"""Evaluate-and-report benchmark: seconds and peak memory of `fusc evaluate` and `fusc report`
on a synthetic archive, and the size of the page.

Builds a workdir of `--scans` synthetic scans through the project's own tables and code (not
counted in the figures; its time is printed): `scans` rows with small grey PNG images (a fan,
a few structures per view, noise), `--sites` named sites, `pseudo_view` a real view name of
the vocabulary for 30% of the scans and `unknown` for the rest; `--dim`-wide embeddings in
well-separated Gaussian clusters of unit vectors, one view per cluster, each site adding its
own offset (its machine style); the `sites` table; 20 neighbours per scan (drawn from the scan's
own cluster, best first by cosine in the site-centred space, or mined by `fusc neighbors` with
`--neighbors mined`); the cluster heads trained by `fusc cluster` (jobs/cluster.py) for
`--epochs` epochs; and an `assignments` row for every scan (jobs/assign.py's rows).

Then runs `run_evaluate` and `report_flow` (what `fusc report` runs; it reads the
metrics.json of the first step, so its time holds no evaluation), each in a fresh Python
process, so each peak RSS (VmHWM, the high-water mark of that process) is the step's own: it
includes the interpreter and imports (torch, timm, lance, sklearn, ...), printed apart as
"after imports". CPU seconds are printed beside the wall-clock ones: on a shared host they
move less. The page is then opened in headless Chromium (where /usr/bin/chromium and
chromedriver exist) to time its loading. `--seeds` and `--sweep` retrain the heads with the
model's own settings, whose epochs are `--epochs` here (`fusc cluster` defaults to 100: scale
their time by that). `--profile` prints each step's costliest calls (cProfile).

Embeddings are 128 wide by default to keep it fast; production embeddings are wider
(efficientnet_lite0, the default backbone, gives 1280), which scales the matrices every
evaluate step holds (N × D float32, raw and site-centred) and the k-means baselines.

    .venv/bin/python -m bench.report [--scans 100000] [--dim 128] [--clusters 10] \
        [--sweep 4,10,20] [--seeds 0] [--workdir W] [--epochs 5] [--image-side 64] \
        [--neighbors cluster|mined] [--montage 8] [--map-points 2000] [--steps evaluate,report] \
        [--reuse] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import json
import os
import pstats
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

BUILD_RECORD = "bench-report.json"  # in the workdir: how it was built, for --reuse
EMBEDDING = "bench-synthetic"  # the embedding key of the synthetic vectors
LABELLED_SHARE = 0.3  # scans whose burnt-in text named a view
PATTERNS, VARIANTS = 4, 8  # distinct structures per view, noisy copies of each
K_NEIGHBORS = 20
CHUNK = 20_000  # rows appended per commit


def max_rss_bytes() -> int:
    """The high-water mark of this process's resident memory: VmHWM of its address space.
    Not `ru_maxrss`: Linux keeps that across fork and execve, so a child started by a large
    parent would report the parent's peak."""
    try:
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M).group(1)) * 1024
    except (OSError, AttributeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


# ------------------------------------------------------------------ the synthetic workdir

def view_image(view: int, pattern: int, variant: int, side: int) -> np.ndarray:
    """A grey `side`² scan: black outside a fan, grey speckle inside, and structures that
    depend on the view (which shapes, where) and the pattern (their size and place)."""
    import cv2

    rng = np.random.default_rng([view, pattern, variant])
    image = np.zeros((side, side), np.uint8)
    cv2.ellipse(image, (side // 2, 0), (side - 2, side - 2), 90, -35, 35, 60, -1)
    shape_rng = np.random.default_rng([view, pattern])
    for _ in range(1 + view % 3):
        x, y = shape_rng.integers(side // 4, 3 * side // 4, 2)
        size = int(shape_rng.integers(side // 12, side // 5))
        if view % 2:
            cv2.circle(image, (int(x), int(y)), size, 200, 2)
        else:
            cv2.ellipse(image, (int(x), int(y)), (size, size // 2 + 1),
                        float(shape_rng.uniform(0, 180)), 0, 360, 180, -1)
    fan = image > 0
    noisy = image + rng.normal(0, 18, image.shape) * fan
    return np.clip(noisy, 0, 255).astype(np.uint8)


def image_pool(clusters: int, side: int) -> list[list[bytes]]:
    """PNG bytes (as ingest stores them) of PATTERNS × VARIANTS images per cluster."""
    from fusc_lib.preprocess import encode_png

    return [[encode_png(view_image(c, p, v, side)) for p in range(PATTERNS)
             for v in range(VARIANTS)] for c in range(clusters)]


def clustered_embeddings(cluster: np.ndarray, site: np.ndarray, dim: int, n_sites: int,
                         rng: np.random.Generator) -> np.ndarray:
    """Unit rows: the cluster's centre, the site's style offset and isotropic noise."""
    centres = rng.standard_normal((cluster.max() + 1, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    style = 0.5 * rng.standard_normal((n_sites, dim)).astype(np.float32) / np.sqrt(dim)
    out = np.empty((len(cluster), dim), np.float32)
    for start in range(0, len(cluster), CHUNK):
        rows = slice(start, start + CHUNK)
        x = centres[cluster[rows]] + style[site[rows]]
        x += 0.4 / np.sqrt(dim) * rng.standard_normal(x.shape).astype(np.float32)
        out[rows] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def neighbours_from_clusters(vectors: np.ndarray, cluster: np.ndarray, k: int,
                             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(N, k) rows of `k` other scans of each scan's cluster, best first by cosine in
    `vectors`, and those cosines: the neighbours an exact search finds on clusters this
    well separated, without its N² cost."""
    n = len(cluster)
    members = [np.flatnonzero(cluster == c) for c in range(cluster.max() + 1)]
    indices = np.empty((n, k), np.int64)
    for rows in members:
        drawn = rows[rng.integers(0, len(rows), (len(rows), k))]
        clash = drawn == rows[:, None]  # a scan is not its own neighbour
        drawn[clash] = rows[(np.searchsorted(rows, drawn[clash]) + 1) % len(rows)]
        indices[rows] = drawn
    similarities = np.empty((n, k), np.float32)
    for start in range(0, n, CHUNK):
        rows = slice(start, start + CHUNK)
        similarities[rows] = np.einsum("nd,nkd->nk", vectors[rows], vectors[indices[rows]])
    order = np.argsort(-similarities, axis=1)
    return (np.take_along_axis(indices, order, axis=1),
            np.take_along_axis(similarities, order, axis=1))


def build_workdir(root: str, args: argparse.Namespace) -> dict[str, float]:
    """Fill `root` with the synthetic archive (module doc); returns seconds per part."""
    from fusc_lib.clustering_space import clustering_space
    from fusc_lib.config import ClusterConfig, NeighborsConfig, PreprocessConfig
    from fusc_lib.layout import PREPROCESS
    from fusc_lib.preprocess import PREPROCESS_VERSION
    from fusc_lib.store import Workdir, utc_now
    from fusc_lib.views import UNKNOWN, load_vocabulary
    from jobs.assign import assignment_rows
    from jobs.cluster import run_cluster
    from jobs.neighbors import run_neighbors
    from schemas.tables import ASSIGNMENTS, NEIGHBORS, SCANS, SITES

    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = now - clock
        clock = now
        print(f"  built {name}: {seconds[name]:.1f} s", flush=True)

    import torch

    torch.set_num_threads(1)  # small steps: faster on one thread, and steady on a busy host
    workdir, n, rng = Workdir(root), args.scans, np.random.default_rng(0)
    views = load_vocabulary().views
    view_of_cluster = [views[c % len(views)] for c in range(args.clusters)]
    shares = rng.dirichlet(np.full(args.clusters, 5.0))  # uneven sizes, none tiny
    cluster = rng.choice(args.clusters, n, p=shares)
    site = rng.integers(0, args.sites, n)
    site_names = [f"hospital-{chr(ord('a') + s)}" for s in range(args.sites)]
    ids = np.asarray([hashlib.sha256(f"bench-report-{i}".encode()).hexdigest()
                      for i in range(n)], dtype=object)
    typed = rng.random(n) < LABELLED_SHARE
    pool = image_pool(args.clusters, args.image_side)
    picture = rng.integers(0, PATTERNS * VARIANTS, n)
    lap("images")

    workdir.write_json(PreprocessConfig(image_size=args.image_side).model_dump(), PREPROCESS)
    now = utc_now()
    for start in range(0, n, CHUNK):
        rows = np.arange(start, min(start + CHUNK, n))
        m = len(rows)
        workdir.append(SCANS, pa.table({
            "image_id": pa.array(ids[rows].tolist(), pa.string()),
            "source_uri": [f"/archive/{site_names[site[i]]}/study-{i // 20:05d}/"
                           f"scan-{i:06d}.dcm" for i in rows],
            "frame": pa.array(np.zeros(m, np.int32)),
            "width": pa.array(np.full(m, 800 + 64 * site[rows], np.int32)),
            "height": pa.array(np.full(m, 600, np.int32)),
            "site": [site_names[site[i]] for i in rows],
            "device": [f"machine {site[i]}" for i in rows],
            "patient_hash": [f"p{i // 20:06d}" for i in rows],
            "study_hash": [f"s{i // 20:06d}" for i in rows],
            "image": pa.array([pool[cluster[i]][picture[i]] for i in rows], pa.binary()),
            "pseudo_view": [view_of_cluster[cluster[i]] if typed[i] else UNKNOWN
                            for i in rows],
            "ocr_confidence": pa.array(np.where(typed[rows], 0.9, 0.0).astype(np.float32)),
            "ocr_text": pa.nulls(m, pa.string()),
            "preprocess_version": [PREPROCESS_VERSION] * m,
            "ingested_at": pa.array([now] * m, pa.timestamp("ms", tz="UTC")),
            "decode_notes": pa.nulls(m, pa.string()),
        }))
    lap("scans table")

    raw = clustered_embeddings(cluster, site, args.dim, args.sites, rng)
    for start in range(0, n, CHUNK):
        rows = slice(start, start + CHUNK)
        m = len(ids[rows])
        workdir.append_embeddings(EMBEDDING, pa.table({
            "image_id": pa.array(ids[rows].tolist(), pa.string()),
            "embedding_key": [EMBEDDING] * m,
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(raw[rows].ravel()), args.dim),
            "embedded_at": pa.array([now] * m, pa.timestamp("ms", tz="UTC")),
        }))
    workdir.overwrite(SITES, pa.table({
        "image_id": pa.array(ids.tolist(), pa.string()),
        "site": [site_names[s] for s in site], "inferred": pa.array(np.zeros(n, bool))}))
    lap("embeddings and sites")

    if args.neighbors == "mined":
        run_neighbors(workdir, NeighborsConfig(embedding=EMBEDDING, k=K_NEIGHBORS))
    else:
        space = clustering_space(workdir, EMBEDDING)  # the site-centred vectors, id order
        order = np.argsort(ids)
        assert list(ids[order]) == space.image_ids
        indices, similarities = neighbours_from_clusters(space.vectors, cluster[order],
                                                         K_NEIGHBORS, rng)
        sorted_ids = ids[order]
        for start in range(0, n, CHUNK):
            rows = slice(start, start + CHUNK)
            workdir.append(NEIGHBORS, pa.table({
                "image_id": pa.array(sorted_ids[rows].tolist(), pa.string()),
                "embedding_key": [EMBEDDING] * len(sorted_ids[rows]),
                "neighbor_ids": pa.array(sorted_ids[indices[rows]].tolist(),
                                         pa.list_(pa.string())),
                "similarities": pa.array(similarities[rows].tolist(), pa.list_(pa.float32())),
            }))
    lap(f"neighbours ({args.neighbors})")

    summary = run_cluster(workdir, ClusterConfig(embedding=EMBEDDING, clusters=args.clusters,
                                                 epochs=args.epochs))
    lap(f"cluster heads ({args.epochs} epochs)")

    from fusc_lib.cluster_model import ClusterModel

    model = ClusterModel.load(workdir, summary.version)
    for start in range(0, n, CHUNK):
        rows = slice(start, start + CHUNK)
        probabilities = model.probabilities(raw[rows], [site_names[s] for s in site[rows]])
        workdir.append(ASSIGNMENTS, assignment_rows(ids[rows].tolist(), probabilities,
                                                    model.version))
    lap("assignments")
    workdir.write_json({"scans": n, "dim": args.dim, "clusters": args.clusters,
                        "sites": args.sites, "epochs": args.epochs,
                        "image_side": args.image_side, "neighbors": args.neighbors,
                        "version": model.version, "sizes": summary.sizes}, BUILD_RECORD)
    return seconds


# ------------------------------------------------------------------ one step, in a child

def run_step(step: str, root: str, seeds: int, sweep: str | None, profile: bool,
             report: dict | None = None) -> dict:
    """Run `evaluate` or `report` on `root` in this (fresh) process; returns its figures."""
    from fusc_lib.config import EvaluateConfig, ReportConfig
    from fusc_lib.store import Workdir
    from jobs.evaluate import run_evaluate
    from jobs.run import report_flow  # what `fusc report` runs: reads evaluate's metrics.json

    after_imports = max_rss_bytes()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = usage.ru_utime + usage.ru_stime
    marks: list[tuple[float, str]] = []
    started = time.perf_counter()

    def progress(message: str) -> None:  # `fusc`'s progress lines, timed from the step's start
        marks.append((time.perf_counter() - started, message))
        print(f"  {step} {marks[-1][0]:7.1f} s  {message}", file=sys.stderr, flush=True)

    if step == "evaluate":
        call = lambda: run_evaluate(Workdir(root), EvaluateConfig(seeds=seeds, sweep=sweep),  # noqa: E731
                                    progress)
    else:
        call = lambda: report_flow(Workdir(root), ReportConfig(**(report or {})), progress)  # noqa: E731
    profiler = cProfile.Profile() if profile else None
    if profiler:
        profiler.enable()
    result = call()
    if profiler:
        profiler.disable()
    seconds = time.perf_counter() - started
    if profiler:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(35)
        print(text.getvalue(), file=sys.stderr)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    figures = {"seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime - cpu_before,
               "after_imports": after_imports, "peak": max_rss_bytes(), "marks": marks}
    if step == "report":
        figures["path"] = result
    return figures


def in_child(step: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, "-m", "bench.report", "--child", step, "--workdir", args.workdir,
               "--seeds", str(args.seeds)]
    command += ["--sweep", args.sweep] if args.sweep else []
    command += ["--profile"] if args.profile else []
    command += ["--montage", str(args.montage), "--map-points", str(args.map_points)]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[1])
    return json.loads(done.stdout.strip().splitlines()[-1])


def open_in_browser(path: str, chromium: str, chromedriver: str) -> dict[str, float]:
    """Open the page in headless Chromium (as tests/test_report.py does): seconds until its
    load event (the map drawn: its script runs before), by the page's own clock and as waited
    for, and the map's points."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = Options()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1600"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        started = time.perf_counter()
        driver.get(Path(path).resolve().as_uri())
        waited = time.perf_counter() - started
        timing = [0, 0]
        for _ in range(20):  # the entry's load end is filled in just after the load event
            timing = driver.execute_script(
                "const t = performance.getEntriesByType('navigation')[0];"
                "return [t.domContentLoadedEventEnd, t.loadEventEnd];")
            if timing[1] > 0:
                break
            time.sleep(0.1)
        dots = len(driver.find_elements(By.CSS_SELECTOR, "#map circle"))
    finally:
        driver.quit()
    return {"waited": waited, "dom_ready": timing[0] / 1000, "loaded": timing[1] / 1000,
            "dots": dots}


def page_parts(path: str) -> dict[str, float]:
    """MB of the page, of its JPEG data URIs, and of the map's data (script `MAP`)."""
    html = Path(path).read_text()
    uris = re.findall(r"data:image/jpeg;base64,[A-Za-z0-9+/=]+", html)
    map_line = next((line for line in html.splitlines() if "const MAP = " in line), "")
    svgs = re.findall(r"<svg.*?</svg>", html, flags=re.S)
    return {"total": len(html.encode()) / 1e6, "images": len(uris),
            "image_mb": sum(map(len, uris)) / 1e6, "map_mb": len(map_line) / 1e6,
            "svg_mb": sum(map(len, svgs)) / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128,
                        help="embedding width (efficientnet_lite0 gives 1280)")
    parser.add_argument("--clusters", type=int, default=10)
    parser.add_argument("--sweep", help="numbers of clusters for `evaluate --sweep`, e.g. 4,10,20")
    parser.add_argument("--seeds", type=int, default=0, help="`evaluate --seeds`")
    parser.add_argument("--workdir", help="default: a new temporary folder")
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=5,
                        help="epochs of the heads (also of those --seeds / --sweep retrain)")
    parser.add_argument("--image-side", type=int, default=64, help="pixels of a stored scan")
    parser.add_argument("--neighbors", choices=("cluster", "mined"), default="cluster",
                        help="drawn from each scan's cluster, or mined by `fusc neighbors`")
    parser.add_argument("--steps", type=lambda text: text.split(","), default=["evaluate", "report"],
                        help="steps to time (report alone reads the last evaluation; with "
                        "none it evaluates first)")
    parser.add_argument("--reuse", action="store_true",
                        help="use --workdir as an earlier run of this benchmark built it")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile each step; the 35 costliest calls go to stderr")
    parser.add_argument("--montage", type=int, default=8, help="`report --montage`")
    parser.add_argument("--map-points", type=int, default=2000, help="`report --map-points`")
    parser.add_argument("--chromium", default="/usr/bin/chromium",
                        help="headless browser to time opening the page in (skipped if absent)")
    parser.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    parser.add_argument("--child", choices=("evaluate", "report"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if set(args.steps) - {"evaluate", "report"}:
        parser.error("--steps takes evaluate, report or both, comma-separated")

    if args.child:
        print(json.dumps(run_step(args.child, args.workdir, args.seeds, args.sweep,
                                  args.profile, {"montage": args.montage,
                                                 "map_points": args.map_points})))
        return

    args.workdir = args.workdir or tempfile.mkdtemp(prefix="bench-report-")
    record = Path(args.workdir) / BUILD_RECORD
    if args.reuse and record.exists():
        built = json.loads(record.read_text())
        print(f"reusing {args.workdir}: {built}")
    else:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
        if any(Path(args.workdir).iterdir()):
            parser.error(f"{args.workdir} is not empty (give --reuse to use what is there)")
        print(f"building {args.scans:,} scans ({args.dim}-wide embeddings, {args.clusters} "
              f"clusters, {args.sites} sites, {args.image_side}² PNGs) in {args.workdir}")
        started = time.perf_counter()
        build_workdir(args.workdir, args)
        print(f"built in {time.perf_counter() - started:.0f} s with imports (not counted "
              f"below); peak RSS {max_rss_bytes() / 2**30:.2f} GiB")
    print(f"{' then '.join(args.steps)} (seeds {args.seeds}, sweep {args.sweep or 'none'}), "
          "each in a fresh process:")
    steps = {}
    for step in args.steps:
        load = os.getloadavg()[0]
        steps[step] = in_child(step, args)
        figures = steps[step]
        print(f"{step:>9}: {figures['seconds']:7.1f} s ({figures['cpu_seconds']:.0f} CPU s)   "
              f"peak RSS {figures['peak'] / 2**30:.2f} GiB (after imports "
              f"{figures['after_imports'] / 2**30:.2f} GiB)   load average "
              f"{load:.1f} → {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    if "report" not in steps:
        return
    parts = page_parts(steps["report"]["path"])
    print(f"report: {parts['total']:.1f} MB ({parts['images']:,} JPEG thumbnails "
          f"{parts['image_mb']:.1f} MB, map data {parts['map_mb']:.1f} MB, charts "
          f"{parts['svg_mb']:.2f} MB) at {steps['report']['path']}")
    if Path(args.chromium).exists() and Path(args.chromedriver).exists():
        opened = open_in_browser(steps["report"]["path"], args.chromium, args.chromedriver)
        print(f"opened in headless Chromium: DOM ready {opened['dom_ready']:.1f} s, loaded "
              f"{opened['loaded']:.1f} s (page clock), {opened['waited']:.1f} s waited; "
              f"{opened['dots']:,} map points drawn")


if __name__ == "__main__":
    main()
