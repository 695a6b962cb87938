"""Read one archived scan (PNG, JPEG, BMP, TIFF or DICOM bytes) into frames of uint8 pixels.

Everything that can go wrong with a file becomes a `BadInput` with a reason a data engineer can
act on, so the ingest job can quarantine the file and go on. The format comes from the file's
signature, not its name: archives are full of misnamed files.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageSequence, UnidentifiedImageError

DEFAULT_MAX_MEGAPIXELS = 100.0
Image.MAX_IMAGE_PIXELS = None  # we check the size ourselves, with a clearer reason

_DICOM_NAMES = (".dcm", ".dicom", ".dic")
_SIGNATURES = {b"\x89PNG": "PNG", b"\xff\xd8": "JPEG", b"BM": "BMP", b"II*\x00": "TIFF",
               b"MM\x00*": "TIFF"}


def _signature(data: bytes) -> str | None:
    return next((fmt for magic, fmt in _SIGNATURES.items() if data.startswith(magic)), None)


class BadInput(Exception):
    """A file that cannot become a scan; `reason` is stored in the quarantine table."""

    def __init__(self, reason: str, stage: str = "decode"):
        super().__init__(reason)
        self.reason = reason
        self.stage = stage


@dataclass
class DecodedScan:
    """The frames of one file plus what its header says about where it came from."""

    frames: Iterator[np.ndarray]  # uint8, HxW (grey) or HxWx3 (RGB); one per frame
    n_frames: int
    width: int
    height: int
    tags: dict[str, str] = field(default_factory=dict)  # device, site, patient, study (raw)


def content_id(data: bytes) -> str:
    """Stable id of a file's content: the same bytes give the same id on any machine."""
    return hashlib.sha256(data).hexdigest()


def frame_id(file_id: str, frame: int, n_frames: int) -> str:
    """Id of one frame: the file id for stills, `<file id>-f<frame>` for multi-frame files."""
    return file_id if n_frames == 1 else f"{file_id}-f{frame:04d}"


def decode(data: bytes, name: str = "", max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> DecodedScan:
    """Decode file bytes; raise `BadInput` for empty, non-image, corrupt, truncated or giant files."""
    if not data:
        raise BadInput("empty file (0 bytes)")
    if data[128:132] == b"DICM" or name.lower().endswith(_DICOM_NAMES):
        return _decode_dicom(data, max_megapixels)
    return _decode_picture(data, max_megapixels)


def _check_size(width: int, height: int, n_frames: int, max_megapixels: float) -> None:
    megapixels = width * height / 1e6
    if megapixels > max_megapixels:
        raise BadInput(f"image too large ({width}x{height} = {megapixels:.0f} megapixels, "
                       f"limit {max_megapixels:g}): refused as a possible decompression bomb")
    if width <= 0 or height <= 0 or n_frames <= 0:
        raise BadInput(f"image has no pixels ({width}x{height}, {n_frames} frames)")


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Scale any integer or float pixel array into uint8 (min-max), leaving uint8 untouched."""
    if pixels.dtype == np.uint8:
        return pixels
    pixels = pixels.astype(np.float32)
    low, high = float(pixels.min()), float(pixels.max())
    scale = 255.0 / (high - low) if high > low else 0.0
    return ((pixels - low) * scale).round().astype(np.uint8)


# --- pictures: PNG, JPEG, BMP, TIFF -------------------------------------------------------------

def _decode_picture(data: bytes, max_megapixels: float) -> DecodedScan:
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        known = _signature(data)
        if known:
            raise BadInput(f"corrupt {known} image: its header cannot be read") from None
        raise BadInput("not an image: unrecognised file signature") from None
    except Exception as error:  # PIL raises many types on broken headers
        raise BadInput(f"corrupt image header: {error}") from None
    n_frames = getattr(image, "n_frames", 1) if image.format == "TIFF" else 1
    _check_size(image.width, image.height, n_frames, max_megapixels)
    first = _picture_pixels(image)  # decode frame 0 now so a broken file fails here, not later
    rest = (_picture_pixels(f) for i, f in enumerate(ImageSequence.Iterator(image)) if i > 0)
    frames = _chain(first, rest) if n_frames > 1 else iter([first])
    return DecodedScan(frames, n_frames, image.width, image.height, {})


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest


def _picture_pixels(image: Image.Image) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # PIL only warns on some truncations
            image.load()
    except Exception as error:
        raise BadInput(f"truncated or corrupt image data: {error}") from None
    if image.mode in ("L", "RGB"):
        return np.asarray(image)
    if image.mode in ("I;16", "I;16B", "I", "F"):
        return to_uint8(np.asarray(image))
    return np.asarray(image.convert("RGB"))  # palette, RGBA, CMYK, LA, 1-bit


# --- DICOM -------------------------------------------------------------------------------------

def _decode_dicom(data: bytes, max_megapixels: float) -> DecodedScan:
    import pydicom

    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=data[128:132] != b"DICM")
    except Exception as error:  # pydicom raises many types on garbage
        raise BadInput(f"not a readable DICOM file: {error}") from None
    if len(dataset) == 0:
        raise BadInput("not a DICOM file: no DICOM elements found")
    if "PixelData" not in dataset and "FloatPixelData" not in dataset:
        raise BadInput("DICOM without pixel data")
    n_frames = int(getattr(dataset, "NumberOfFrames", 1) or 1)
    width, height = int(getattr(dataset, "Columns", 0)), int(getattr(dataset, "Rows", 0))
    _check_size(width, height, n_frames, max_megapixels)
    frames = _dicom_frames(dataset)
    first = next(frames)  # decode now: a missing codec or broken data fails here, clearly
    return DecodedScan(_chain(first, frames), n_frames, width, height, _dicom_tags(dataset))


def _dicom_frames(dataset) -> Iterator[np.ndarray]:
    from pydicom.pixels import iter_pixels

    monochrome1 = str(getattr(dataset, "PhotometricInterpretation", "")) == "MONOCHROME1"
    try:
        for pixels in iter_pixels(dataset, as_rgb=True):
            frame = to_uint8(pixels)
            yield 255 - frame if monochrome1 else frame
    except BadInput:
        raise
    except Exception as error:
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax) or "unknown"
        raise BadInput(f"cannot decode DICOM pixel data (transfer syntax {name}): {error}") from None


def _dicom_tags(dataset) -> dict[str, str]:
    """Where the scan came from; patient and study are returned raw and hashed by the caller."""
    device = " ".join(str(getattr(dataset, key, "") or "").strip()
                      for key in ("Manufacturer", "ManufacturerModelName")).strip()
    tags = {"device": device,
            "site": str(getattr(dataset, "InstitutionName", "") or "").strip(),
            "patient": str(getattr(dataset, "PatientID", "") or "").strip(),
            "study": str(getattr(dataset, "StudyInstanceUID", "") or "").strip()}
    return {key: value for key, value in tags.items() if value}
