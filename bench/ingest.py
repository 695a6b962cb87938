"""Ingest benchmark: how close full ingest comes to bare decoding, on real scans, in one run.

Prints, on this machine: decode-only images/s (read + decode on one core, times the workers),
full-ingest images/s with OCR on and off over an archive of the shared images copied a few times
(start-up included), their ratios, peak memory, and the OCR accuracy on view names rendered onto
real images.

    .venv/bin/python -m bench.ingest [--workers 2] [--copies 3] [--cases 200]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from bench.memory import PeakRss
from bench.ocr_accuracy import rendered_view_name_cases, view_name_accuracy
from fusc_lib.ingest import IngestConfig
from fusc_lib.io import decode
from fusc_lib.ocr import make_engine
from fusc_lib.preprocess import to_gray, workdir_preprocess
from fusc_lib.store import Workdir
from jobs.ingest import run_ingest
from jobs.ray_runtime import connect

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SETS = ("african-planes", "fetal-planes-db", "hc18")


def make_archive(folder: Path, copies: int) -> list[Path]:
    """The shared images `copies` times, each copy made unique by a PNG text chunk.

    A benchmark archive several times the shared sets, so start-up (Ray, OCR model loading) is
    amortised as on a real archive; unique bytes, so no copy is skipped as a duplicate.
    """
    files = []
    for copy in range(copies):
        for name in SETS:
            for path in sorted((DATA / name / "images").glob("*.png")):
                info = PngInfo()
                info.add_text("fusc-bench-copy", f"{copy}-{path.name}")
                target = folder / f"{copy}-{name}-{path.name}"
                Image.open(path).save(target, pnginfo=info)
                files.append(target)
    return files


def decode_only_rate(files: list[Path], workers: int) -> float:
    """Images/s of read + decode + grey on one core, times the worker count: the ceiling."""
    started = time.monotonic()
    for path in files:
        to_gray(next(decode(path.read_bytes()).frames)[1])
    return workers * len(files) / (time.monotonic() - started)


def full_ingest_rate(folder: Path, workers: int, engine: str) -> tuple[float, float, int]:
    """(images/s over the whole run, start-up seconds, files) of `fusc ingest` on `folder`."""
    with tempfile.TemporaryDirectory() as root:
        store = Workdir(root)
        preprocess = workdir_preprocess(store, {"ocr_engine": engine})
        config = IngestConfig(paths=[str(folder)], concurrency=workers)
        summary = run_ingest(store, config, preprocess)
    files = summary.rows_ingested + summary.duplicates + summary.quarantined
    return files / summary.seconds, summary.startup_seconds, files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--copies", type=int, default=3, help="Copies of the shared images.")
    parser.add_argument("--cases", type=int, default=200)
    args = parser.parse_args()
    connect(None)
    with tempfile.TemporaryDirectory() as folder:
        files = make_archive(Path(folder), args.copies)
        print(f"archive: {len(files)} files ({args.copies} unique copies of {', '.join(SETS)}); "
              f"{args.workers} workers, {os.cpu_count()} CPUs")
        decode_rate = decode_only_rate(files, args.workers)
        print(f"decode only (1 core x {args.workers})   : {decode_rate:7.1f} images/s")
        with PeakRss(include_ray=True) as memory:
            for engine in ("none", "easyocr"):
                rate, startup, count = full_ingest_rate(Path(folder), args.workers, engine)
                print(f"full ingest, OCR {engine:8}: {rate:7.1f} images/s over {count} files "
                      f"(start-up {startup:.0f} s included); ratio to decode {rate / decode_rate:.2f}")
    print(f"peak RSS (driver + Ray)    : {memory.peak_bytes / 2**30:.2f} GiB")
    cases = rendered_view_name_cases(DATA, args.cases, seed=0)
    for engine in ("easyocr", "tesseract"):
        accuracy = view_name_accuracy(make_engine(engine), cases)
        print(f"view names read, {engine:9}: {accuracy:.1%} of {len(cases)} rendered cases")


if __name__ == "__main__":
    main()
