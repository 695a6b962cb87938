"""A small archive of three hospitals' scans as archives hold them, with a label file, and the
workdir `fusc run` makes of it: shared by the evaluate, report and review tests (conftest's
`labelled_run`, built once per session; tests that change it work on a copy)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

from fusc_lib.config import RunConfig
from fusc_lib.io import content_id
from fusc_lib.preprocess import workdir_preprocess
from fusc_lib.store import Workdir

SETS = {"african-planes": 10, "hc18": 6, "fetal-planes-db": 8}
UID_NAME = "1.2.840.113619.2.55.3.604688119.971.1"  # a PACS export's name: no extension
CLUSTERS = 4


def archive_and_labels(data_dir: Path, root: Path) -> tuple[Path, Path]:
    """Scans of three hospitals as an archive holds them (one renamed to a UID, one in a
    sub-folder), and a label file that names them every way it can: file name, path, image
    id, content (the renamed one), plus one row naming no scan."""
    archive, label_folder = root / "archive", root / "labels"
    (archive / "sub").mkdir(parents=True)
    (label_folder / "images").mkdir(parents=True)
    rows = []
    for name, count in SETS.items():
        labels = {r["file"]: r for r in csv.DictReader(open(data_dir / name / "labels.csv"))}
        for path in sorted((data_dir / name / "images").glob("*.png"))[:count]:
            rows.append({"file": path.name, "path": "", "image_id": "",
                         "view": labels[path.name]["view"], "site": labels[path.name]["site"]})
            shutil.copy(path, archive / path.name)
    renamed, nested, by_id = rows[0], rows[10], rows[20]
    (archive / renamed["file"]).rename(archive / UID_NAME)
    shutil.copy(archive / UID_NAME, label_folder / "images" / renamed["file"])
    renamed["file"] = f"images/{renamed['file']}"  # found by content, beside the label file
    (archive / nested["file"]).rename(archive / "sub" / nested["file"])
    nested.update(file="", path=str(archive / "sub" / nested["file"]))
    by_id.update(file="", image_id=content_id((archive / by_id["file"]).read_bytes()))
    rows.append({"file": "not-in-the-archive.png", "path": "", "image_id": "", "view": "brain",
                 "site": "x"})
    with open(label_folder / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return archive, label_folder / "labels.csv"


def tiny_run_config(archive: Path) -> RunConfig:
    """`fusc run` with ImageNet embeddings and tiny settings: about a minute on 2 cores."""
    return RunConfig(ingest={"paths": [str(archive)]},
                     embed={"embedding": "pretrained:efficientnet_lite0", "views": 1},
                     neighbors={"k": 5},
                     cluster={"clusters": CLUSTERS, "heads": 3, "epochs": 30, "k": 5})


def labelled_run(data_dir: Path, root: Path) -> tuple[Workdir, Path]:
    """The workdir after `fusc run` on the archive, and the label file."""
    from jobs.run import run_all

    archive, labels = archive_and_labels(data_dir, root)
    store = Workdir(str(root / "w"))
    workdir_preprocess(store, {"ocr_engine": "none", "image_size": 64})
    run_all(store, tiny_run_config(archive))
    return store, labels


def copy_of(store: Workdir, folder: Path) -> Workdir:
    """A copy of a workdir, for a test that changes it."""
    shutil.copytree(store.root, folder)
    return Workdir(str(folder))
