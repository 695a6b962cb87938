"""`fusc evaluate` and `fusc report` on a real workdir (real scans, LanceDB, Ray), the page
opened in a real headless browser (Debian's chromium through chromedriver)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from typer.testing import CliRunner

from fusc_lib.cli import app
from fusc_lib.config import EvaluateConfig, ReportConfig
from fusc_lib.labels import load_labels
from fusc_lib.layout import MATCHED_LABELS, METRICS
from fusc_lib.store import Workdir
from jobs.evaluate import run_evaluate
from jobs.run import report_flow
from schemas.metrics import Evaluation
from tests.archive_run import SETS, UID_NAME, copy_of


@pytest.fixture(scope="module")
def evaluated(labelled_run) -> tuple[Workdir, Evaluation]:
    store, labels = labelled_run
    return store, run_evaluate(store, EvaluateConfig(labels=str(labels), seeds=2, sweep=[2, 4]))


def test_labels_match_by_id_path_name_and_content(labelled_run, data_dir):
    store, labels = labelled_run
    matched = load_labels(store, labels)
    scans = store.scans(["image_id", "source_uri"])
    by_name = {Path(u).name: i for i, u in zip(scans.column("image_id").to_pylist(),
                                               scans.column("source_uri").to_pylist())}
    assert matched.unmatched == 1  # the row naming no scan, counted
    assert set(matched.views) == set(by_name.values())  # every scan, each way it was named
    original = {r["file"]: r for r in csv.DictReader(open(data_dir / "african-planes" /
                                                          "labels.csv"))}
    renamed = sorted((data_dir / "african-planes" / "images").glob("*.png"))[0].name
    assert matched.views[by_name[UID_NAME]] == original[renamed]["view"]
    assert matched.sites[by_name[UID_NAME]] == original[renamed]["site"]


def test_evaluate_writes_one_schema_with_scores_baselines_seeds_and_sweep(evaluated):
    store, result = evaluated
    folder = Path(store.report_dir(result.version))
    written = Evaluation.model_validate_json((folder / METRICS).read_text())
    assert written == result
    scans = sum(SETS.values())
    assert result.views.scans == scans and result.label_rows_unmatched == 1
    assert 0 <= result.views.nmi_site <= 1  # against the hospitals the label file names
    assert 0 < result.views.scores.purity <= 1 and len(result.views.per_cluster) == 4
    assert sum(row.size for row in result.views.per_cluster) == scans
    assert result.super_classes.classes <= result.views.classes
    assert [b.name for b in result.baselines] == [
        "k-means, embeddings", "k-means, site-centred", "k-means, raw pixels"]
    assert all(b.scans == scans for b in result.baselines)
    assert [run.seed for run in result.seeds.runs] == [0, 1]
    backbone = {path for path in result.weights if not path.endswith("head.pt")}
    assert backbone and len(result.weights) == 2  # the ImageNet file and the head
    assert all(run.weights.keys() == backbone for run in result.seeds.runs)
    assert set(result.seeds.spread) >= {"view_nmi", "size_entropy", "fusc_loss"}
    assert [p.k for p in result.sweep.points] == [2, 4] and result.sweep.chosen_k in (2, 4)
    assert all(p.seeds == 3 and p.scores is not None for p in result.sweep.points)
    labels = pq.read_table(folder / MATCHED_LABELS)
    assert labels.num_rows == scans and set(labels.column_names) >= {"view", "super_class"}


def test_evaluate_without_labels_gives_the_label_free_figures_and_says_so(labelled_run, tmp_path):
    store, _ = labelled_run
    copy = Path(copy_of(store, tmp_path / "w").root)
    result = CliRunner().invoke(app, ["evaluate", "--workdir", str(copy)])
    assert result.exit_code == 0, result.output
    assert "no labels" in result.output and "metrics:" in result.output
    metrics = json.loads(next(copy.glob(f"reports/*/{METRICS}")).read_text())
    assert metrics["views"] is None and metrics["labels_source"] is None
    assert sum(metrics["label_free"]["sizes"]) == sum(SETS.values())
    bad = CliRunner().invoke(app, ["evaluate", "--workdir", str(copy), "--sweep", "4,x"])
    assert bad.exit_code == 2 and "give numbers of clusters" in bad.output


def test_report_opens_offline_with_montages_and_a_map(evaluated, browser, tmp_path):
    store, result = evaluated
    path = Path(report_flow(store, ReportConfig(montage=4, map_points=20)))
    html = path.read_text()
    assert 'src="http' not in html and 'href="http' not in html  # nothing fetched: offline
    assert "Choosing K" in html and "Confusion matrix" in html  # from evaluate's metrics
    browser.get(path.as_uri())
    severe = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == []
    montage = browser.find_elements(By.CSS_SELECTOR, ".montage img")
    assert len(montage) == 4 * 2 * 4  # 4 clusters × most/least × 4 scans (each has ≥ 4)
    assert all(browser.execute_script("return arguments[0].naturalWidth", image) > 0
               for image in montage)
    dots = browser.find_elements(By.CSS_SELECTOR, "#map circle")
    assert len(dots) == 20 and dots[0].get_attribute("fill").startswith("#")
    browser.execute_script("arguments[0].scrollIntoView()", dots[0])
    ActionChains(browser).move_to_element(dots[0]).perform()
    tip = browser.find_element(By.ID, "tip")
    assert tip.is_displayed()
    assert browser.execute_script("return arguments[0].querySelector('img').naturalWidth",
                                  tip) > 0
    browser.find_element(By.CSS_SELECTOR, "input[value=site]").click()
    sites = browser.execute_script("return MAP.names.site.length")
    assert sites >= 3  # the label file's hospitals
    assert len(browser.find_elements(By.CSS_SELECTOR, "#map-legend .swatch")) == sites
    shot = tmp_path / "report.png"
    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(str(shot))
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.std() > 10  # not a blank page


def test_report_command_prints_the_path_and_evaluates_first_when_needed(labelled_run, tmp_path):
    store, _ = labelled_run
    copy = Path(copy_of(store, tmp_path / "w").root)
    shutil.rmtree(copy / "reports", ignore_errors=True)
    output = tmp_path / "out" / "page.html"
    result = CliRunner().invoke(app, ["report", "--workdir", str(copy), "--map-points", "12",
                                      "--output", str(output)])
    assert result.exit_code == 0, result.output
    assert f"report: {output}" in result.output.replace("\n", "")
    assert output.stat().st_size > 10_000 and next(copy.glob(f"reports/*/{METRICS}"))
