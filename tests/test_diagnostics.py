"""The label-using representation report printed by `fusc train-ssl --labels`."""

from __future__ import annotations

import shutil

import pytest

from fusc_lib.diagnostics import representation_report
from fusc_lib.ingest import IngestConfig
from fusc_lib.models.backbones import create_backbone
from fusc_lib.models.encoder import save_encoder
from fusc_lib.preprocess import workdir_preprocess
from fusc_lib.store import Workdir
from jobs.ingest import run_ingest
from schemas.tables import SCANS


def test_report_covers_random_imagenet_and_trained_weights(ray_session, data_dir, tmp_path):
    labels_csv = data_dir / "african-planes" / "labels.csv"
    folder = tmp_path / "in"
    folder.mkdir()
    for path in sorted((data_dir / "african-planes" / "images").glob("*.png"))[:24]:
        shutil.copy(path, folder / path.name)
    store = Workdir(str(tmp_path / "w"))
    run_ingest(store, IngestConfig(paths=[str(folder)]),
               workdir_preprocess(store, {"ocr_engine": "none", "image_size": 64}))
    run_dir = store.ssl_run_dir("stand-in")  # a "trained" run: ImageNet weights saved as one
    save_encoder(create_backbone("efficientnet_lite0", "imagenet", 64), 64, run_dir)

    report = representation_report(store, [labels_csv], run_dir)
    assert list(report) == ["random init", "ImageNet init", "after SSL"]
    assert {r["scans"] for r in report.values()} == {store.table(SCANS).count_rows()}
    for scores in report.values():
        assert 0.0 <= scores["knn_accuracy_view"] <= 1.0
        assert 0.0 <= scores["kmeans_nmi_site"] <= 1.0
    # The saved run holds exactly the ImageNet weights: both rows must agree.
    assert report["after SSL"] == pytest.approx(report["ImageNet init"])
