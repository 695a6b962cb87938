"""OCR benchmark: view names rendered onto real images and read back; speed on real screen captures.

The shared data sets carry no typed view names, so a case renders a vocabulary alias (DejaVu Sans,
12-28 px, white or light grey) at a seeded random place on a real image of fetal-planes-db or
african-planes, half of them inside the fan (over tissue), half outside it (on the dark border).

    python bench/ocr_accuracy.py [--cases 200] [--engines easyocr tesseract]
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import yaml

from fusc_lib.ocr import make_engine
from fusc_lib.testing import render_text, text_size
from fusc_lib.views import load_vocabulary

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SETS = ("fetal-planes-db", "african-planes")
FONT_SIZES = (12, 28)
GREY_LEVELS = (200, 235)  # "light grey" text
DARK = 40                 # a background darker than this (99th percentile) is outside the fan
LEGIBLE = 80              # text at least this much brighter than the median tissue under it
TRIES = 200
Case = tuple[np.ndarray, str]


def typed_names() -> list[tuple[str, str]]:
    """(alias, view) for every typed view-name alias the vocabulary maps back to its own view.

    An alias the vocabulary maps elsewhere (a vocabulary bug) would measure the vocabulary, not
    the reader, so it is left out.
    """
    spec = yaml.safe_load(resources.files("fusc_lib.vocab").joinpath("views.yaml").read_text())
    vocab = load_vocabulary()
    return [(alias, view) for view, entry in spec["views"].items() for alias in entry["aliases"]
            if vocab.match([(alias, 1.0)]).view == view]


def fan_mask(gray: np.ndarray) -> np.ndarray:
    """Where the scan (fan) is: the non-dark area, closed over dark tissue; True inside."""
    lit = (cv2.medianBlur(gray, 5) > 12).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (31, 31))
    return cv2.morphologyEx(lit, cv2.MORPH_CLOSE, kernel).astype(bool)


def _place(rng: random.Random, gray: np.ndarray, fan: np.ndarray, size: tuple[int, int],
           value: int, inside: bool) -> tuple[int, int] | None:
    """A pen position where text of `size` lies wholly inside (or outside) the fan, or None.

    Inside the fan the text must be legible: `value` at least LEGIBLE above the median tissue
    under it (light grey on bright bone is unreadable to anyone, and no operator types it there).
    Outside the fan the area around the text (one text height on each side) must be dark, so a
    case never lands on the machine's own text or grey bar.
    """
    w, h = size
    for _ in range(TRIES):
        x, y = rng.randrange(0, gray.shape[1] - w), rng.randrange(0, gray.shape[0] - h)
        if inside and fan[y:y + h, x:x + w].all():
            if value - np.median(gray[y:y + h, x:x + w]) >= LEGIBLE:
                return x, y
            continue
        around = gray[max(y - h, 0):y + 2 * h, max(x - h, 0):x + w + h]
        if not inside and not fan[y:y + h, x:x + w].any() and np.percentile(around, 99) < DARK:
            return x, y
    return None


def _images(data_dir: Path) -> list[Path]:
    """Image paths alternating between the two sets, so any prefix draws from both."""
    per_set = [sorted((data_dir / name / "images").glob("*.png")) for name in SETS]
    return [p for pair in zip(*per_set) for p in pair]


def rendered_view_name_cases(data_dir: Path = DATA_DIR, n: int = 200, seed: int = 0) -> list[Case]:
    """`n` (image, expected view) cases: a typed view name rendered onto a real grayscale image.

    Font size 12-28 px, white or light grey, inside the fan for even-numbered cases and outside
    for odd ones (falling back to inside where an image has no dark border, as in african-planes).
    """
    rng = random.Random(seed)
    paths, names = _images(Path(data_dir)), typed_names()
    cases = []
    while len(cases) < n:
        gray = cv2.imread(str(rng.choice(paths)), cv2.IMREAD_GRAYSCALE)
        alias, view = rng.choice(names)
        height = rng.randint(*FONT_SIZES)
        size = text_size(alias, height)
        value = 255 if rng.random() < 0.5 else rng.randint(*GREY_LEVELS)
        fan = fan_mask(gray)
        spot = (_place(rng, gray, fan, size, value, inside=len(cases) % 2 == 0)
                or _place(rng, gray, fan, size, value, inside=True))
        if spot is None:
            continue
        cases.append((render_text(gray, alias, *spot, height, value=value)[0], view))
    return cases


def view_name_accuracy(engine, cases: Sequence[Case], batch: int = 8) -> float:
    """Share of cases whose OCR lines the vocabulary maps to the expected view."""
    vocab = load_vocabulary()
    hits = 0
    for start in range(0, len(cases), batch):
        chunk = cases[start:start + batch]
        for lines, (_, expected) in zip(engine.read_batch([image for image, _ in chunk]), chunk):
            hits += vocab.match([(line.text, line.confidence) for line in lines]).view == expected
    return hits / len(cases)


def images_per_second(engine, images: Sequence[np.ndarray]) -> float:
    """Throughput reading one image per call, as an ingest worker does."""
    start = time.perf_counter()
    for image in images:
        engine.read_batch([image])
    return len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engines", nargs="+", default=["easyocr", "tesseract"])
    args = parser.parse_args()
    cases = rendered_view_name_cases(DATA_DIR, args.cases, args.seed)
    captures = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
                for p in sorted((DATA_DIR / "fetal-planes-db" / "images").glob("*.png"))]
    for name in args.engines:
        start = time.perf_counter()
        engine = make_engine(name, threads=1)
        built = time.perf_counter() - start
        accuracy = view_name_accuracy(engine, cases)
        speed = images_per_second(make_engine(name, threads=1), captures)  # fresh engine: cold cache
        print(f"{name}: view names read {accuracy:.1%} of {len(cases)} rendered cases; "
              f"{speed:.1f} img/s ({1000 / speed:.0f} ms/img) on {len(captures)} real captures, "
              f"1 thread; built in {built:.1f} s")


if __name__ == "__main__":
    for var in ("OMP_NUM_THREADS", "OMP_THREAD_LIMIT", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    main()
