"""Ingest benchmark: how close full ingest comes to bare decoding, on real scans, in one run.

Prints, on this machine: decode-only images/s (read + decode, same Ray Data pipeline and worker
count), full-ingest images/s with OCR on and off, their ratios, peak memory, and the OCR accuracy
on view names rendered onto real images.

    .venv/bin/python -m bench.ingest [--workers 2] [--cases 200]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import psutil
import pyarrow as pa
import ray

from bench.ocr_accuracy import rendered_view_name_cases, view_name_accuracy
from fusc_lib.ingest import IngestConfig
from fusc_lib.io import decode
from fusc_lib.ocr import make_engine
from fusc_lib.preprocess import to_gray, workdir_preprocess
from fusc_lib.artifacts import read_bytes
from fusc_lib.sources import gather_sources
from fusc_lib.store import Workdir
from jobs._ray import connect
from jobs.ingest import run_ingest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SETS = ("african-planes", "fetal-planes-db", "hc18")


class PeakMemory:
    """Samples the summed RSS of this process and every Ray process, keeps the peak."""

    def __init__(self, every_s: float = 0.2):
        self.peak_bytes = 0
        self._every = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        total = 0
        for process in psutil.process_iter(["pid", "name", "cmdline", "memory_info"]):
            cmdline = " ".join(process.info["cmdline"] or [])
            if process.info["pid"] == os.getpid() or "ray" in cmdline:
                total += process.info["memory_info"].rss if process.info["memory_info"] else 0
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._rss())
            time.sleep(self._every)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _decode_batch(batch: pa.Table) -> pa.Table:
    sizes = [to_gray(next(decode(read_bytes(uri), uri).frames)).size
             for uri in batch.column("uri").to_pylist()]
    return pa.table({"pixels": sizes})


def decode_only_rate(paths: list[str], workers: int) -> float:
    """Images/s of read + decode alone, through the same kind of Ray Data pipeline."""
    sources = [s.as_row() for s in gather_sources(paths)]
    started = time.monotonic()
    dataset = ray.data.from_items(sources).map_batches(
        _decode_batch, batch_size=8, batch_format="pyarrow", num_cpus=1,
        compute=ray.data.TaskPoolStrategy(size=workers))
    count = sum(batch.num_rows for batch in dataset.iter_batches(batch_format="pyarrow"))
    return count / (time.monotonic() - started)


def full_ingest_rate(paths: list[str], workers: int, engine: str) -> tuple[float, float, int]:
    """(images/s over the whole run, images/s after the workers started, rows) of `fusc ingest`."""
    with tempfile.TemporaryDirectory() as root:
        store = Workdir(root)
        preprocess = workdir_preprocess(store, {"ocr_engine": engine})
        config = IngestConfig(paths=paths, concurrency=workers)
        summary = run_ingest(store, config, preprocess)
    rows = summary.rows_ingested + summary.duplicates_skipped + summary.quarantined
    steady = rows / max(summary.seconds - summary.startup_seconds, 1e-9)
    return rows / summary.seconds, steady, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cases", type=int, default=200)
    args = parser.parse_args()
    paths = [str(DATA / name / "images") for name in SETS]
    connect(None)
    print(f"input: {', '.join(SETS)} from {DATA} ({args.workers} workers, {os.cpu_count()} CPUs)")
    decode_rate = decode_only_rate(paths, args.workers)
    print(f"decode only                : {decode_rate:7.1f} images/s")
    with PeakMemory() as memory:
        for engine in ("none", "easyocr"):
            overall, steady, rows = full_ingest_rate(paths, args.workers, engine)
            print(f"full ingest, OCR {engine:9}: {overall:7.1f} images/s overall, "
                  f"{steady:7.1f} after start-up ({rows} files); "
                  f"ratio to decode {steady / decode_rate:.2f}")
    print(f"peak RSS (driver + Ray)    : {memory.peak_bytes / 2**30:.2f} GiB")
    cases = rendered_view_name_cases(DATA, args.cases, seed=0)
    for engine in ("easyocr", "tesseract"):
        accuracy = view_name_accuracy(make_engine(engine), cases)
        print(f"view names read, {engine:9}: {accuracy:.1%} of {len(cases)} rendered cases")


if __name__ == "__main__":
    main()
