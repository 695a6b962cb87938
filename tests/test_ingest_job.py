"""`fusc ingest` end to end: real images, a real LanceDB in a temp dir, the suite's real Ray."""

from __future__ import annotations

import io
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
from PIL import Image

from fusc_lib.ingest import IngestConfig
from fusc_lib.io import content_id
from fusc_lib.preprocess import PreprocessConfig, decode_png, workdir_preprocess
from fusc_lib.store import Workdir
from jobs.ingest import run_ingest
from jobs.sites import run_sites
from schemas.tables import DUPLICATES, QUARANTINE, SCANS, SITES
from tests.dicom_files import make_dicom

GOOD_PNGS = 8
EXPECTED_SCAN_ROWS = GOOD_PNGS + 1 + 1 + 3  # PNGs, a JPEG, a DICOM, a 3-frame DICOM
BAD_FILES = {  # name -> the words its quarantine reason must contain
    "zero.png": "empty file",
    "truncated.png": "truncated",
    "truncated.jpg": "truncated",
    "random.png": "not an image",
    "notes.png": "not an image",
    "nopixels.dcm": "without pixel data",
    "bomb.png": "too large",
    "labels.csv": "not an image: text file",  # every file under a folder is read, whatever its name
}


def _real_images(data_dir: Path) -> list[Path]:
    african = sorted((data_dir / "african-planes" / "images").glob("*.png"))[:6]
    captures = sorted((data_dir / "fetal-planes-db" / "images").glob("*.png"))[:2]
    return african + captures


def _encoded(path: Path, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.open(path).convert("L").save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory, data_dir) -> Path:
    """Good scans in every format next to every kind of bad file, in nested folders."""
    root = tmp_path_factory.mktemp("archive")
    good, bad = root / "good" / "nested", root / "bad"
    good.mkdir(parents=True), bad.mkdir()
    images = _real_images(data_dir)
    for path in images:
        shutil.copy(path, good / path.name)
    gray = np.asarray(Image.open(images[0]).convert("L"))
    (good / "scan.jpg").write_bytes(_encoded(images[1], "JPEG"))
    (good / "single.dcm").write_bytes(make_dicom(gray))
    (good / "cine.dcm").write_bytes(make_dicom(np.stack([gray, gray // 2, 255 - gray])))
    png, jpg = _encoded(images[2], "PNG"), _encoded(images[3], "JPEG")
    (bad / "zero.png").write_bytes(b"")
    (bad / "truncated.png").write_bytes(png[: len(png) // 2])
    (bad / "truncated.jpg").write_bytes(jpg[: len(jpg) // 2])
    (bad / "random.png").write_bytes(np.random.default_rng(0).bytes(5000))
    (bad / "notes.png").write_text("Patient notes. Not an image.\n" * 50)
    (bad / "nopixels.dcm").write_bytes(make_dicom(gray, with_pixels=False))
    bomb = io.BytesIO()
    Image.new("L", (11_000, 10_000)).save(bomb, format="PNG")
    (bad / "bomb.png").write_bytes(bomb.getvalue())
    (root / "labels.csv").write_text("image,view\nnot a scan,brain\n")
    return root


def _ingest(workdir: Path, paths: list[str], engine: str = "none", **options):
    store = Workdir(str(workdir))
    preprocess = workdir_preprocess(store, {"ocr_engine": engine, "image_size": 128})
    return store, run_ingest(store, IngestConfig(paths=paths, **options), preprocess)


def test_mixed_folder_exact_counts_then_rerun_adds_nothing(ray_session, mixed_folder, tmp_path):
    store, summary = _ingest(tmp_path / "w", [str(mixed_folder)], engine="easyocr")
    scans = store.table(SCANS).to_arrow()
    quarantine = store.table(QUARANTINE).to_arrow()
    assert scans.num_rows == EXPECTED_SCAN_ROWS == summary.rows_ingested
    assert quarantine.num_rows == len(BAD_FILES) == summary.quarantined
    reasons = {Path(u).name: r for u, r in zip(quarantine.column("source_uri").to_pylist(),
                                                quarantine.column("reason").to_pylist())}
    for name, words in BAD_FILES.items():
        assert words in reasons[name], (name, reasons[name])
    assert len(set(scans.column("image_id").to_pylist())) == EXPECTED_SCAN_ROWS
    cine = scans.filter(pc.match_substring(scans.column("source_uri"), "cine.dcm"))
    assert sorted(cine.column("frame").to_pylist()) == [0, 1, 2]
    assert set(cine.column("device").to_pylist()) == {"GE Healthcare Voluson E10"}
    assert set(cine.column("site").to_pylist()) == {"St Example Hospital"}
    patient = cine.column("patient_hash")[0].as_py()
    assert patient and "PID-12345" not in patient
    image = decode_png(scans.column("image")[0].as_py())
    assert image.shape == (128, 128) and image.dtype == np.uint8
    assert scans.column("ocr_text").null_count == scans.num_rows  # not kept unless asked

    again_store, again = _ingest(tmp_path / "w", [str(mixed_folder)], engine="easyocr")
    assert again.rows_ingested == again.quarantined == 0
    assert again.files_already_done == summary.files_found
    assert again_store.table(SCANS).count_rows() == EXPECTED_SCAN_ROWS


def test_new_files_add_only_themselves_and_duplicates_are_recorded(ray_session, data_dir,
                                                                   tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    first, second, third = sorted((data_dir / "african-planes" / "images").glob("*.png"))[:3]
    shutil.copy(first, folder / "a.png")
    store, _ = _ingest(tmp_path / "w", [str(folder)])
    shutil.copy(second, folder / "b.png")
    shutil.copy(first, folder / "a-copy.png")  # same bytes under another name
    _, summary = _ingest(tmp_path / "w", [str(folder)])
    assert (summary.rows_ingested, summary.duplicates) == (1, 1)
    assert store.table(SCANS).count_rows() == 2
    copies = store.table(DUPLICATES).to_arrow()
    assert copies.column("source_uri").to_pylist() == [str(folder / "a-copy.png")]
    assert copies.column("image_id").to_pylist() == [content_id(first.read_bytes())]
    _, again = _ingest(tmp_path / "w", [str(folder)])
    assert (again.rows_ingested, again.duplicates, again.files_already_done) == (0, 0, 3)


def test_manifest_sites_devices_patients_and_unreadable_paths(ray_session, data_dir, tmp_path):
    images = _real_images(data_dir)[:3]
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,site,device,patient\n"
                        f"{images[0]},hospital-a,Aloka SSD-4000,P-001\n"
                        f"{images[1]},hospital-b,,P-002\n"
                        f"{images[2]},,GE Voluson E6,P-005\n"
                        f"{tmp_path / 'missing.png'},hospital-b,,P-003\n"
                        f"{tmp_path},hospital-b,,P-004\n")  # a folder where a file should be
    store, summary = _ingest(tmp_path / "w", [], manifest=str(manifest))
    assert (summary.rows_ingested, summary.quarantined) == (3, 2)
    scans = store.table(SCANS).to_arrow().sort_by("source_uri")
    assert scans.column("site").to_pylist() == ["hospital-a", "hospital-b", None]
    assert scans.column("device").to_pylist() == ["Aloka SSD-4000", None, "GE Voluson E6"]
    # The style group of each scan is the site and machine named, each where known.
    run_sites(store)
    groups = dict(zip(*store.read(SITES, ["image_id", "site"]).to_pydict().values()))
    assert [groups[i] for i in scans.column("image_id").to_pylist()] == [
        "hospital-a / Aloka SSD-4000", "hospital-b", "GE Voluson E6"]
    hashes = scans.column("patient_hash").to_pylist()
    assert len(set(hashes)) == 3 and not any(h.startswith("P-") for h in hashes)
    stages = set(store.table(QUARANTINE).to_arrow().column("stage").to_pylist())
    assert stages == {"read"}


def test_workdir_refuses_a_different_image_size(tmp_path):
    store = Workdir(str(tmp_path / "w"))
    assert workdir_preprocess(store, {"image_size": 128}).image_size == 128
    assert workdir_preprocess(store, {}).image_size == 128  # later runs inherit it
    with pytest.raises(ValueError, match="image_size"):
        workdir_preprocess(store, {"image_size": 224})
    assert PreprocessConfig().image_size == 256


def test_killed_ingest_resumes_with_every_file_exactly_once(ray_session, data_dir, tmp_path):
    """SIGKILL a real `fusc ingest` after its first commit; the rerun completes the set."""
    folder = tmp_path / "in"
    shutil.copytree(data_dir / "african-planes" / "images", folder)
    # This set holds byte-identical files under different names: one row per content.
    expected = {content_id(p.read_bytes()) for p in folder.glob("*.png")}
    workdir = tmp_path / "w"
    command = [sys.executable, "-m", "fusc_lib", "ingest", str(folder), "--workdir", str(workdir),
               "--ocr-engine", "none", "--commit-rows", "8", "--batch-size", "2",
               "--ray-address", ray_session.get_runtime_context().gcs_address]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = Workdir(str(workdir))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        if (workdir / "lancedb" / "scans.lance").exists() and store.table(SCANS).count_rows():
            break
        time.sleep(0.2)
    assert process.poll() is None, "ingest finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    partial = store.table(SCANS).count_rows()
    assert 0 < partial < len(expected)

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    ids = store.column(SCANS, "image_id").to_pylist()
    assert len(ids) == len(expected) and set(ids) == expected
