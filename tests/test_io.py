"""Decoding real scans in every supported format, and refusing every kind of bad file clearly."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from pydicom.uid import RLELossless

from fusc_lib.io import BadInput, content_id, decode, frame_id
from tests.dicom_files import make_dicom


@pytest.fixture(scope="module")
def real_gray(data_dir) -> np.ndarray:
    return np.asarray(Image.open(data_dir / "hc18" / "images" / "000_HC.png").convert("L"))


@pytest.fixture(scope="module")
def real_rgb(data_dir) -> np.ndarray:
    path = data_dir / "african-planes" / "images" / "patient002_EGY_plane0.png"
    return np.asarray(Image.open(path).convert("RGB"))


def encode(pixels: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def frames_of(data: bytes) -> list[np.ndarray]:
    return [pixels for _, pixels in decode(data).frames]


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF"])
def test_lossless_formats_round_trip(real_gray, fmt):
    (frame,) = frames_of(encode(real_gray, fmt))
    assert np.array_equal(frame, real_gray)


def test_jpeg_decodes_close_to_original(real_rgb):
    (frame,) = frames_of(encode(real_rgb, "JPEG"))
    assert frame.shape == real_rgb.shape
    assert np.abs(frame.astype(int) - real_rgb).mean() < 3


def test_sixteen_bit_png_is_scaled_to_uint8(real_gray):
    wide = real_gray.astype(np.uint16) * 256
    (frame,) = frames_of(encode(wide, "PNG"))
    assert frame.dtype == np.uint8 and frame.max() == 255
    assert np.corrcoef(frame.ravel(), real_gray.ravel())[0, 1] > 0.99


def test_multipage_tiff_gives_one_frame_per_page(real_gray):
    buffer = io.BytesIO()
    pages = [Image.fromarray(real_gray), Image.fromarray(255 - real_gray)]
    pages[0].save(buffer, format="TIFF", save_all=True, append_images=pages[1:])
    scan = decode(buffer.getvalue())
    frames = [pixels for _, pixels in scan.frames]
    assert scan.n_frames == 2 and np.array_equal(frames[1], 255 - real_gray)


def test_content_id_is_stable_and_frame_ids_are_distinct():
    assert content_id(b"abc") == content_id(b"abc") != content_id(b"abd")
    assert frame_id("x", 0, 1) == "x"
    assert frame_id("x", 0, 3) != frame_id("x", 1, 3)


@pytest.mark.parametrize("data, reason", [
    (b"", "empty file"),
    (b"patient notes, not an image\n" * 20, "not an image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "corrupt"),
])
def test_bad_bytes_are_refused_with_a_reason(data, reason):
    with pytest.raises(BadInput, match=reason):
        decode(data)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_images_are_refused(real_gray, fmt):
    data = encode(real_gray, fmt)
    with pytest.raises(BadInput, match="truncated|corrupt"):
        frames_of(data[: len(data) // 2])


def test_decompression_bomb_is_refused_before_decoding():
    bomb = Image.new("L", (12_000, 9_000))  # 108 megapixels, a few hundred kB as PNG
    buffer = io.BytesIO()
    bomb.save(buffer, format="PNG")
    with pytest.raises(BadInput, match="too large"):
        decode(buffer.getvalue())


def test_dicom_single_frame_with_tags(real_gray):
    scan = decode(make_dicom(real_gray))
    ((_, frame),) = list(scan.frames)
    assert np.array_equal(frame, real_gray)
    assert scan.tags["device"] == "GE Healthcare Voluson E10"
    assert scan.tags["site"] == "St Example Hospital"
    assert scan.tags["patient"] == "PID-12345"  # raw here; the ingest hashes it


def test_dicom_multi_frame_gives_every_frame(real_gray):
    cine = np.stack([real_gray, 255 - real_gray, real_gray // 2])
    scan = decode(make_dicom(cine))
    frames = [pixels for _, pixels in scan.frames]
    assert scan.n_frames == 3 and len(frames) == 3
    assert np.array_equal(frames[1], 255 - real_gray) and np.array_equal(frames[2], real_gray // 2)


def test_dicom_rgb_and_monochrome1(real_rgb, real_gray):
    (rgb,) = frames_of(make_dicom(real_rgb, "RGB"))
    assert np.array_equal(rgb, real_rgb)
    (inverted,) = frames_of(make_dicom(255 - real_gray, "MONOCHROME1"))
    assert np.array_equal(inverted, real_gray)  # MONOCHROME1: high values are dark


def test_dicom_rle_compressed(real_gray):
    (frame,) = frames_of(make_dicom(real_gray, syntax=RLELossless))
    assert np.array_equal(frame, real_gray)


def test_dicom_without_pixels_and_fake_dicom_are_refused(real_gray):
    with pytest.raises(BadInput, match="without pixel data"):
        decode(make_dicom(real_gray, with_pixels=False))
    with pytest.raises(BadInput, match="not an image: text file"):
        decode(b"this is a text file named .dcm, not DICOM")
