"""Clustering quality of `fusc run` against view labels, beside k-means on the same embeddings.

For each seed: a fresh workdir, the whole `fusc run` (ingest → SSL → sites → embed →
neighbors → cluster → self-label → assign) timed end to end with no labels and no site given;
then, with the labels (used only to score): purity, NMI and Hungarian accuracy against `view`,
the smallest cluster's share, and NMI against `site` and `device` where the labels name them
(lower: less hospital or machine in the clusters). Baselines on the run's own embeddings:
k-means on them as stored (the paper's baseline) and on the site-centred space. `--recluster`
also scores the same workdir re-clustered at other numbers of clusters (`fusc run --clusters
K` again: only cluster, self-label and assign rerun). Prints one table, mean [min–max] over
seeds.

    .venv/bin/python -m bench.quality --dataset african-planes --clusters 4 --seeds 0 1 2
    .venv/bin/python -m bench.quality --dataset fetal-planes-db-large --clusters 15 --recluster 6
    .venv/bin/python -m bench.quality --dataset pooled --clusters 4      # both, one archive
    .venv/bin/python -m bench.quality --method barlowtwins --seeds 0     # another SSL objective
    .venv/bin/python -m bench.quality --ssl-archive fetal-planes-db-large hc18   # train once on
                                            # an archive without the target, then cluster it

`--ssl-archive SET...` measures the issue's "train once on an archive, cluster any folder": per
seed, SSL trains in its own workdir on those sets (as `fusc train-ssl SETS`), and the dataset's
`fusc run --ssl-run` clusters with that model, training nothing; its minutes are the run's, the
archive's training is printed apart.

`--name-machines` ingests through a manifest whose `device` column names each file's machine
(from the labels' `device`; the hospital for sets without one), as an archive whose DICOM
headers or manifest name them: `fusc sites` then groups by machine instead of inferring.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from fusc_lib.cluster_model import ClusterModel
from fusc_lib.clustering_space import clustering_space
from fusc_lib.config import EmbedConfig, IngestConfig, RunConfig, SSLConfig, default_of
from fusc_lib.diagnostics import assigned_clusters, clustering_scores
from fusc_lib.labels import labels_of, load_labels
from fusc_lib.metrics import kmeans_clusters
from fusc_lib.preprocess import workdir_preprocess
from fusc_lib.store import Workdir
from jobs.ingest import run_ingest
from jobs.run import run_all
from jobs.train_ssl import run_train_ssl
from schemas.tables import SCANS

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
POOLED = ("african-planes", "fetal-planes-db-large")  # same four views, six hospitals
COLUMNS = ["purity", "nmi", "accuracy", "smallest_cluster_share", "nmi_site", "nmi_device"]


def dataset_folder(name: str, root: Path) -> tuple[Path, Path]:
    """(images folder, label CSV with file, view, site, device) of a `../shared/data` set, or
    of `pooled`: the POOLED sets copied into one folder."""
    sets = POOLED if name == "pooled" else (name,)
    if len(sets) == 1:
        return DATA / name / "images", DATA / name / "labels.csv"
    images, rows = root / "pooled", []
    images.mkdir()
    for part in sets:
        for row in csv.DictReader(open(DATA / part / "labels.csv")):
            rows.append({"file": row["file"], "view": row["view"], "site": row["site"],
                         "device": row.get("device") or row["site"]})
            shutil.copy(DATA / part / "images" / row["file"], images / row["file"])
    return images, write_rows(root / "pooled-labels.csv", rows)


def write_rows(path: Path, rows: list[dict]) -> Path:
    """`rows` (dicts with the same keys) as a CSV at `path`; returns `path`."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def device_labels(labels: Path, root: Path) -> Path | None:
    """The label file with `site` replaced by `device`, for NMI against the machine."""
    rows = list(csv.DictReader(open(labels)))
    if "device" not in rows[0]:
        return None
    return write_rows(root / "device-labels.csv",
                      [{"file": r["file"], "view": r["view"], "site": r["device"]} for r in rows])


def machine_manifest(images: Path, labels: Path, root: Path) -> Path:
    """A manifest (path, device) naming each labelled file's machine: the labels' `device`,
    else its `site`."""
    return write_rows(root / "machines.csv",
                      [{"path": str(images / r["file"]), "device": r.get("device") or r["site"]}
                       for r in csv.DictReader(open(labels))])


def score(store: Workdir, labels: Path, devices: Path | None, clusters: np.ndarray,
          image_ids: list[str]) -> dict[str, float]:
    views, sites = labels_of(load_labels(store, labels), image_ids)
    scores = clustering_scores(views, sites, clusters)
    if devices:
        _, machines = labels_of(load_labels(store, devices), image_ids)
        scores["nmi_device"] = clustering_scores(views, machines, clusters)["nmi_site"]
    return scores


def one_seed(args: argparse.Namespace, seed: int) -> dict[str, dict]:
    with workdir_root(args.keep, seed) as root:
        images, labels = dataset_folder(args.dataset, Path(root))
        devices = device_labels(labels, Path(root))
        store = Workdir(f"{root}/w")
        ssl = ssl_config(args, seed)
        embed = {"site_norms": args.site_norms}
        if args.ssl_archive:
            embed["embedding"] = archive_model(args.ssl_archive, ssl, Path(root))
        network = {"mode": args.cluster_mode, "workers": ssl.workers, "use_gpu": ssl.use_gpu,
                   "seed": seed}  # as `fusc run --seed S --cluster-mode M` sets them
        ingest = ({"paths": [], "manifest": str(machine_manifest(images, labels, Path(root)))}
                  if args.name_machines else {"paths": [str(images)]})
        results: dict[str, dict] = {}
        for clusters in [args.clusters, *args.recluster]:
            started = time.monotonic()
            config = RunConfig(ingest=ingest, ssl=ssl, sites={"seed": seed},
                               embed=embed,
                               cluster={"clusters": clusters, **network}, self_label=network)
            run_all(store, config, echo=lambda report: print(
                f"seed {seed} {report.stage}: {report.detail} ({report.seconds:.0f} s)",
                flush=True))  # SSL's line says how many images the minutes allowed
            minutes = (time.monotonic() - started) / 60
            model = ClusterModel.load(store)
            ids, assigned = assigned_clusters(store, model.version)
            results[f"K={clusters} fusc run"] = {**score(store, labels, devices, assigned, ids),
                                                 "minutes": minutes}
            space = clustering_space(store, model.embedding)
            for name, vectors in (("k-means, embeddings", space.raw),
                                  ("k-means, site-centred", space.vectors)):
                results[f"K={clusters} {name}"] = score(
                    store, labels, devices, kmeans_clusters(vectors, clusters, seed),
                    space.image_ids)
    return results


def archive_model(sets: list[str], ssl: SSLConfig, root: Path) -> str:
    """Train `ssl` once in the workdir root/archive on the images of `sets` (as `fusc train-ssl
    SETS`); the run folder, for `fusc run --ssl-run`. Prints the archive's size and minutes."""
    started = time.monotonic()
    archive = Workdir(str(root / "archive"))
    images = [str(dataset_folder(name, root)[0]) for name in sets]
    run_ingest(archive, IngestConfig(paths=images), workdir_preprocess(archive))
    scans = archive.table(SCANS).count_rows()
    run_train_ssl(archive, ssl.fitted_to(scans))
    print(f"archive {' + '.join(sets)}: {scans} scans, SSL trained in "
          f"{(time.monotonic() - started) / 60:.1f} minutes (ingest included)", flush=True)
    return archive.ssl_run_dir(ssl.run)


def ssl_config(args: argparse.Namespace, seed: int | None = None) -> SSLConfig:
    """The SSL options of the runs: the profile's, with those the command line gives."""
    return SSLConfig.from_profile(args.profile, seed=seed, method=args.method,
                                  images=args.ssl_images, epochs=args.ssl_epochs,
                                  image_size=args.ssl_image_size, rotation=args.ssl_rotation,
                                  frozen_stages=args.ssl_frozen_stages)


@contextmanager
def workdir_root(keep: Path | None, seed: int) -> Iterator[str]:
    """A temporary folder for one seed's images and workdir, or `keep`/seed-S, kept for later
    probes (`bench.heads --workdir keep/seed-S/w`). Raises FileExistsError when it exists."""
    if keep is None:
        with tempfile.TemporaryDirectory(prefix="fusc-quality-") as root:
            yield root
        return
    root = keep / f"seed-{seed}"
    root.mkdir(parents=True)
    yield str(root)


def summarise(runs: list[dict[str, dict]]) -> None:
    print("| variant | CP | NMI | ACC | smallest cluster | NMI vs site | NMI vs device | minutes |")
    print("|---|---|---|---|---|---|---|---|")
    for variant in runs[0]:
        cells = []
        for column in [*COLUMNS, "minutes"]:
            values = np.asarray([run[variant].get(column, np.nan) for run in runs])
            cells.append("" if np.isnan(values).all() else
                         f"{values.mean():.3f} [{values.min():.3f}–{values.max():.3f}]")
        print(f"| {variant} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="african-planes",
                        help=f"a set under ../shared/data, or pooled ({' + '.join(POOLED)})")
    parser.add_argument("--clusters", type=int, default=4)
    parser.add_argument("--recluster", type=int, nargs="*", default=[],
                        help="also re-cluster the same workdir at these K")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--site-norms", action=argparse.BooleanOptionalAction,
                        default=default_of(EmbedConfig, "site_norms"),
                        help="per-site BatchNorm statistics (AdaBN), as `fusc run --site-norms`")
    parser.add_argument("--method", default=None, help="SSL objective (default: the profile's)")
    parser.add_argument("--ssl-images", type=int, default=None,
                        help="SSL budget in images seen (default: the profile's)")
    parser.add_argument("--ssl-epochs", type=int, default=None,
                        help="SSL passes at most (default: the profile's)")
    parser.add_argument("--ssl-image-size", type=int, default=None,
                        help="side of the SSL training views, and of the embedding's input "
                             "(default: the profile's)")
    parser.add_argument("--ssl-rotation", type=float, default=None,
                        help="most degrees an SSL view turns either way (default: the "
                             "profile's)")
    parser.add_argument("--ssl-frozen-stages", type=int, default=None,
                        help="backbone stages kept at their ImageNet weights (default: the "
                             "profile's)")
    parser.add_argument("--ssl-archive", nargs="+", default=None, metavar="SET",
                        help="train SSL once per seed on these ../shared/data sets, then cluster "
                             "the dataset with that model (`fusc run --ssl-run`)")
    parser.add_argument("--cluster-mode", default="frozen", choices=["frozen", "network"],
                        help="`fusc run --cluster-mode`: network trains the backbone in the "
                             "cluster and self-label stages too (about 8 minutes more on CPU)")
    parser.add_argument("--name-machines", action="store_true",
                        help="name each file's machine in a manifest (`device`), as DICOM "
                             "headers would: style groups by machine, not inferred")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep each seed's images and workdir in KEEP/seed-S (default: "
                             "temporary folders, removed)")
    args = parser.parse_args()
    runs = []
    for seed in args.seeds:
        runs.append(one_seed(args, seed))
        print(f"seed {seed}: " + ", ".join(
            f"{variant} CP {scores['purity']:.3f} NMI {scores['nmi']:.3f}"
            for variant, scores in runs[-1].items()), flush=True)
    ssl = ssl_config(args)
    archive = f", trained on {' + '.join(args.ssl_archive)}" if args.ssl_archive else ""
    print(f"\n{args.dataset}, {args.clusters} clusters (re-clustered at {args.recluster}), seeds "
          f"{args.seeds}, profile {args.profile}, method {ssl.method} ({ssl.images} images or "
          f"{ssl.minutes} minutes, at most {ssl.epochs} epochs, {ssl.image_size} px, views "
          f"turned by up to {ssl.rotation:g}°, {ssl.frozen_stages} stages frozen{archive}), "
          f"site norms {args.site_norms}, machines "
          f"{'named' if args.name_machines else 'inferred'}, "
          f"cluster mode {args.cluster_mode} (labels used only to score)")
    summarise(runs)


if __name__ == "__main__":
    main()
