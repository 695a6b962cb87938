"""FUSC beyond one machine: a real two-node Ray cluster with token authentication, the archive
and the workdir on a real S3-compatible server (moto in server mode on 127.0.0.1).

The cluster is started the way a team starts one (`ray start --head`, then `ray start --address`
on a second node with its own resources), every node with the cluster's RAY_AUTH_TOKEN and the
standard AWS_* variables; `fusc run` and `fusc serve` join it with `--ray-address`. Nothing on
the driver's disk is used: scans, tables, checkpoints, models and exports live in the bucket.
While the run goes, `tests/ray_chaos.py` SIGKILLs an ingest worker in the middle of its batch
(EasyOCR on: a batch takes seconds) and a Ray Train worker once its first checkpoint is
registered: the run must still end with every scan once, training resumed from that checkpoint.
About five minutes: most of it Ray Train's start and its restart after the kill.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lancedb
import psutil
import pyarrow.fs as pafs
import pytest
import requests

from fusc_lib import artifacts
from schemas.tables import ASSIGNMENTS, SCANS
from tests.ray_chaos import TRAIN_WORKER

pytestmark = pytest.mark.cluster

BIN = Path(sys.executable).parent
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "fusc-test", "AWS_SECRET_ACCESS_KEY": "fusc-test-secret",
                  "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}
ARCHIVE = "s3://archive/scans"
WORKDIR = "s3://work/fusc"
SETS = {"african-planes": 6, "hc18": 5, "fetal-planes-db": 5}
INGEST_WORKER = "MapWorker(MapBatches(_IngestActor))"  # Ray Data's name for the actor pool's class
SSL_RUN = "simclr-efficientnet_lite0"  # `fusc run`'s run name for the default method


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def s3(data_dir):
    """A moto S3 server on 127.0.0.1 with the archive uploaded under folder names as hospital
    archives hold them (brackets, spaces); yields the AWS_* variables that reach it. This
    process's environment holds them too while the module runs (LanceDB and pyarrow read them)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per S3 request
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    variables = {**S3_CREDENTIALS, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in variables.items():
            patch.setenv(name, value)
        import boto3

        client = boto3.client("s3")
        for bucket in ("archive", "work"):
            client.create_bucket(Bucket=bucket)
        for name, count in SETS.items():
            for path in sorted((data_dir / name / "images").glob("*.png"))[:count]:
                client.upload_file(str(path), "archive", f"scans/[{name}] 2024 ward/{path.name}")
        yield variables
    server.stop()


class RayCluster:
    """`ray start` nodes sharing one token, on this machine. Every process they start carries
    the environment marker `MARKER`, by which `stop` finds them all (never `ray stop`: it would
    take down every Ray on the machine, the suite's own included)."""

    MARKER = "FUSC_TEST_RAY_CLUSTER"

    def __init__(self, environment: dict[str, str]):
        self.temp_dir = tempfile.mkdtemp(prefix="fusc-ray-")  # short: Unix socket paths
        self.environment = {**environment, self.MARKER: self.temp_dir}
        self.port, self.dashboard_port, self.client_port = (_free_port() for _ in range(3))
        self.stranger: subprocess.Popen | None = None  # a node started without the token

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start_head(self) -> None:
        subprocess.run(self._ray_start(
            "--head", f"--port={self.port}", f"--temp-dir={self.temp_dir}",
            "--include-dashboard=true", f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={self.client_port}", "--num-cpus=1",
            '--resources={"fusc_head": 1}'), env=self.environment, check=True,
            capture_output=True, timeout=120)

    def add_node(self) -> None:
        subprocess.run(self._node_command(), env=self.environment, check=True,
                       capture_output=True, timeout=120)

    def start_node_without_token(self, home: str) -> subprocess.Popen:
        """`ray start` of a node with no token at all (none in its environment or home)."""
        environment = {k: v for k, v in self.environment.items() if not k.startswith("RAY_AUTH")}
        return subprocess.Popen(self._node_command(), env={**environment, "HOME": home},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def _node_command(self) -> list[str]:
        return self._ray_start(f"--address={self.address}", "--num-cpus=1",
                               '--resources={"fusc_second_node": 1}')

    @staticmethod
    def _ray_start(*arguments: str) -> list[str]:
        return [str(BIN / "ray"), "start", *arguments, "--disable-usage-stats"]

    def stop(self) -> None:
        processes = []
        for process in psutil.process_iter():
            try:
                if process.environ().get(self.MARKER) == self.temp_dir:
                    processes.append(process)
            except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
        for process in processes:
            process.kill()
        psutil.wait_procs(processes, timeout=30)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(s3):
    environment = {**os.environ, **s3, "RAY_AUTH_MODE": "token",
                   "RAY_AUTH_TOKEN": secrets.token_hex(24)}
    environment.pop("RAY_ADDRESS", None)
    cluster = RayCluster(environment)
    try:
        cluster.start_head()
        cluster.add_node()
        # Started now, checked last: it retries for ~20 s before giving up, while the run goes.
        cluster.stranger = cluster.start_node_without_token(tempfile.mkdtemp())
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def cluster_run(cluster, tmp_path_factory):
    """`fusc run` on the cluster, archive and workdir in the bucket, workers killed under it:
    (its completed process, what the chaos watcher killed and saw, the folder it ran in)."""
    folder = tmp_path_factory.mktemp("driver")
    command = [str(BIN / "fusc"), "run", ARCHIVE, "--workdir", WORKDIR,
               "--ray-address", cluster.address, "--workers", "2", "--ssl-epochs", "2",
               "--image-size", "32", "--views", "2", "--clusters", "3", "--cluster-epochs", "20",
               "--k", "5"]
    with open(folder / "run.log", "w") as log:
        job = subprocess.Popen(command, cwd=folder, env=cluster.environment, stdout=log,
                               stderr=subprocess.STDOUT)
        chaos = subprocess.run(
            [sys.executable, "-m", "tests.ray_chaos", "--address", cluster.dashboard,
             "--pid", str(job.pid), "--out", str(folder / "chaos.json"),
             "--kill", INGEST_WORKER, "--kill-training", f"{WORKDIR}/models/ssl/{SSL_RUN}"],
            env=cluster.environment, cwd=Path(__file__).parents[1], capture_output=True,
            text=True, timeout=900)
        job.wait(timeout=900)
    assert chaos.returncode == 0, chaos.stderr
    output = (folder / "run.log").read_text()
    assert job.returncode == 0, output[-3000:]
    return output, json.loads((folder / "chaos.json").read_text()), folder


def _table_ids(name: str) -> list[str]:
    return lancedb.connect(f"{WORKDIR}/lancedb").open_table(name).to_arrow()["image_id"].to_pylist()


def test_run_on_two_nodes_keeps_every_scan_once_through_killed_workers(cluster_run):
    _, chaos, _ = cluster_run
    uploaded = sum(SETS.values())
    scans, assigned = _table_ids(SCANS), _table_ids(ASSIGNMENTS)
    assert len(scans) == len(set(scans)) == uploaded  # bracketed folder names read, none lost
    assert sorted(assigned) == sorted(scans)  # every scan assigned exactly once
    # The kills landed: the ingest pool mid-task, a training worker after its first checkpoint.
    assert set(chaos["killed"]) == {INGEST_WORKER, TRAIN_WORKER}
    # Work ran on both nodes. Not necessarily training on both: each node has 1 CPU, the two
    # training workers 0.5 each, and Ray Data's view tasks need a whole CPU, so Ray Train packs
    # the workers onto one node (where they land before and after the kill is Ray's choice).
    assert len({node for nodes in chaos["nodes"].values() for node in nodes}) == 2


def test_training_resumed_from_its_checkpoint_in_the_bucket(cluster_run):
    _, chaos, _ = cluster_run
    run = f"{WORKDIR}/models/ssl/{SSL_RUN}"
    rows = list(csv.DictReader(io.StringIO(artifacts.read_bytes(f"{run}/loss.csv").decode())))
    assert [row["epoch"] for row in rows] == ["1", "2"]
    # Epoch 1 as it was logged before the kill: restarted from the checkpoint, not from scratch.
    assert rows[0] == chaos["loss_log_at_kill"][0]
    filesystem, path = artifacts.resolve(f"{run}/ray")
    saved = filesystem.get_file_info(pafs.FileSelector(path, recursive=True))
    assert any(info.base_name.startswith("checkpoint_") for info in saved)
    assert artifacts.exists(f"{run}/encoder.json")


def test_exports_go_to_the_bucket_and_nothing_to_the_drivers_disk(cluster_run):
    _, _, folder = cluster_run
    exported = artifacts.read_bytes(f"{WORKDIR}/exports/assignments.csv").decode()
    assert len(list(csv.DictReader(io.StringIO(exported)))) == sum(SETS.values())
    assert sorted(p.name for p in folder.iterdir()) == ["chaos.json", "run.log"]


def test_serve_answers_from_the_workdir_in_the_bucket(cluster_run, cluster, data_dir):
    port = _free_port()
    token = secrets.token_hex(16)
    service = subprocess.Popen(
        [str(BIN / "fusc"), "serve", "--workdir", WORKDIR, "--ray-address", cluster.address,
         "--port", str(port)], env={**cluster.environment, "FUSC_API_TOKEN": token},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url, auth = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {token}"}
    try:
        _wait_until_healthy(url, service)
        name = sorted((data_dir / "hc18" / "images").glob("*.png"))[0]
        answer = requests.post(f"{url}/v1/cluster", data=name.read_bytes(), headers=auth,
                               timeout=120)
        assert answer.status_code == 200, answer.text
        table = lancedb.connect(f"{WORKDIR}/lancedb").open_table(ASSIGNMENTS).to_arrow()
        stored = dict(zip(table["image_id"].to_pylist(), table["cluster_id"].to_pylist()))
        assert stored[answer.json()["image_id"]] == answer.json()["cluster_id"]
    finally:
        service.send_signal(signal.SIGINT)
        try:  # Serve's deletion of the app took over 120 s on a loaded 2-core test machine
            service.wait(timeout=30)
        except subprocess.TimeoutExpired:  # the cluster is torn down after this test anyway
            service.kill()
            service.wait()


def _wait_until_healthy(url: str, service: subprocess.Popen, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if service.poll() is not None:
            raise AssertionError(f"fusc serve ended: {service.stdout.read()[-3000:]}")
        try:
            if requests.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        except requests.RequestException:  # not listening yet, or Serve still starting
            pass
        time.sleep(1)
    raise AssertionError("fusc serve did not become healthy")


def test_a_node_without_the_cluster_token_is_refused(cluster):
    output, _ = cluster.stranger.communicate(timeout=120)
    assert cluster.stranger.returncode != 0
    assert "InvalidAuthToken" in output
