"""A storm of bad files: every kind of broken input mixed with real scans, through `fusc ingest`.

`build_storm` writes, into nested folders (names with spaces, brackets, an apostrophe, accents),
`n_bad` bad files spread over every kind an archive holds (zero-byte, truncated PNG / JPEG /
DICOM, random bytes, text / PDF / XML named like images, DICOM without pixel data,
decompression bombs, broken symbolic links, images under 32 px a side) and `n_good` good scans
made from the real images of ../shared/data, each with distinct bytes, in every format (PNG,
JPEG, BMP, TIFF and multi-page TIFF, DICOM, multi-frame DICOM, DICOM without preamble or file
meta), some with an upper-case or wrong extension, some UID-named without an extension. It
returns what it wrote: each good file with its frame count and size, each bad file with the
words its quarantine reason must contain. `check_storm` compares the `scans` and `quarantine`
tables with that: every good file ingested exactly once, every bad file exactly one quarantine
row with its reason, nothing else.

As a program: ingest a storm (1,000 bad + 200 good) into a fresh workdir, then the same good
files alone into another, and print files/s for each, the table counts, the problems found and
that a rerun adds nothing.

    .venv/bin/python -m bench.badfiles [--bad 1000] [--good 200] [--workers N] [--seed 0]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import re
import struct
import tempfile
import time
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pyarrow as pa
import pydicom
from PIL import Image, UnidentifiedImageError

from tests.dicom_files import make_dicom

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
IMAGE_SETS = ("african-planes", "fetal-planes-db", "hc18", "fetal-planes-db-large")
MIN_SIDE = 32  # images smaller than this on a side are bad ("too small")
BOMB_SIZE = (11_000, 10_000)  # 110 megapixels, over the default --max-megapixels (100)

# Where files go, relative to the storm's root: a few levels, names a shell or a glob would trip
# on (spaces, brackets, parentheses, an apostrophe, a comma, accents, a UID-named series).
FOLDERS = (
    "",
    "site-a",
    "site-a/Patient [2024]",
    "site-a/Patient [2024]/Study 1 (US)",
    "site-a/Patient [2024]/Study 1 (US)/series 2",
    "Hospital B/2023-05-17",
    "Hospital B/O'Neil, Mary/US [fetal] 20w",
    "échographies/Ré-export (old PACS)",
    "échographies/1.2.840.113619.2.55.3.604688119.868.1/1.2.840.113619.2.55.3.604688119.868.2",
    "deep/a/b/c/d/e",
)

# Good scans: (format, extension; "uid" = a DICOM-style UID name, "" = no extension, naming).
# DICOM without preamble has no signature to sniff, so it is only given DICOM-like names.
GOOD_VARIANTS = (
    ("png", ".png", "extension"), ("png", ".PNG", "upper-case extension"),
    ("png", ".jpg", "wrong extension"), ("png", "uid", "UID name"), ("png", "", "no extension"),
    ("png-rgb", ".png", "extension"),
    ("jpeg", ".jpg", "extension"), ("jpeg", ".JPEG", "upper-case extension"),
    ("jpeg", ".dcm", "wrong extension"), ("jpeg", "uid", "UID name"),
    ("jpeg", "", "no extension"),
    ("bmp", ".bmp", "extension"), ("bmp", ".BMP", "upper-case extension"),
    ("bmp", ".tif", "wrong extension"),
    ("tiff", ".tif", "extension"), ("tiff", ".TIFF", "upper-case extension"),
    ("tiff", ".png", "wrong extension"),
    ("tiff-2-pages", ".tiff", "extension"), ("tiff-2-pages", "uid", "UID name"),
    ("dicom", ".dcm", "extension"), ("dicom", ".DCM", "upper-case extension"),
    ("dicom", ".PNG", "wrong extension"), ("dicom", "uid", "UID name"),
    ("dicom", "", "no extension"),
    ("dicom-3-frames", ".dcm", "extension"), ("dicom-3-frames", "uid", "UID name"),
    ("dicom-no-preamble", ".dcm", "extension"), ("dicom-no-preamble", "uid", "UID name"),
    ("dicom-no-preamble", "", "no extension"),
)

# Bad kinds: the words (any of them, any case) the quarantine reason must contain, and the
# names the kind is given in turn. Non-images are named like pictures (or have no extension):
# under a DICOM name their reason would rightly speak of DICOM instead.
BAD_KINDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "zero-byte": (("empty file",), (".png", ".dcm", ".jpg", "", "uid")),
    "truncated PNG": (("truncated", "corrupt"), (".png", ".PNG", "")),
    "truncated JPEG": (("truncated", "corrupt"), (".jpg", ".jpeg", ".JPG")),
    "truncated DICOM": (("truncated", "pixel data"), (".dcm", "uid", "")),
    "random bytes": (("not an image",), (".png", ".jpg", ".tif", ".bmp", "")),
    "text named .png": (("not an image",), (".png", ".PNG")),
    "PDF": (("not an image",), (".png", ".jpg", "")),
    "XML": (("not an image",), (".png", ".tif", "")),
    "DICOM without pixels": (("without pixel data",), (".dcm", "uid", "", ".DCM")),
    "decompression bomb": (("too large",), (".png", ".PNG", "")),
    "broken symlink": (("broken symbolic link",), (".png", ".dcm", "")),
    "too small": (("too small",), (".png", ".jpg", ".bmp")),
}


@dataclass(frozen=True)
class GoodFile:
    path: Path
    frames: int
    width: int
    height: int
    fmt: str
    naming: str

    @property
    def uri(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class BadFile:
    path: Path
    kind: str
    keywords: tuple[str, ...]  # the reason must contain one of them, case-insensitively

    @property
    def uri(self) -> str:
        return str(self.path)

    def reason_ok(self, reason: str) -> bool:
        return any(word.lower() in reason.lower() for word in self.keywords)


@dataclass
class Storm:
    root: Path
    good: list[GoodFile] = field(default_factory=list)
    bad: list[BadFile] = field(default_factory=list)

    @property
    def expected_scan_rows(self) -> int:
        return sum(g.frames for g in self.good)


# --- building ----------------------------------------------------------------------------------

def real_images(data_dir: Path = DATA) -> list[Path]:
    """The shared images, one per distinct content (some sets hold byte-identical copies)."""
    seen, images = set(), []
    for name in IMAGE_SETS:
        for path in sorted((data_dir / name / "images").glob("*.png")):
            digest = hashlib.sha256(path.read_bytes()).digest()
            if digest not in seen:
                seen.add(digest)
                images.append(path)
    return images


def _grey(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"))


def _save(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _raw_dicom(pixels: np.ndarray) -> bytes:
    """A bare DICOM data set: no preamble, no `DICM`, no file meta, implicit VR little endian."""
    full = pydicom.dcmread(io.BytesIO(make_dicom(pixels)))
    bare = pydicom.Dataset()
    bare.update(full)  # the elements only: the file meta stays behind
    buffer = io.BytesIO()
    bare.save_as(buffer, implicit_vr=True, little_endian=True, enforce_file_format=False)
    return buffer.getvalue()


def _encode_good(fmt: str, grey: np.ndarray, rng: np.random.Generator) -> tuple[bytes, int]:
    """(file bytes, frames) of a good scan of `grey` pixels in format `fmt`."""
    image = Image.fromarray(grey)
    if fmt == "png":
        return _save(image, "PNG"), 1
    if fmt == "png-rgb":
        return _save(image.convert("RGB"), "PNG"), 1
    if fmt == "jpeg":
        return _save(image, "JPEG", quality=int(rng.integers(70, 96))), 1
    if fmt == "bmp":
        return _save(image, "BMP"), 1
    if fmt == "tiff":
        return _save(image, "TIFF", compression=str(rng.choice(["raw", "tiff_lzw"]))), 1
    if fmt == "tiff-2-pages":
        second = Image.fromarray(np.ascontiguousarray(grey[:, ::-1]))
        return _save(image, "TIFF", save_all=True, append_images=[second]), 2
    if fmt == "dicom":
        return make_dicom(grey), 1
    if fmt == "dicom-3-frames":
        return make_dicom(np.stack([grey, np.roll(grey, 7, axis=1), 255 - grey])), 3
    if fmt == "dicom-no-preamble":
        return _raw_dicom(grey), 1
    raise ValueError(fmt)


class _Namer:
    """File names: `<prefix><n><ext>`, or a DICOM-style UID (its last part looks like an
    extension to `os.path.splitext`: `.7`)."""

    def __init__(self, prefix: str, seed: int, series: int):
        self.prefix, self.uid, self.count = prefix, f"1.2.840.113619.2.55.3.{seed + 1}.{series}", 0

    def __call__(self, ext: str) -> str:
        self.count += 1
        if ext == "uid":
            return f"{self.uid}.{self.count}"
        return f"{self.prefix}{self.count:05d}{ext}"


def _place(root: Path, rng: np.random.Generator, name: str) -> Path:
    folder = root / FOLDERS[int(rng.integers(len(FOLDERS)))]
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def _pil_can_open(data: bytes) -> bool:
    try:
        Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        return False
    except Exception:
        return True  # recognised, then failed on its header
    return True


def _unrecognisable(data: bytes) -> bool:
    """No image or DICOM signature anywhere a decoder would look, and PIL cannot name it."""
    signatures = (b"\x89PNG", b"\xff\xd8", b"BM", b"II*\x00", b"MM\x00*")
    return not (data.startswith(signatures) or data[128:132] == b"DICM" or _pil_can_open(data))


def _good_files(root: Path, images: list[Path], n_good: int, seed: int) -> list[GoodFile]:
    rng = np.random.default_rng([seed, 1])
    order = rng.permutation(len(images))
    name = _Namer("IMG_", seed, 1)
    files, digests = [], set()
    for i in range(n_good):
        fmt, ext, naming = GOOD_VARIANTS[i % len(GOOD_VARIANTS)]
        grey = _grey(images[order[i % len(images)]])
        crop = i // len(images)  # past the shared set: a crop makes each reuse distinct
        grey = np.ascontiguousarray(grey[crop:, crop:])
        data, frames = _encode_good(fmt, grey, rng)
        digest = hashlib.sha256(data).digest()
        if digest in digests:
            raise RuntimeError(f"good file {i} ({fmt}) repeats another's bytes")
        digests.add(digest)
        path = _place(root, rng, name(ext))
        path.write_bytes(data)
        files.append(GoodFile(path, frames, grey.shape[1], grey.shape[0], fmt, naming))
    return files


@lru_cache(maxsize=1)
def _bomb_parts() -> tuple[bytes, bytes]:
    """(PNG header, IDAT + IEND) of an all-black 11000x10000 grey PNG: ~100 KiB on disk."""
    width, height = BOMB_SIZE
    compressor, chunks = zlib.compressobj(9), []
    rows = (b"\x00" * (width + 1)) * 500  # filter byte + pixels, 500 rows at a time
    for _ in range(height // 500):
        chunks.append(compressor.compress(rows))
    chunks.append(compressor.flush())
    header = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    return header, _chunk(b"IDAT", b"".join(chunks)) + _chunk(b"IEND", b"")


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _bomb(index: int) -> bytes:
    header, rest = _bomb_parts()
    return header + _chunk(b"tEXt", b"Comment\x00" + f"storm {index}".encode()) + rest


def _truncated_picture(grey: np.ndarray, fmt: str, rng: np.random.Generator) -> bytes:
    """A real picture cut between 20 % and 85 % of its bytes; PIL must fail to load it."""
    data = _save(Image.fromarray(grey), fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    for _ in range(20):
        cut = data[: int(len(data) * rng.uniform(0.2, 0.85))]
        try:
            Image.open(io.BytesIO(cut)).load()
        except Exception:
            return cut
    raise RuntimeError(f"could not truncate a {fmt} into a broken file")


def _truncated_dicom(grey: np.ndarray, rng: np.random.Generator) -> bytes:
    """A single-frame DICOM whose pixel data (its last element) stops 10-90 % of the way."""
    data = make_dicom(grey)
    pixels = grey.size
    start = len(data) - pixels
    return data[: start + int(pixels * rng.uniform(0.1, 0.9))]


def _small(grey: np.ndarray, rng: np.random.Generator, ext: str) -> bytes:
    size = (int(rng.integers(4, MIN_SIDE)), int(rng.integers(4, MIN_SIDE)))
    small = Image.fromarray(grey).resize(size, Image.Resampling.BILINEAR)
    fmt = {".png": "PNG", ".jpg": "JPEG", ".bmp": "BMP"}[ext.lower()]
    return _save(small, fmt)


_TEXTS = (
    "Patient notes {i}. Referred for anomaly scan at 20 weeks; no image attached.\n",
    "file,view,site,patient\nscan-{i}.png,brain,site-a,P{i}\n",
    "MSH|^~\\&|PACS|SITE-A|RIS|SITE-A|20240517102201||ORU^R01|{i}|P|2.3\n",
    '{{"study": "{i}", "status": "exported", "images": 0}}\n',
    "2024-05-17 10:22:01 INFO export {i} started\n2024-05-17 10:22:02 ERROR disk full\n",
)


def _text(i: int) -> bytes:
    return (_TEXTS[i % len(_TEXTS)].format(i=i) * (1 + i % 40)).encode()


def _pdf(i: int) -> bytes:
    return (b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
            b"2 0 obj\n<< /Type /Pages /Kids [] /Count 0 >>\nendobj\n"
            + f"% report {i}\n".encode() + b"trailer\n<< /Root 1 0 R >>\n%%EOF\n")


def _xml(i: int) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<report id="{i}">\n'
            f"  <patient>P{i}</patient><finding>normal biometry</finding>\n</report>\n").encode()


def _random(rng: np.random.Generator) -> bytes:
    while True:
        data = rng.bytes(int(rng.integers(64, 20_000)))
        if _unrecognisable(data):
            return data


def _bad_bytes(kind: str, i: int, ext: str, images: list[Path], rng: np.random.Generator) -> bytes:
    """The content of bad file number `i` of `kind` (named with extension `ext`)."""
    if kind == "zero-byte":
        return b""
    if kind == "random bytes":
        return _random(rng)
    if kind in ("text named .png", "PDF", "XML"):
        data = {"text named .png": _text, "PDF": _pdf, "XML": _xml}[kind](i)
        assert _unrecognisable(data), kind
        return data
    if kind == "decompression bomb":
        return _bomb(i)
    grey = _grey(images[int(rng.integers(len(images)))])
    if kind == "truncated PNG":
        return _truncated_picture(grey, "PNG", rng)
    if kind == "truncated JPEG":
        return _truncated_picture(grey, "JPEG", rng)
    if kind == "truncated DICOM":
        return _truncated_dicom(grey, rng)
    if kind == "DICOM without pixels":
        return make_dicom(grey, with_pixels=False)
    if kind == "too small":
        return _small(grey, rng, ext)
    raise ValueError(kind)


def _bad_files(root: Path, images: list[Path], n_bad: int, seed: int) -> list[BadFile]:
    rng = np.random.default_rng([seed, 2])
    name = _Namer("IM", seed, 2)
    kinds = list(BAD_KINDS)
    files = []
    for i in range(n_bad):
        kind = kinds[i % len(kinds)]
        keywords, names = BAD_KINDS[kind]
        ext = names[(i // len(kinds)) % len(names)]
        path = _place(root, rng, name(ext))
        if kind == "broken symlink":
            path.symlink_to(path.parent / f"gone-{i}.png")
        else:
            path.write_bytes(_bad_bytes(kind, i, ext, images, rng))
        files.append(BadFile(path, kind, keywords))
    return files


def build_storm(root: Path, data_dir: Path, n_bad: int, n_good: int, seed: int) -> Storm:
    """Write `n_bad` bad files (spread over every kind of `BAD_KINDS`) and `n_good` good scans
    of distinct content into nested folders under `root`; return what was written.

    The good files depend only on (`data_dir`, `n_good`, `seed`), not on the bad ones, so a
    storm and a good-only folder built with the same seed hold the same good scans.
    """
    root = Path(os.path.abspath(root))
    root.mkdir(parents=True, exist_ok=True)
    images = real_images(data_dir)
    return Storm(root, _good_files(root, images, n_good, seed), _bad_files(root, images, n_bad, seed))


# --- checking ----------------------------------------------------------------------------------

@dataclass
class StormCheck:
    """What the tables got wrong; each entry is `(group, file relative to the root, detail)`."""

    good_missing: list[tuple[str, str, str]] = field(default_factory=list)
    good_wrong: list[tuple[str, str, str]] = field(default_factory=list)  # rows/frames/size
    bad_missing: list[tuple[str, str, str]] = field(default_factory=list)
    bad_repeated: list[tuple[str, str, str]] = field(default_factory=list)
    bad_wrong_reason: list[tuple[str, str, str]] = field(default_factory=list)
    extra_scans: list[tuple[str, str, str]] = field(default_factory=list)
    extra_quarantine: list[tuple[str, str, str]] = field(default_factory=list)
    crashes: int = 0  # quarantine rows whose reason is an unanticipated exception

    def problems(self) -> dict[str, list[tuple[str, str, str]]]:
        return {name: value for name, value in vars(self).items()
                if isinstance(value, list) and value}


def check_storm(storm: Storm, scans: pa.Table, quarantine: pa.Table) -> StormCheck:
    """Compare `scans` (source_uri, frame, width, height) and `quarantine` (source_uri,
    reason) rows with what the storm holds."""
    check = StormCheck()
    scan_rows: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    for uri, frame, width, height in zip(*(scans.column(c).to_pylist()
                                           for c in ("source_uri", "frame", "width", "height"))):
        scan_rows[uri].append((frame, width, height))
    reasons: dict[str, list[str]] = defaultdict(list)
    for uri, reason in zip(quarantine.column("source_uri").to_pylist(),
                           quarantine.column("reason").to_pylist()):
        reasons[uri].append(reason)
    check.crashes = sum(r.lower().startswith("unexpected") for rs in reasons.values() for r in rs)
    rel = lambda uri: os.path.relpath(uri, storm.root)  # noqa: E731

    for good in storm.good:
        group = f"{good.fmt}, {good.naming}"
        rows = sorted(scan_rows.get(good.uri, []))
        if not rows:
            held = reasons.get(good.uri)
            detail = f"quarantined: {held}" if held else "in neither table"
            check.good_missing.append((group, rel(good.uri), detail))
            continue
        expected = [(f, good.width, good.height) for f in range(good.frames)]
        if rows != expected:
            check.good_wrong.append((group, rel(good.uri),
                                     f"rows (frame, width, height) {rows}, expected {expected}"))
        if good.uri in reasons:
            check.good_wrong.append((group, rel(good.uri), f"also quarantined: {reasons[good.uri]}"))

    for bad in storm.bad:
        held = reasons.get(bad.uri, [])
        if not held:
            detail = f"ingested as {len(scan_rows[bad.uri])} scan rows" if bad.uri in scan_rows \
                else "in neither table"
            check.bad_missing.append((bad.kind, rel(bad.uri), detail))
            continue
        if len(held) > 1:
            check.bad_repeated.append((bad.kind, rel(bad.uri), f"{len(held)} rows: {held}"))
        if not all(bad.reason_ok(reason) for reason in held):
            check.bad_wrong_reason.append(
                (bad.kind, rel(bad.uri), f"reason {held}, expected one of {list(bad.keywords)}"))
        if bad.uri in scan_rows:
            check.bad_wrong_reason.append((bad.kind, rel(bad.uri), "also in scans"))

    good_uris = {g.uri for g in storm.good}
    bad_uris = {b.uri for b in storm.bad}
    for uri in scan_rows.keys() - good_uris - bad_uris:
        check.extra_scans.append(("not a good file", rel(uri), f"{len(scan_rows[uri])} rows"))
    for uri in reasons.keys() - bad_uris - good_uris:
        check.extra_quarantine.append(("not a bad file", rel(uri), f"{reasons[uri]}"))
    return check


def describe(entries: list[tuple[str, str, str]], examples: int = 2) -> str:
    """Entries grouped: `group: N files, e.g. path: detail`."""
    by_group: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for group, path, detail in entries:
        by_group[group].append((path, detail))
    lines = []
    for group, items in sorted(by_group.items()):
        shown = "; ".join(f"{path}: {detail}" for path, detail in items[:examples])
        lines.append(f"  [{group}] {len(items)} file(s), e.g. {shown}")
    return "\n".join(lines)


def reasons_by_kind(storm: Storm, quarantine: pa.Table) -> dict[str, Counter]:
    """Per bad kind, how often each reason (up to its first colon or parenthesis) was given."""
    held = defaultdict(list)
    for uri, reason in zip(quarantine.column("source_uri").to_pylist(),
                           quarantine.column("reason").to_pylist()):
        held[uri].append(re.split(r"[:(]", reason)[0].strip())
    counts: dict[str, Counter] = defaultdict(Counter)
    for bad in storm.bad:
        counts[bad.kind].update(held.get(bad.uri) or ["(no row)"])
    return counts


def read_tables(store) -> tuple[pa.Table, pa.Table]:
    """The columns `check_storm` needs of `scans` and `quarantine` (image bytes stay on disk)."""
    from schemas.tables import QUARANTINE, SCANS

    scans = store.table(SCANS).to_lance().to_table(
        columns=["source_uri", "frame", "width", "height", "image_id"])
    quarantine = store.table(QUARANTINE).to_lance().to_table(columns=["source_uri", "reason"])
    return scans, quarantine


# --- the benchmark -----------------------------------------------------------------------------

def _ingest(workdir: Path, root: Path, workers: int | None, image_size: int | None = None):
    from fusc_lib.ingest import IngestConfig
    from fusc_lib.preprocess import workdir_preprocess
    from fusc_lib.store import Workdir
    from jobs.ingest import run_ingest

    store = Workdir(str(workdir))
    options = {"ocr_engine": "none"} | ({"image_size": image_size} if image_size else {})
    preprocess = workdir_preprocess(store, options)
    summary = run_ingest(store, IngestConfig(paths=[str(root)], concurrency=workers), preprocess)
    return store, summary


def _rates(files: int, summary) -> str:
    """Files/s over the whole job and after its start-up (Ray Data plan, workers, first rows)."""
    after = max(summary.seconds - summary.startup_seconds, 1e-9)
    return (f"{files / summary.seconds:7.1f} files/s whole job ({files} files in "
            f"{summary.seconds:.1f} s), {files / after:7.1f} files/s after the "
            f"{summary.startup_seconds:.1f} s start-up")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bad", type=int, default=1000, help="Bad files in the storm.")
    parser.add_argument("--good", type=int, default=200, help="Good scans, with and without it.")
    parser.add_argument("--workers", type=int, default=None, help="Ingest workers (one per CPU).")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from jobs.ray_runtime import cluster_cpus, connect

    connect(None)  # Ray's own start-up is not the ingest's: paid here, once
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        started = time.monotonic()
        storm = build_storm(tmp / "storm", DATA, args.bad, args.good, args.seed)
        alone = build_storm(tmp / "good-only", DATA, 0, args.good, args.seed)
        kinds = defaultdict(int)
        for bad in storm.bad:
            kinds[bad.kind] += 1
        print(f"storm: {len(storm.bad)} bad files ({', '.join(f'{k} {n}' for k, n in kinds.items())})"
              f" + {len(storm.good)} good scans ({storm.expected_scan_rows} frames) in "
              f"{len(FOLDERS)} folders, built in {time.monotonic() - started:.1f} s; "
              f"{args.workers or cluster_cpus()} workers, {os.cpu_count()} CPUs, OCR off")

        crashed = 0
        try:
            store, summary = _ingest(tmp / "w-storm", storm.root, args.workers)
        except Exception as error:  # the one outcome the storm must never produce
            crashed = 1
            print(f"CRASH: the ingest job raised {type(error).__name__}: {error}")
            raise
        scans, quarantine = read_tables(store)
        check = check_storm(storm, scans, quarantine)
        files = len(storm.bad) + len(storm.good)
        print(f"with the bad files   : {_rates(files, summary)}")
        after = max(summary.seconds - summary.startup_seconds, 1e-9)
        print(f"  of which good scans: {len(storm.good) / summary.seconds:7.1f} /s whole job, "
              f"{len(storm.good) / after:7.1f} /s after start-up")
        print(f"  scans rows {scans.num_rows} (expected {storm.expected_scan_rows}), quarantine rows "
              f"{quarantine.num_rows} (expected {len(storm.bad)}), duplicate rows "
              f"{summary.duplicates}, job crashes {crashed}, "
              f"unexpected-error rows {check.crashes}")

        _, good_summary = _ingest(tmp / "w-good", alone.root, args.workers)
        print(f"good files only      : {_rates(len(alone.good), good_summary)}, "
              f"{good_summary.rows_ingested} scans rows")

        _, again = _ingest(tmp / "w-storm", storm.root, args.workers)
        after_scans, after_quarantine = read_tables(store)
        added = (after_scans.num_rows - scans.num_rows) + (after_quarantine.num_rows - quarantine.num_rows)
        print(f"rerun of the storm   : {again.files_already_done} of {again.files_found} files "
              f"already done, {again.rows_ingested} scans + {again.quarantined} quarantine rows "
              f"written, tables grew by {added} rows, {again.seconds:.1f} s")

        print("quarantine reasons by kind (up to the first colon or parenthesis):")
        for kind, reasons in reasons_by_kind(storm, quarantine).items():
            common = "; ".join(f"{reason!r} x{n}" for reason, n in reasons.most_common(3))
            print(f"  {kind:21}: {common}")
        problems = check.problems()
        if not problems:
            print("check: every good file ingested once, every bad file one quarantine row "
                  "with its reason, nothing else")
        for name, entries in problems.items():
            print(f"check FAILED, {name}: {len(entries)} file(s)\n{describe(entries)}")


if __name__ == "__main__":
    main()
