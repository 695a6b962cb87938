"""Files as hospital archives hold them: each kind built here from real images, plus the handed
cases of ../shared/field-cases, read by content and stored as a viewer shows them."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import apply_color_lut
from pydicom.uid import (
    ComprehensiveSRStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MediaStorageDirectoryStorage,
)

from fusc_lib.ingest import IngestConfig
from fusc_lib.io import BadInput, decode, select_frames
from fusc_lib.preprocess import PreprocessConfig, Preprocessor, decode_png, to_gray
from fusc_lib.sources import SourceError, gather_sources, list_location
from fusc_lib.store import Workdir
from jobs.ingest import run_ingest
from schemas.tables import DUPLICATES, QUARANTINE, SCANS
from tests.dicom_files import make_dicom

FIELD_CASES = Path(__file__).resolve().parents[2] / "shared" / "field-cases"
UID_NAME = "1.2.840.113619.2.55.3.604688119.971.1"  # the last component looks like an extension


@pytest.fixture(scope="module")
def gray(data_dir) -> np.ndarray:
    path = sorted((data_dir / "african-planes" / "images").glob("*.png"))[0]
    return np.asarray(Image.open(path).convert("L"))


def frames_of(data: bytes, **options) -> list[np.ndarray]:
    return [pixels for _, pixels in decode(data, **options).frames]


def encode(pixels: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def bare_dataset(pixels: np.ndarray, implicit: bool = True) -> bytes:
    """A DICOM data set as older devices write it: no preamble, no file meta."""
    dataset = pydicom.dcmread(io.BytesIO(make_dicom(pixels)))
    del dataset.file_meta
    buffer = io.BytesIO()
    dataset.save_as(buffer, implicit_vr=implicit, little_endian=True, enforce_file_format=False)
    return buffer.getvalue()


def palette_dicom(indices: np.ndarray, lut: np.ndarray) -> bytes:
    """PALETTE COLOR: pixel values index the same 8-bit lookup table for red, green and blue."""
    dataset = pydicom.dcmread(io.BytesIO(make_dicom(indices)))
    dataset.PhotometricInterpretation = "PALETTE COLOR"
    for colour in ("Red", "Green", "Blue"):
        setattr(dataset, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 8])
        dataset[f"{colour}PaletteColorLookupTableDescriptor"].VR = "US"
        setattr(dataset, f"{colour}PaletteColorLookupTableData", lut.astype(np.uint8).tobytes())
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def with_photometric(data: bytes, **elements) -> bytes:
    dataset = pydicom.dcmread(io.BytesIO(data))
    for keyword, value in elements.items():
        setattr(dataset, keyword, value)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# --- 1. format by content -----------------------------------------------------------------------

@pytest.mark.parametrize("implicit, syntax", [(True, ImplicitVRLittleEndian),
                                              (False, ExplicitVRLittleEndian)])
def test_dicom_without_preamble_or_file_meta_is_read_and_says_what_it_assumed(gray, implicit,
                                                                               syntax):
    scan = decode(bare_dataset(gray, implicit))
    ((index, pixels),) = list(scan.frames)
    assert index == 0 and np.array_equal(pixels, gray)
    assert scan.tags["device"] == "GE Healthcare Voluson E10"
    assert f"transfer syntax assumed {syntax.name}" in "; ".join(scan.notes)


def _non_image_dicom(sop_class) -> bytes:
    dataset = pydicom.dcmread(io.BytesIO(make_dicom(np.zeros((40, 40), np.uint8),
                                                    with_pixels=False)))
    dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID = sop_class
    if sop_class == MediaStorageDirectoryStorage:
        dataset.DirectoryRecordSequence = []
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize("data, reason", [
    (b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n", "not an image: PDF document"),
    (b'<?xml version="1.0"?><report><view>4CH</view></report>', "not an image: XML document"),
    ("Échographie T2, rapport\n".encode() * 10, "not an image: text file"),
    (b"PK\x03\x04" + bytes(60), "not an image: ZIP archive"),
    (bytes(range(7, 256)) * 20, "not an image: unrecognised file signature"),
])
def test_files_that_are_not_images_are_named_in_the_reason(data, reason):
    with pytest.raises(BadInput, match=reason):
        decode(data)


@pytest.mark.parametrize("sop_class, reason", [
    (MediaStorageDirectoryStorage, "not an image: DICOMDIR"),
    (ComprehensiveSRStorage, "not an image: DICOM Comprehensive SR Storage without pixel data"),
])
def test_dicom_objects_that_are_not_images_are_named(sop_class, reason):
    with pytest.raises(BadInput, match=reason):
        decode(_non_image_dicom(sop_class))


# --- 2. pixels as a viewer shows them -----------------------------------------------------------

def test_palette_colour_goes_through_its_lookup_table(gray):
    lut = 255 - np.arange(256)  # a palette that inverts: raw indices would look like a negative
    (rgb,) = frames_of(palette_dicom(gray, lut))
    assert rgb.shape == (*gray.shape, 3)
    assert np.array_equal(to_gray(rgb), 255 - gray)


def test_window_and_rescale_are_applied_to_wide_monochrome(gray):
    """16-bit grey with a VOI window: what lies outside the window is black or white."""
    wide = gray.astype(np.uint16) * 16  # 12 bits stored
    data = with_photometric(make_dicom(gray), BitsAllocated=16, BitsStored=12, HighBit=11,
                            PixelData=wide.tobytes(), WindowCenter=1024, WindowWidth=1024)
    (shown,) = frames_of(data)
    assert shown.dtype == np.uint8
    assert (shown[wide <= 512] == shown.min()).all() and (shown[wide >= 1536] == 255).all()
    inside = (wide > 600) & (wide < 1450)
    assert np.corrcoef(shown[inside].astype(float), wide[inside])[0, 1] > 0.99


def test_unsupported_photometric_interpretation_is_refused_with_its_name(gray):
    rgb = np.stack([gray] * 3, axis=-1)
    with pytest.raises(BadInput, match="'HSV' is not supported"):
        decode(with_photometric(make_dicom(rgb, "RGB"), PhotometricInterpretation="HSV"))


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_exif_orientation_is_applied_before_anything_else(gray, fmt):
    """Orientation 6: the stored pixels are the upright image turned 90° anticlockwise."""
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = np.ascontiguousarray(np.rot90(gray))
    scan = decode(encode(stored, fmt, exif=exif.tobytes()))
    ((_, pixels),) = list(scan.frames)
    assert (scan.width, scan.height) == (gray.shape[1], gray.shape[0]) and pixels.shape == gray.shape
    assert np.abs(pixels.astype(int) - gray).mean() < (3 if fmt == "JPEG" else 1e-9)
    assert scan.notes == ["EXIF orientation 6 applied"]


# --- 5. cine loops and 6. tiny images -------------------------------------------------------------

def test_cine_shorter_than_it_claims_keeps_its_frames_then_says_what_is_missing(gray):
    loop = np.stack([gray, 255 - gray, gray // 2, gray // 3, gray // 4])
    dataset = pydicom.dcmread(io.BytesIO(make_dicom(loop)))
    dataset.PixelData = dataset.PixelData[: 3 * gray.size]  # a copy cut short after 3 frames
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    scan = decode(buffer.getvalue())
    kept = []
    with pytest.raises(BadInput, match="holds 3 of the 5 frames it claims"):
        for index, pixels in scan.frames:
            kept.append(index)
            assert np.array_equal(pixels, loop[index])
    assert kept == [0, 1, 2]


def test_frame_limit_keeps_evenly_spaced_frames(gray):
    assert select_frames(1500, 16)[:2] == [0, 100] and select_frames(1500, 16)[-1] == 1499
    assert len(select_frames(1500, 16)) == 16 and select_frames(5, 16) == [0, 1, 2, 3, 4]
    loop = np.stack([(gray // (i + 1)).astype(np.uint8) for i in range(10)])
    scan = decode(make_dicom(loop), frame_limit=4)
    frames = list(scan.frames)
    assert [i for i, _ in frames] == [0, 3, 6, 9] and scan.frames_skipped == 6
    assert all(np.array_equal(pixels, loop[i]) for i, pixels in frames)


@pytest.mark.parametrize("side, accepted", [(20, False), (31, False), (32, True)])
def test_images_too_small_to_be_a_scan_are_refused(gray, side, accepted):
    data = encode(np.ascontiguousarray(gray[:side, :side]), "PNG")
    if accepted:
        assert frames_of(data)[0].shape == (side, side)
    else:
        with pytest.raises(BadInput, match="too small to be a scan"):
            decode(data)


# --- 3. paths taken literally -----------------------------------------------------------------

@pytest.mark.parametrize("name", ["Patient [2024]", "scan 50% #3", "Échographie*?"])
def test_a_path_that_exists_is_taken_literally(data_dir, tmp_path, name):
    folder = tmp_path / name
    folder.mkdir()
    shutil.copy(sorted((data_dir / "hc18" / "images").glob("*.png"))[0], folder / "scan.png")
    (tmp_path / "decoy.png").write_bytes(b"")  # what `[2024]` would match as a pattern: nothing
    assert [s.uri for s in list_location(str(folder))] == [str(folder / "scan.png")]
    assert [s.uri for s in list_location(str(folder / "scan.png"))] == [str(folder / "scan.png")]


def test_a_glob_is_a_pattern_only_when_no_such_path_exists(tmp_path):
    for name in ("a.png", "b.png", "c.jpg"):
        (tmp_path / name).write_bytes(b"x")
    assert [Path(s.uri).name for s in list_location(str(tmp_path / "*.png"))] == ["a.png", "b.png"]


def test_every_file_in_a_folder_is_a_candidate_and_links_are_kept(tmp_path):
    folder = tmp_path / "export"
    (folder / "deep").mkdir(parents=True)
    names = [UID_NAME, "IM000001", "SCAN.DCM", "scan.png", ".hidden", "DICOMDIR", "notes.txt"]
    for name in names:
        (folder / "deep" / name).write_bytes(b"x")
    os.symlink(tmp_path / "gone.png", folder / "broken.png")
    os.symlink(folder / "deep", folder / "loop")  # a link back into the tree is walked once
    found = {Path(s.uri).name for s in list_location(str(folder))}
    assert found == {*names, "broken.png"}


def test_an_input_that_yields_no_file_is_an_error_naming_it(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "a.png").write_bytes(b"x")
    with pytest.raises(SourceError, match=f"no files found in {tmp_path / 'empty'}"):
        gather_sources([str(tmp_path / "full"), str(tmp_path / "empty")])
    with pytest.raises(SourceError, match="no files found in .*nowhere"):
        gather_sources([str(tmp_path / "nowhere" / "*.png")])
    with pytest.raises(SourceError, match="path not found"):
        gather_sources([str(tmp_path / "nowhere")])


# --- the whole ingest on an archive folder ----------------------------------------------------

def _ingest(workdir: Path, paths: list[str], **options):
    store = Workdir(str(workdir))
    preprocess = PreprocessConfig(ocr_engine="none", image_size=128)
    store.write_json(preprocess.model_dump(), "preprocess.json")
    return store, run_ingest(store, IngestConfig(paths=paths, **options), preprocess)


@pytest.fixture(scope="module")
def archive(tmp_path_factory, data_dir, gray) -> Path:
    """A PACS-like export: UID names, no or wrong extensions, copies, a cine loop, non-images."""
    root = tmp_path_factory.mktemp("pacs") / "Study [2024-03]"
    series, other = root / "SERIES 1", root / "other study"
    series.mkdir(parents=True), other.mkdir()
    images = sorted((data_dir / "african-planes" / "images").glob("*.png"))
    pixels = [np.asarray(Image.open(p).convert("L")) for p in images[1:6]]
    (series / UID_NAME).write_bytes(make_dicom(pixels[0]))
    (series / "IM000002").write_bytes(bare_dataset(pixels[1]))
    (series / "scan.dcm").write_bytes(encode(pixels[2], "JPEG"))  # a JPEG named .dcm
    (series / "SCAN.PNG").write_bytes(make_dicom(pixels[3]))  # a DICOM named .PNG
    (series / "cine").write_bytes(make_dicom(np.stack([pixels[4] // (i + 1) for i in range(9)])))
    cut = pydicom.dcmread(io.BytesIO(make_dicom(np.stack([pixels[4] // (i + 2) for i in range(6)]))))
    cut.PixelData = cut.PixelData[: 4 * pixels[4].size]  # claims 6 frames, holds 4
    cut.save_as(series / "cine-cut", enforce_file_format=True)
    shutil.copy(images[0], series / "first.png")
    shutil.copy(images[0], other / "first.png")  # byte-identical copy in another study
    (series / "DICOMDIR").write_bytes(_non_image_dicom(MediaStorageDirectoryStorage))
    (series / "report.pdf").write_bytes(b"%PDF-1.4\n%%EOF\n")
    (series / "icon.png").write_bytes(encode(np.ascontiguousarray(gray[:16, :16]), "PNG"))
    os.symlink(root / "moved-away.png", series / "link.png")
    return root


def test_pacs_export_ingests_every_scan_and_quarantines_the_rest(ray_session, archive, tmp_path):
    store, summary = _ingest(tmp_path / "w", [str(archive)], frames=3)
    scans = store.table(SCANS).to_arrow()
    by_name = {}
    for uri in scans.column("source_uri").to_pylist():
        by_name[Path(uri).name] = by_name.get(Path(uri).name, 0) + 1
    assert by_name == {UID_NAME: 1, "IM000002": 1, "scan.dcm": 1, "SCAN.PNG": 1, "cine": 3,
                       "cine-cut": 2, "first.png": 1}  # cine-cut: frames 0 and 2 of 0, 2, 5
    cine = scans.filter(pc.equal(scans.column("source_uri"), str(archive / "SERIES 1" / "cine")))
    assert sorted(cine.column("frame").to_pylist()) == [0, 4, 8] and summary.frames_skipped == 9
    notes = dict(zip(scans.column("source_uri").to_pylist(), scans.column("decode_notes").to_pylist()))
    assert "Implicit VR Little Endian" in notes[str(archive / "SERIES 1" / "IM000002")]
    quarantine = store.table(QUARANTINE).to_arrow()
    reasons = {Path(u).name: r for u, r in zip(quarantine.column("source_uri").to_pylist(),
                                                quarantine.column("reason").to_pylist())}
    assert set(reasons) == {"DICOMDIR", "report.pdf", "icon.png", "link.png", "cine-cut"}
    assert "holds 4 of the 6 frames it claims: frame 5 is missing" in reasons["cine-cut"]
    assert "DICOMDIR" in reasons["DICOMDIR"] and "PDF" in reasons["report.pdf"]
    assert "too small" in reasons["icon.png"] and "broken symbolic link" in reasons["link.png"]
    copies = store.table(DUPLICATES).to_arrow()  # whichever copy ingest met second
    (copy,) = copies.column("source_uri").to_pylist()
    assert Path(copy).name == "first.png" and copy not in scans.column("source_uri").to_pylist()
    assert summary.duplicates == 1
    _, again = _ingest(tmp_path / "w", [str(archive)], frames=3)
    assert (again.rows_ingested, again.quarantined, again.duplicates) == (0, 0, 0)
    assert again.files_already_done == summary.files_found == 12


# --- the handed cases of ../shared/field-cases --------------------------------------------------

def _stored(store: Workdir, path: Path) -> np.ndarray:
    scans = store.table(SCANS).to_arrow()
    (image,) = scans.filter(pc.equal(scans.column("source_uri"), str(path))).column(
        "image").to_pylist()
    return decode_png(image)


def _reference(pixels: np.ndarray) -> np.ndarray:
    """What ingest stores for a frame rendered independently of `fusc_lib.io`."""
    return Preprocessor(PreprocessConfig(ocr_engine="none", image_size=128)).prepare(
        [pixels])[0].pixels


@pytest.fixture(scope="module")
def field_workdir(ray_session, tmp_path_factory) -> Workdir:
    store, summary = _ingest(tmp_path_factory.mktemp("field") / "w", [str(FIELD_CASES)])
    return store


def test_field_cases_uid_named_and_bare_dicom_are_ingested(field_workdir):
    for name in ("1.2.826.0.1.3680043.2.1125.1.99.2", "IM000002.dcm"):
        path = FIELD_CASES / "uid-named" / name
        reference = pydicom.dcmread(path, force=True)
        reference.file_meta.TransferSyntaxUID = reference.file_meta.get(
            "TransferSyntaxUID", ImplicitVRLittleEndian)
        assert np.array_equal(_stored(field_workdir, path), _reference(reference.pixel_array))


def test_field_case_palette_is_stored_as_the_viewer_shows_it(field_workdir):
    path = FIELD_CASES / "palette" / "fetal_palette.dcm"
    dataset = pydicom.dcmread(path)
    rgb = apply_color_lut(dataset.pixel_array, dataset)  # 16-bit entries: 65535 is white
    shown = _reference(to_gray(np.rint(rgb / 65535 * 255).astype(np.uint8)))
    stored = _stored(field_workdir, path)
    assert np.abs(stored.astype(int) - shown).mean() < 1
    assert np.abs(stored.astype(int) - _reference(dataset.pixel_array)).mean() > 5  # not indices


def test_field_case_exif_pair_is_stored_upright_and_alike(field_workdir):
    scans = field_workdir.table(SCANS).to_arrow()
    exif = scans.filter(pc.match_substring(scans.column("source_uri"), "/exif/"))
    assert exif.num_rows == 2
    assert set(zip(exif.column("width").to_pylist(), exif.column("height").to_pylist())) == {
        (800, 540)}
    rotated = FIELD_CASES / "exif" / "exif6_rot90.jpg"
    upright = np.asarray(Image.open(rotated).convert("L").transpose(Image.Transpose.ROTATE_270))
    assert np.array_equal(_stored(field_workdir, rotated), _reference(upright))


def test_field_case_bracketed_folder_and_readme_are_not_lost(field_workdir, tmp_path):
    scans = field_workdir.table(SCANS).to_arrow()
    assert str(FIELD_CASES / "Patient [2024]" / "scan.png") in scans.column("source_uri").to_pylist()
    quarantine = field_workdir.table(QUARANTINE).to_arrow()
    assert quarantine.column("source_uri").to_pylist() == [str(FIELD_CASES / "README.md")]
    assert "not an image: text file" in quarantine.column("reason")[0].as_py()
    store, summary = _ingest(tmp_path / "w", [str(FIELD_CASES / "Patient [2024]")])
    assert summary.rows_ingested == 1
