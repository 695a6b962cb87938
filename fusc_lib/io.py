"""Read one archived scan (PNG, JPEG, BMP, TIFF or DICOM bytes) into frames of uint8 pixels.

Everything that can go wrong with a file becomes a `BadInput` with a reason a data engineer can
act on, so the ingest job can quarantine the file and go on. The format comes from the file's
bytes, never its name or a content type: archives are full of misnamed and UID-named files.
Pixels are the upright ones a viewer shows (EXIF orientation here, DICOM LUTs in `dicom.py`).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, ImageSequence, UnidentifiedImageError

from fusc_lib.config import PreprocessConfig, default_of

DEFAULT_MAX_MEGAPIXELS = default_of(PreprocessConfig, "max_megapixels")
MIN_SCAN_SIDE = 32  # pixels; smaller files are icons, thumbnails or blank placeholders
Image.MAX_IMAGE_PIXELS = None  # we check the size ourselves, with a clearer reason

_PICTURE_SIGNATURES = {b"\x89PNG": "PNG", b"\xff\xd8": "JPEG", b"BM": "BMP", b"II*\x00": "TIFF",
                       b"MM\x00*": "TIFF", b"GIF8": "GIF"}
# Files an archive holds beside its scans, named for the reason their row gives.
_NOT_IMAGE_SIGNATURES = {b"%PDF": "PDF document", b"<?xml": "XML document",
                         b"PK\x03\x04": "ZIP archive (unpack it, then ingest the folder)",
                         b"{": "JSON or text file", b"\xef\xbb\xbf": "text file"}
_EXIF_ORIENTATION = 0x0112


def _signature(data: bytes) -> str | None:
    return next((fmt for magic, fmt in _PICTURE_SIGNATURES.items() if data.startswith(magic)), None)


class BadInput(Exception):
    """A file that cannot become a scan; `reason` is stored in the quarantine table."""

    def __init__(self, reason: str, stage: str = "decode"):
        super().__init__(reason)
        self.reason = reason
        self.stage = stage


@dataclass
class DecodedScan:
    """The frames of one file plus what its header says about where it came from.

    `frames` yields (frame index in the file, pixels) for the selected frames only; pixels are
    uint8, HxW (grey) or HxWx3 (RGB), upright as a viewer shows them. A file that holds fewer
    frames than it claims yields those it holds, then raises one `BadInput` for the rest.
    """

    frames: Iterator[tuple[int, np.ndarray]]
    n_frames: int  # frames the file claims to hold
    width: int  # of a frame, upright (after EXIF orientation)
    height: int
    tags: dict[str, str] = field(default_factory=dict)  # device, site, patient, study (raw)
    frames_skipped: int = 0  # left out by the frame limit (evenly spaced selection)
    notes: list[str] = field(default_factory=list)  # what was assumed or corrected, for the row


def content_id(data: bytes) -> str:
    """Stable id of a file's content: the same bytes give the same id on any machine."""
    return hashlib.sha256(data).hexdigest()


def frame_id(file_id: str, frame: int, n_frames: int) -> str:
    """Id of one frame: the file id for stills, `<file id>-f<frame>` for multi-frame files."""
    return file_id if n_frames == 1 else f"{file_id}-f{frame:04d}"


def scan_name(source_uri: str, frame: int) -> str:
    """How a scan is named to a person: its file's name, and its frame in a multi-frame file."""
    name = source_uri.rstrip("/").rsplit("/", 1)[-1]
    return f"{name} frame {frame}" if frame else name


def select_frames(n_frames: int, limit: int | None) -> list[int]:
    """Indices of the frames to keep: all, or `limit` evenly spaced ones (first and last kept).

    Adjacent frames of a cine loop are near copies, so a 1,500-frame loop is represented by a
    few frames spread over it instead of outweighing an archive of stills.
    """
    if limit is None or n_frames <= limit:
        return list(range(n_frames))
    return sorted({round(i) for i in np.linspace(0, n_frames - 1, limit)})


def decode(data: bytes, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
           frame_limit: int | None = None) -> DecodedScan:
    """Decode file bytes, the format decided by the bytes alone (never by a name or a type).

    DICOM with preamble and `DICM`, DICOM data sets without them, PNG, JPEG, BMP, TIFF and GIF
    are read; `frame_limit` keeps that many evenly spaced frames of a multi-frame file (None:
    all). Raises `BadInput` for empty, non-image, corrupt, truncated, too small or too large
    files, with a reason that names what the file is where that is known (PDF, XML, DICOMDIR…).
    """
    from fusc_lib.dicom import decode_dicom, looks_like_bare_dataset

    if not data:
        raise BadInput("empty file (0 bytes)")
    if data[128:132] == b"DICM" or (not _signature(data) and looks_like_bare_dataset(data)):
        return decode_dicom(data, max_megapixels, frame_limit)
    if not _signature(data):
        raise BadInput(f"not an image: {_non_image_kind(data)}")
    return _decode_picture(data, max_megapixels, frame_limit)


def _non_image_kind(data: bytes) -> str:
    head = data[:64].lstrip()
    known = next((kind for magic, kind in _NOT_IMAGE_SIGNATURES.items()
                  if head.startswith(magic)), None)
    if known:
        return known
    if head[:1] == b"<":
        return "HTML or XML document"
    try:
        data[:4096].decode("utf-8")
        return "text file"
    except UnicodeDecodeError:
        return "unrecognised file signature"


def check_size(width: int, height: int, n_frames: int, max_megapixels: float) -> None:
    """Raise `BadInput` for an image with no pixels, too small to be a scan, or a possible
    decompression bomb (over `max_megapixels`)."""
    megapixels = width * height / 1e6
    if megapixels > max_megapixels:
        raise BadInput(f"image too large ({width}x{height} = {megapixels:.0f} megapixels, "
                       f"limit {max_megapixels:g}): refused as a possible decompression bomb")
    if width <= 0 or height <= 0 or n_frames <= 0:
        raise BadInput(f"image has no pixels ({width}x{height}, {n_frames} frames)")
    if min(width, height) < MIN_SCAN_SIDE:
        raise BadInput(f"image too small to be a scan ({width}x{height}; a scan is at least "
                       f"{MIN_SCAN_SIDE} pixels a side)")


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Scale any integer or float pixel array into uint8 (min-max), leaving uint8 untouched."""
    if pixels.dtype == np.uint8:
        return pixels
    pixels = pixels.astype(np.float32)
    low, high = float(pixels.min()), float(pixels.max())
    scale = 255.0 / (high - low) if high > low else 0.0
    return ((pixels - low) * scale).round().astype(np.uint8)


# --- pictures: PNG, JPEG, BMP, TIFF, GIF -------------------------------------------------------

def _decode_picture(data: bytes, max_megapixels: float, frame_limit: int | None) -> DecodedScan:
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise BadInput(f"corrupt {_signature(data)} image: its header cannot be read") from None
    except Exception as error:  # PIL raises many types on broken headers
        raise BadInput(f"corrupt image header: {error}") from None
    n_frames = getattr(image, "n_frames", 1) if image.format in ("TIFF", "GIF") else 1
    check_size(image.width, image.height, n_frames, max_megapixels)  # same in any orientation
    orientation = _orientation(image)
    indices = select_frames(n_frames, frame_limit)
    first = _picture_pixels(image)  # decode now: a broken file fails here
    later = set(indices[1:])
    rest = ((i, _picture_pixels(frame)) for i, frame in enumerate(ImageSequence.Iterator(image))
            if i in later)
    notes = [f"EXIF orientation {orientation} applied"] if orientation not in (None, 1) else []
    return DecodedScan(_chain((0, first), rest), n_frames, first.shape[1], first.shape[0], {},
                       frames_skipped=n_frames - len(indices), notes=notes)


def _orientation(image: Image.Image) -> int | None:
    try:
        return image.getexif().get(_EXIF_ORIENTATION)
    except Exception:  # a broken EXIF block does not make the pixels unreadable
        return None


def _chain(first, rest: Iterator) -> Iterator:
    yield first
    yield from rest


def _picture_pixels(image: Image.Image) -> np.ndarray:
    """uint8 pixels of the current frame, upright (EXIF orientation applied; Pillow's TIFF
    reader may already have applied it, and then `exif_transpose` finds nothing to do)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # PIL only warns on some truncations
            image.load()
            image = ImageOps.exif_transpose(image)
    except Exception as error:
        raise BadInput(f"truncated or corrupt image data: {error}") from None
    if image.mode in ("L", "RGB"):
        return np.asarray(image)
    if image.mode in ("I;16", "I;16B", "I", "F"):
        return to_uint8(np.asarray(image))
    return np.asarray(image.convert("RGB"))  # palette, RGBA, CMYK, LA, 1-bit
