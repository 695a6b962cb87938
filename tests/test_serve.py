"""`fusc serve` for real: Ray Serve on localhost, a real HTTP client, a workdir made by `fusc run`.

The scans sent are files of the workdir's own archive, so the online answer must be the row
`fusc assign` wrote for them. Tiny settings (64 px scans, 2 views) keep the file near two
minutes; most of it is the `fusc run` fixture and Serve's start.
"""

from __future__ import annotations

import shutil
import socket
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests
from PIL import Image
from typer.testing import CliRunner

from fusc_lib.cli import app
from fusc_lib.cluster_model import ClusterModel, current_version
from fusc_lib.config import RunConfig
from fusc_lib.layout import CURRENT_CLUSTER_MODEL
from fusc_lib.models.site_norms import SiteNorms, site_norms_uri
from fusc_lib.preprocess import workdir_preprocess
from fusc_lib.review import Decision, record
from fusc_lib.store import Workdir
from jobs.run import run_all
from schemas.tables import ASSIGNMENTS, SITES
from tests.dicom_files import make_dicom

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_BODY_MB = 1


def _archive(data_dir: Path, folder: Path) -> Path:
    """Scans of two hospitals' machines, a two-frame DICOM naming its institution, and files
    whose names lie: an EXIF-rotated JPEG named `.dcm`, a DICOM still named `.png`."""
    folder.mkdir()
    for name in ("african-planes", "hc18"):
        for path in sorted((data_dir / name / "images").glob("*.png"))[:6]:
            shutil.copy(path, folder / f"{name}__{path.name}")
    frames = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in
              sorted((data_dir / "hc18" / "images").glob("*.png"))[6:9]]
    (folder / "cine.dcm").write_bytes(make_dicom(np.stack(frames[:2])))
    (folder / "still-named.png").write_bytes(make_dicom(frames[2]))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned 90° anticlockwise: viewers turn it back
    rotated = Image.fromarray(np.ascontiguousarray(np.rot90(frames[0][::2, ::2])))
    rotated.save(folder / "jpeg-named.dcm", format="JPEG", exif=exif.tobytes())
    return folder


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, data_dir, ray_session) -> tuple[Workdir, Path]:
    root = tmp_path_factory.mktemp("serve")
    store = Workdir(str(root / "w"))
    workdir_preprocess(store, {"ocr_engine": "none", "image_size": 64})
    archive = _archive(data_dir, root / "in")
    run_all(store, RunConfig(ingest={"paths": [str(archive)]}, neighbors={"k": 5},
                             embed={"embedding": "pretrained:efficientnet_lite0", "views": 2,
                                    "site_norms": True},
                             cluster={"clusters": 3, "heads": 3, "epochs": 20, "k": 5}))
    return store, archive


@pytest.fixture(scope="module")
def url(workdir):
    from services.serve import start, stop

    store, _ = workdir
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    yield start(store.root, port=port, token=TOKEN,
                user_config={"max_body_mb": MAX_BODY_MB, "reload_interval_s": 0.5})
    stop()


def _post(url: str, path: str, body: bytes, content_type: str = "application/octet-stream",
          **kwargs) -> requests.Response:
    return requests.post(url + path, data=body, headers={**AUTH, "Content-Type": content_type},
                         timeout=60, **kwargs)


def test_online_cluster_is_the_offline_assignment(workdir, url):
    store, archive = workdir
    version = current_version(store)
    offline = {row["image_id"]: row for row in store.table(ASSIGNMENTS).to_arrow().to_pylist()
               if row["model_version"] == version}
    files = sorted(archive.iterdir())
    answers = []
    for path in files:
        if path.suffix == ".dcm":
            answers.append(_post(url, "/v1/cluster", path.read_bytes(), "application/dicom"))
        else:  # multipart for one, raw bodies for the rest
            multipart = path == files[0]
            answers.append(requests.post(
                url + "/v1/cluster", headers=AUTH, timeout=60,
                **({"files": {"file": (path.name, path.read_bytes(), "image/png")}} if multipart
                   else {"data": path.read_bytes()})))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    norms = SiteNorms.load(site_norms_uri(store, ClusterModel.load(store, version).embedding))
    assert norms is not None and norms.sites  # offline and served alike: per-site statistics
    # The DICOMs name their hospital and machine: one style group, offline as served.
    assert "St Example Hospital / GE Healthcare Voluson E10" in set(
        store.read(SITES, ["site"]).column("site").to_pylist())
    for answer in map(requests.Response.json, answers):
        row = offline[answer["image_id"]]
        assert answer["cluster_id"] == row["cluster_id"] and answer["model_version"] == version
        assert answer["confidence"] == pytest.approx(row["confidence"], abs=1e-4)
        top = answer["top_k"]
        assert top[0] == {"cluster_id": row["cluster_id"], "probability": answer["confidence"]}
        assert [t["probability"] for t in top] == sorted((t["probability"] for t in top),
                                                         reverse=True)
        assert answer["cluster_name"] is None and answer["pseudo_view"] == "unknown"
    cine = answers[files.index(archive / "cine.dcm")].json()
    assert cine["image_id"].endswith("-f0000")  # a multi-frame file: its first frame
    # The caller naming the same hospital and machine gets the same group; the hospital alone
    # names another (unseen) group, centred on the overall mean: another confidence.
    named = {"site": "St Example Hospital", "device": "GE Healthcare Voluson E10"}
    same = _post(url, "/v1/cluster", (archive / "cine.dcm").read_bytes(), "application/dicom",
                 params=named).json()
    assert same["confidence"] == pytest.approx(cine["confidence"], abs=1e-6)
    hospital_only = _post(url, "/v1/cluster", (archive / "cine.dcm").read_bytes(),
                          "application/dicom", params={"site": "St Example Hospital",
                                                       "device": " "}).json()
    assert hospital_only["confidence"] != pytest.approx(cine["confidence"], abs=1e-6)


def test_concurrent_requests_get_their_own_answers(workdir, url):
    _, archive = workdir
    files = sorted(archive.glob("*.png"))[:6] * 2
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda p: _post(url, "/v1/cluster", p.read_bytes()), files))
    ids = [a.json()["image_id"] for a in answers]
    assert ids[:6] == ids[6:] and len(set(ids)) == 6


def _bomb_png(data: bytes, side: int = 20_000) -> bytes:
    """A real PNG whose header claims side x side pixels (400 megapixels)."""
    header = b"IHDR" + struct.pack(">II", side, side) + data[24:29]
    return data[:12] + header + struct.pack(">I", zlib.crc32(header)) + data[33:]


def test_every_bad_request_gets_its_4xx_with_the_reason(workdir, url):
    _, archive = workdir
    png = sorted(archive.glob("*.png"))[0].read_bytes()
    grey = cv2.imread(str(sorted(archive.glob("*.png"))[0]), cv2.IMREAD_GRAYSCALE)
    oversized = np.random.default_rng(0).bytes(int(1.5 * MAX_BODY_MB * 2**20))
    cases = {
        "empty body": (_post(url, "/v1/cluster", b""), 400, "empty"),
        "not an image": (_post(url, "/v1/cluster", b"%PDF-1.4 hello"), 422, "not an image"),
        "truncated": (_post(url, "/v1/cluster", png[:len(png) // 3]), 422, "truncated"),
        "DICOM without pixels": (_post(url, "/v1/cluster", make_dicom(grey, with_pixels=False),
                                       "application/dicom"), 422, "without pixel data"),
        "decompression bomb": (_post(url, "/v1/cluster", _bomb_png(png)), 422, "bomb"),
        "too large": (_post(url, "/v1/cluster", oversized), 413, "over the limit"),
        "too large, chunked": (_post(url, "/v1/cluster", iter([oversized[:2**20]] * 2)), 413,
                               "over the limit"),
        "wrong content type": (_post(url, "/v1/cluster", b'{"a": 1}', "application/json"), 415,
                               "content type"),
        "multipart without a file": (requests.post(url + "/v1/cluster", headers=AUTH,
                                                   files={"other": ("x", b"1"), "more": ("y", b"2")},
                                                   timeout=60), 400, "field `file`"),
        "k out of range": (_post(url, "/v1/similar?k=0", png), 422, "greater than or equal"),
        "unknown route": (requests.get(url + "/v1/nothing", headers=AUTH, timeout=60), 404,
                          "Not Found"),
        "wrong method": (requests.get(url + "/v1/cluster", headers=AUTH, timeout=60), 405,
                         "Method Not Allowed"),
    }
    for name, (answer, status, reason) in cases.items():
        assert answer.status_code == status, (name, answer.status_code, answer.text)
        assert answer.headers["content-type"] == "application/json", name
        assert reason in str(answer.json()["detail"]), (name, answer.text)
    assert _post(url, "/v1/cluster", png).status_code == 200  # the replica is still serving


def test_token_is_required_on_every_route_but_healthz(workdir, url):
    _, archive = workdir
    png = sorted(archive.glob("*.png"))[0].read_bytes()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        assert requests.get(url + "/v1/model", headers=headers, timeout=60).status_code == 401
        for route in ("/v1/cluster", "/v1/similar"):
            answer = requests.post(url + route, data=png, headers=headers, timeout=60)
            assert answer.status_code == 401 and "bearer token" in answer.json()["detail"]
    assert requests.get(url + "/healthz", timeout=60).json() == {"status": "ok"}
    probe = requests.head(url + "/healthz", timeout=60)  # load balancers probe with HEAD
    assert probe.status_code == 200 and not probe.content


def test_docs_list_the_routes(url):
    assert requests.get(url + "/openapi.json", timeout=60).status_code == 401
    assert requests.get(url + "/docs", timeout=60).status_code == 401
    spec = requests.get(url + "/openapi.json", headers=AUTH, timeout=60).json()
    assert {"/v1/cluster", "/v1/similar", "/v1/model", "/healthz"} <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/v1/cluster"]["post"]["requestBody"]["content"]
    docs = requests.get(url + "/docs", headers=AUTH, timeout=60)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_similar_returns_k_archived_scans_with_source_and_cluster(workdir, url):
    store, archive = workdir
    path = sorted(archive.glob("*.png"))[0]
    answer = _post(url, "/v1/similar?k=4", path.read_bytes())
    assert answer.status_code == 200, answer.text
    body = answer.json()
    results = body["results"]
    assert len(results) == 4
    assert results[0]["image_id"] == body["image_id"] and results[0]["similarity"] > 0.999
    assert results[0]["source_uri"].endswith(path.name) and results[0]["frame"] == 0
    similarities = [r["similarity"] for r in results]
    assert similarities == sorted(similarities, reverse=True)
    assigned = {row["image_id"]: row["cluster_id"] for row in
                store.table(ASSIGNMENTS).to_arrow().to_pylist()
                if row["model_version"] == body["model_version"]}
    assert all(r["cluster_id"] == assigned[r["image_id"]] for r in results)


def test_a_new_current_model_is_served_without_a_restart(workdir, url):
    store, archive = workdir
    served = current_version(store)
    copy = ClusterModel.load(store, served)
    copy.version = other = f"{served}-copy"
    copy.save(store, make_current=False)

    def wait_for(version: str) -> None:
        deadline = time.monotonic() + 30
        while requests.get(url + "/v1/model", headers=AUTH, timeout=60).json()[
                "model_version"] != version:
            assert time.monotonic() < deadline, f"still not serving {version}"
            time.sleep(0.5)

    store.write_json({"version": other}, *CURRENT_CLUSTER_MODEL)
    try:
        wait_for(other)
        png = sorted(archive.glob("*.png"))[0].read_bytes()
        assert _post(url, "/v1/cluster", png).json()["model_version"] == other
    finally:
        store.write_json({"version": served}, *CURRENT_CLUSTER_MODEL)
    wait_for(served)


def test_a_cluster_named_in_the_review_is_named_in_the_answers(workdir, url):
    store, archive = workdir
    version = current_version(store)
    png = sorted(archive.glob("*.png"))[0].read_bytes()
    cluster = _post(url, "/v1/cluster", png).json()["cluster_id"]
    record(store, [Decision(action="name", model_version=version, cluster_id=cluster,
                            name="<b>4CH</b>")])
    try:
        deadline = time.monotonic() + 30
        while _post(url, "/v1/cluster", png).json()["cluster_name"] != "<b>4CH</b>":
            assert time.monotonic() < deadline, "the name never reached the answers"
            time.sleep(0.5)
        listed = requests.get(url + "/v1/model", headers=AUTH, timeout=60).json()["clusters"]
        assert {"cluster_id": cluster, "name": "<b>4CH</b>"} in listed
    finally:
        record(store, [Decision(action="name", model_version=version, cluster_id=cluster)])


def test_serving_beyond_loopback_without_a_token_is_refused(tmp_path):
    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--workdir", str(tmp_path)],
                                env={"FUSC_API_TOKEN": ""})
    assert result.exit_code == 2 and "FUSC_API_TOKEN" in result.output
