"""Serving benchmark: `fusc serve` on localhost against the same model run in-process.

Prints, in one run on this machine: the bare batched forward of the served model (the encoder on
prepared scans, every view, all cores) and the whole online path in-process (decode, preprocess,
embed, head: what one request costs); then the served images/s with 1, 8 and 32 concurrent
clients (a bounded asyncio client, aiohttp) with p50/p99 latency; then a soak at steady load
reporting 5xx answers and the RSS of the Serve processes (replicas, proxy, controller) at start
and end. The workdir is built by `fusc run` from the shared images unless --workdir is given.

    .venv/bin/python -m bench.serve [--soak-minutes 10] [--workdir W] [--views N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import socket
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count()))

import aiohttp
import psutil
import torch
import yaml

from fusc_lib.config import RunConfig, default_of
from fusc_lib.online import OnlineClusterer, ScanRequest
from fusc_lib.preprocess import workdir_preprocess
from fusc_lib.store import Workdir
from jobs.ray_runtime import connect
from jobs.run import run_all
from services.serve import DEFAULT_CONFIG, start, stop

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SETS = ("african-planes", "fetal-planes-db", "hc18")
CLIENTS = (1, 8, 32)
SOAK_CLIENTS = 8
BAD_EVERY = 20  # in the soak, one request in 20 is a truncated file (must get a 422, not a 5xx)


def build_workdir(root: Path, images: int, views: int) -> Workdir:
    """A finished workdir (`fusc run`, ImageNet EfficientNet-Lite0) over `images` shared scans."""
    archive = root / "archive"
    archive.mkdir()
    per_set = -(-images // len(SETS))
    for name in SETS:
        for path in sorted((DATA / name / "images").glob("*.png"))[:per_set]:
            shutil.copy(path, archive / f"{name}__{path.name}")
    store = Workdir(str(root / "w"))
    workdir_preprocess(store, {"ocr_engine": "none"})
    run_all(store, RunConfig(ingest={"paths": [str(archive)]}, neighbors={"k": 5},
                             embed={"embedding": "pretrained:efficientnet_lite0", "views": views},
                             cluster={"clusters": 5, "heads": 3, "epochs": 20}))
    return store


def bodies(store: Workdir) -> list[bytes]:
    from schemas.tables import SCANS

    uris = store.column(SCANS, "source_uri").to_pylist()
    return [Path(uri).read_bytes() for uri in uris]


# --- in-process -------------------------------------------------------------------------------

def in_process(store: Workdir, files: list[bytes], batch: int, seconds: float) -> dict:
    """Steady-state images/s of the encoder alone and of the whole online path, all cores, each
    over at least `seconds` (the scans cycled), after one warm-up batch."""
    torch.set_num_threads(os.cpu_count())
    online = OnlineClusterer(store.root)
    requests = [ScanRequest(data) for data in files]
    encoder, views = online.encoder, online.n_views
    prepared = [online.preprocessor.prepare([online.first_frame(r)[1]])[0].pixels
                for r in requests]
    ids = [f"bench-{i}" for i in range(len(prepared))]
    forward = _rate(lambda i, j: encoder.embed(prepared[i:j], ids[i:j], views), len(files),
                    batch, seconds)
    pipeline = _rate(lambda i, j: online.cluster_batch(requests[i:j]), len(files), batch, seconds)
    single = []
    for request in requests:
        began = time.monotonic()
        online.cluster_batch([request])
        single.append(time.monotonic() - began)
    return {"forward": forward, "pipeline": pipeline, "single_s": statistics.median(single),
            "views": views}


def _rate(run, n: int, batch: int, seconds: float) -> float:
    """Items/s of `run(start, end)` over consecutive batches of n items, cycled."""
    run(0, min(batch, n))  # warm-up
    done, started = 0, time.monotonic()
    while time.monotonic() - started < seconds or not done:
        for i in range(0, n, batch):
            run(i, min(i + batch, n))
            done += min(i + batch, n) - i
    return done / (time.monotonic() - started)


# --- over HTTP --------------------------------------------------------------------------------

async def load(url: str, files: list[bytes], clients: int, seconds: float,
               bad_every: int = 0) -> dict:
    """`clients` concurrent clients, each sending its next scan as soon as it has an answer."""
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    counter = iter(range(10**9))
    truncated = files[0][:len(files[0]) // 3]

    async def client(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline:
            n = next(counter)
            body = truncated if bad_every and n % bad_every == bad_every - 1 \
                else files[n % len(files)]
            began = time.monotonic()
            try:
                async with session.post(url + "/v1/cluster", data=body, headers={
                        "Content-Type": "application/octet-stream"}) as answer:
                    await answer.read()
                    status = answer.status
            except (TimeoutError, aiohttp.ClientError):
                status = -1  # connection refused or reset: counted apart from HTTP codes
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200:
                latencies.append(time.monotonic() - began)

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=clients)) as session:
        started = time.monotonic()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        elapsed = time.monotonic() - started
    latencies.sort()
    return {"rate": len(latencies) / elapsed, "statuses": statuses, "count": len(latencies),
            "p50": _quantile(latencies, 0.5), "p99": _quantile(latencies, 0.99)}


def _quantile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def serve_rss() -> int:
    """Summed RSS of Ray Serve's processes (replicas, proxy, controller)."""
    total = 0
    for process in psutil.process_iter(["cmdline", "memory_info"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if ("ServeReplica" in cmdline or "ServeController" in cmdline or "ProxyActor" in cmdline) \
                and process.info["memory_info"]:
            total += process.info["memory_info"].rss
    return total


async def soak(url: str, files: list[bytes], minutes: float) -> dict:
    """Steady load for `minutes`, in 30 s rounds, sampling the Serve processes' RSS between."""
    rss = [serve_rss()]
    statuses: dict[int, int] = {}
    count, latencies_p99 = 0, []
    end = time.monotonic() + minutes * 60
    while time.monotonic() < end:
        round_ = await load(url, files, SOAK_CLIENTS, min(30.0, end - time.monotonic()), BAD_EVERY)
        for status, n in round_["statuses"].items():
            statuses[status] = statuses.get(status, 0) + n
        count += round_["count"]
        latencies_p99.append(round_["p99"])
        rss.append(serve_rss())
    return {"statuses": statuses, "rss": rss, "count": count, "p99_max": max(latencies_p99)}


def bench_config(folder: Path, cpus: int) -> Path:
    """deploy/serve.yaml with one fixed replica holding every core, as the in-process run."""
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    deployment = config["applications"][0]["deployments"][0]
    deployment.pop("autoscaling_config", None)
    deployment["num_replicas"] = 1
    deployment["ray_actor_options"] = {"num_cpus": cpus}
    path = folder / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", help="A finished workdir [default: built from the shared "
                                          "images by `fusc run`].")
    parser.add_argument("--images", type=int, default=48, help="Scans in the built workdir.")
    parser.add_argument("--views", type=int, default=default_of(RunConfig, "embed").views,
                        help="Views averaged per scan [default: fusc run's].")
    parser.add_argument("--seconds", type=float, default=20, help="Per client count.")
    parser.add_argument("--soak-minutes", type=float, default=10)
    args = parser.parse_args()
    cpus = os.cpu_count()
    connect(None)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = Workdir(args.workdir) if args.workdir else build_workdir(root, args.images,
                                                                          args.views)
        files = bodies(store)
        random.Random(0).shuffle(files)
        config = yaml.safe_load(DEFAULT_CONFIG.read_text())
        batch = config["applications"][0]["deployments"][0]["user_config"]["max_batch_size"]
        bare = in_process(store, files, batch, args.seconds)
        print(f"{len(files)} scans, model {OnlineClusterer(store.root).model.embedding} "
              f"({bare['views']} views per scan), batch {batch}, {cpus} CPUs")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        started = time.monotonic()
        url = start(store.root, port=port, config_path=bench_config(root, cpus))
        startup = time.monotonic() - started
        asyncio.run(load(url, files, 8, 5))  # warm-up
        served = {clients: asyncio.run(load(url, files, clients, args.seconds))
                  for clients in CLIENTS}
        soaked = asyncio.run(soak(url, files, args.soak_minutes)) if args.soak_minutes else None
        stop()
    print_table(bare, served, soaked, startup, args.soak_minutes)


def print_table(bare: dict, served: dict, soaked: dict | None, startup: float,
                minutes: float) -> None:
    rows = [("bare batched forward (encoder, all views, in-process)",
             f"{bare['forward']:.1f} images/s"),
            ("whole online path in-process (decode, preprocess, embed, head)",
             f"{bare['pipeline']:.1f} images/s"),
            ("one scan alone in-process (the latency floor)", f"{bare['single_s'] * 1000:.0f} ms"),
            ("service start (replica ready)", f"{startup:.1f} s")]
    for clients, result in served.items():
        other = {s: n for s, n in result["statuses"].items() if s != 200}
        rows.append((f"served, {clients} client(s)",
                     f"{result['rate']:.1f} images/s, p50 {result['p50'] * 1000:.0f} ms, "
                     f"p99 {result['p99'] * 1000:.0f} ms" + (f", non-200 {other}" if other else "")))
    top = served[CLIENTS[-1]]["rate"]
    rows.append((f"ratio served@{CLIENTS[-1]} / bare forward (target >= 0.7)",
                 f"{top / bare['forward']:.2f}"))
    rows.append((f"ratio served@{CLIENTS[-1]} / online path in-process",
                 f"{top / bare['pipeline']:.2f}"))
    rows.append(("p99@1 / one scan in-process (target < 4)",
                 f"{served[1]['p99'] / bare['single_s']:.2f}"))
    if soaked:
        errors = sum(n for s, n in soaked["statuses"].items() if s >= 500 or s < 0)
        rss = soaked["rss"]
        rows.append((f"soak {minutes:g} min, {SOAK_CLIENTS} clients, 1 in {BAD_EVERY} truncated",
                     f"{soaked['count']} answered 200, statuses {dict(sorted(soaked['statuses'].items()))}, "
                     f"5xx/failed {errors}, worst 30 s p99 {soaked['p99_max'] * 1000:.0f} ms"))
        rows.append(("Serve processes RSS start -> end (max)",
                     f"{rss[0] / 2**20:.0f} -> {rss[-1] / 2**20:.0f} MiB "
                     f"(max {max(rss) / 2**20:.0f} MiB)"))
    width = max(len(name) for name, _ in rows)
    print()
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
