"""A storm of bad files through `fusc ingest`: real scans mixed with every kind of broken file.

`bench.badfiles.build_storm` writes the archive (nested folders, UID names, wrong extensions);
the ingest runs once on a real LanceDB in a temp dir with the suite's real Ray, then again.
Every good file must be ingested exactly once with its frames, every bad file must get exactly
one quarantine row whose reason names what is wrong with it, nothing else may appear, and the
rerun must add nothing.
"""

from __future__ import annotations

import io
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ImplicitVRLittleEndian

from bench.badfiles import (
    BAD_KINDS,
    BOMB_SIZE,
    GOOD_VARIANTS,
    MIN_SIDE,
    Storm,
    build_storm,
    check_storm,
    describe,
    read_tables,
)
from fusc_lib.ingest import IngestConfig
from fusc_lib.io import content_id
from fusc_lib.preprocess import workdir_preprocess
from fusc_lib.store import Workdir
from jobs.ingest import IngestSummary, run_ingest

N_BAD, N_GOOD, SEED = 150, 40, 7


@dataclass
class Outcome:
    storm: Storm
    first: IngestSummary
    scans: pa.Table
    quarantine: pa.Table
    second: IngestSummary
    rows_after_rerun: tuple[int, int]


def _ingest(workdir: Path, root: Path) -> tuple[Workdir, IngestSummary]:
    store = Workdir(str(workdir))
    preprocess = workdir_preprocess(store, {"ocr_engine": "none", "image_size": 128})
    return store, run_ingest(store, IngestConfig(paths=[str(root)]), preprocess)


@pytest.fixture(scope="module")
def storm(tmp_path_factory, data_dir) -> Storm:
    return build_storm(tmp_path_factory.mktemp("storm") / "archive", data_dir, N_BAD, N_GOOD, SEED)


@pytest.fixture(scope="module")
def outcome(ray_session, storm, tmp_path_factory) -> Outcome:
    """The storm ingested (a job that raises fails every test here), then ingested again."""
    workdir = tmp_path_factory.mktemp("work")
    store, first = _ingest(workdir, storm.root)
    scans, quarantine = read_tables(store)
    _, second = _ingest(workdir, storm.root)
    after = read_tables(store)
    return Outcome(storm, first, scans, quarantine, second, (after[0].num_rows, after[1].num_rows))


def test_the_storm_holds_what_it_claims(storm):
    """The archive itself, checked without FUSC: every kind, every variant, each bad for real."""
    assert len(storm.bad) == N_BAD and len(storm.good) == N_GOOD
    assert set(Counter(b.kind for b in storm.bad)) == set(BAD_KINDS)
    assert {(g.fmt, g.naming) for g in storm.good} == {(f, n) for f, _, n in GOOD_VARIANTS}
    assert len({content_id(g.path.read_bytes()) for g in storm.good}) == N_GOOD  # no duplicates
    assert any(" " in str(g.path.parent) and "[" in str(g.path.parent) for g in storm.good + storm.bad)
    for bad in storm.bad:
        path = bad.path
        if bad.kind == "broken symlink":
            assert path.is_symlink() and not path.exists()
            continue
        data = path.read_bytes()
        if bad.kind == "zero-byte":
            assert data == b""
        elif bad.kind in ("truncated PNG", "truncated JPEG"):
            with pytest.raises(Exception):  # noqa: B017 - PIL raises several types
                Image.open(io.BytesIO(data)).load()
        elif bad.kind == "truncated DICOM":
            dataset = pydicom.dcmread(io.BytesIO(data))
            assert len(dataset.PixelData) < dataset.Rows * dataset.Columns
        elif bad.kind == "DICOM without pixels":
            assert "PixelData" not in pydicom.dcmread(io.BytesIO(data))
        elif bad.kind == "decompression bomb":
            assert Image.open(io.BytesIO(data)).size == BOMB_SIZE and len(data) < 200_000
        elif bad.kind == "too small":
            assert max(Image.open(io.BytesIO(data)).size) < MIN_SIDE
    for good in storm.good:
        data = good.path.read_bytes()
        if good.fmt.startswith("dicom"):
            preamble = good.fmt != "dicom-no-preamble"
            assert (data[128:132] == b"DICM") == preamble
            dataset = pydicom.dcmread(io.BytesIO(data), force=not preamble)
            if not preamble:
                assert not dataset.file_meta
                dataset.file_meta = FileMetaDataset()
                dataset.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
            pixels = dataset.pixel_array
            assert pixels.shape[-2:] == (good.height, good.width)
            assert (pixels.shape[0] if pixels.ndim == 3 else 1) == good.frames
        else:
            image = Image.open(io.BytesIO(data))
            assert image.size == (good.width, good.height)
            assert getattr(image, "n_frames", 1) == good.frames
            assert np.asarray(image).size


def test_no_crash_and_summary_counts_match_the_tables(outcome):
    assert outcome.first.rows_ingested == outcome.scans.num_rows
    assert outcome.first.quarantined == outcome.quarantine.num_rows
    crashes = [r for r in outcome.quarantine.column("reason").to_pylist()
               if r.lower().startswith("unexpected")]
    assert not crashes, crashes[:5]


def test_every_good_file_is_ingested_exactly_once_with_its_frames(outcome):
    check = check_storm(outcome.storm, outcome.scans, outcome.quarantine)
    problems = check.good_missing + check.good_wrong
    assert not problems, f"{len(problems)} good files wrong:\n{describe(problems)}"
    assert outcome.scans.num_rows == outcome.storm.expected_scan_rows
    assert len(set(outcome.scans.column("image_id").to_pylist())) == outcome.scans.num_rows


def test_every_bad_file_has_one_quarantine_row_with_its_reason(outcome):
    check = check_storm(outcome.storm, outcome.scans, outcome.quarantine)
    for name in ("bad_missing", "bad_repeated", "bad_wrong_reason"):
        entries = getattr(check, name)
        assert not entries, f"{name}: {len(entries)} bad files:\n{describe(entries)}"


def test_nothing_else_is_in_either_table(outcome):
    check = check_storm(outcome.storm, outcome.scans, outcome.quarantine)
    extra = check.extra_scans + check.extra_quarantine
    assert not extra, f"rows for files that are neither good nor bad:\n{describe(extra)}"
    uris = set(outcome.scans.column("source_uri").to_pylist())
    uris |= set(outcome.quarantine.column("source_uri").to_pylist())
    assert all(os.path.isabs(u) for u in uris)
    assert outcome.first.duplicates == 0  # every good file's bytes are its own


def test_a_rerun_adds_nothing(outcome):
    assert outcome.second.rows_ingested == outcome.second.quarantined == 0
    assert outcome.rows_after_rerun == (outcome.scans.num_rows, outcome.quarantine.num_rows)
    assert outcome.second.files_found == outcome.first.files_found
    assert outcome.second.files_already_done == outcome.second.files_found


def test_the_check_catches_every_kind_of_miss(storm):
    """`check_storm` on hand-made tables: right ones pass, each kind of mistake is caught."""
    scans = pa.table({
        "source_uri": [g.uri for g in storm.good for _ in range(g.frames)],
        "frame": [f for g in storm.good for f in range(g.frames)],
        "width": [g.width for g in storm.good for _ in range(g.frames)],
        "height": [g.height for g in storm.good for _ in range(g.frames)]})
    quarantine = pa.table({"source_uri": [b.uri for b in storm.bad],
                           "reason": [f"{b.keywords[0].upper()}: details" for b in storm.bad]})
    assert not check_storm(storm, scans, quarantine).problems()

    first_good, first_bad = storm.good[0], storm.bad[0]
    missing_good = scans.filter(pc.not_equal(scans.column("source_uri"), first_good.uri))
    assert check_storm(storm, missing_good, quarantine).good_missing
    assert check_storm(storm, pa.concat_tables([scans, scans.slice(0, 1)]), quarantine).good_wrong
    assert check_storm(storm, scans, quarantine.slice(1)).bad_missing
    assert check_storm(storm, scans, pa.concat_tables([quarantine, quarantine.slice(0, 1)])
                       ).bad_repeated
    wrong = quarantine.set_column(1, "reason", pa.array(["some other reason"] * len(storm.bad)))
    assert len(check_storm(storm, scans, wrong).bad_wrong_reason) == len(storm.bad)
    extra = pa.table({"source_uri": [str(storm.root / "stray.png")], "reason": ["x"]})
    assert check_storm(storm, scans, pa.concat_tables([quarantine, extra])).extra_quarantine
    assert first_bad.reason_ok("Details: " + first_bad.keywords[-1].title())
