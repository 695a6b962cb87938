"""Review-page benchmark: how long a reviewer waits on an archive of `--scans` scans.

Serves `fusc review`'s app (services/review_app.py) with uvicorn on 127.0.0.1 in this process
and times, over HTTP as the page does: the first page of the cluster overview (the model,
its assignments and suggestions loaded), its montage thumbnails made (first view) and served
again (cached), opening a cluster the first time (the stray ranking over the whole
clustering space) and the next time, and saving decisions one request each. The workdir is
bench/report.py's synthetic archive (built here unless --workdir holds one already).

    .venv/bin/python -m bench.review [--scans 100000] [--workdir /tmp/bench-report/w100k]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import requests

from bench.report import build_workdir
from fusc_lib.store import Workdir
from services.review_app import build_app, listen, server

DECISIONS = 50


def timed(call) -> tuple[float, object]:
    started = time.perf_counter()
    result = call()
    return time.perf_counter() - started, result


def measure(url: str) -> dict[str, float]:
    """Seconds of each step a reviewer waits for (see the module doc)."""
    figures = {}
    figures["first overview page (s)"], page = timed(
        lambda: requests.get(f"{url}api/clusters?limit=24", timeout=600).json())
    montage = [i for cluster in page["clusters"] for i in cluster["montage"]]
    for label in ("its montage thumbnails, made (s)", "its montage thumbnails, cached (s)"):
        figures[label], _ = timed(lambda: [requests.get(f"{url}thumbs/{i}.jpg", timeout=60)
                                           for i in montage])
    for label in ("open a cluster, first time (s)", "open a cluster, again (s)"):
        figures[label], scans = timed(lambda: requests.get(
            f"{url}api/clusters/0/scans?limit=48", timeout=600).json())
    figures["montage thumbnails"] = len(montage)
    figures["scans in cluster 0"] = scans["total"]
    seconds, _ = timed(lambda: [requests.post(f"{url}api/decisions", json={
        "reviewer": "bench", "decisions": [{"action": "name", "cluster_id": 1,
                                            "name": f"name {n}"}]}, timeout=60)
        for n in range(DECISIONS)])
    figures["per saved decision (ms)"] = 1000 * seconds / DECISIONS
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=100_000)
    parser.add_argument("--workdir", help="a bench/report.py workdir to reuse, or where to "
                                          "build one (default: a temporary folder)")
    args = parser.parse_args()
    root = args.workdir or tempfile.mkdtemp(prefix="fusc-bench-review-")
    if not (Path(root) / "models").exists():
        build = argparse.Namespace(scans=args.scans, dim=128, clusters=10, sites=4, epochs=5,
                                   image_side=64, neighbors="cluster")
        print(f"building {args.scans} synthetic scans in {root}: {build_workdir(root, build)}")
    sock = listen("127.0.0.1", 0)
    uvicorn = server(build_app(Workdir(root)))
    threading.Thread(target=uvicorn.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not uvicorn.started:
        time.sleep(0.05)
    figures = measure(f"http://127.0.0.1:{sock.getsockname()[1]}/")
    uvicorn.should_exit = True
    for name, value in figures.items():
        print(f"{name:40s} {value:10.3f}" if isinstance(value, float) else f"{name:40s} {value:10d}")


if __name__ == "__main__":
    main()
