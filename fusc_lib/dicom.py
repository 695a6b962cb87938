"""Read a DICOM file into the frames a DICOM viewer would show, or refuse it with a reason.

Everything here is pydicom's: reading data sets with or without the 128-byte preamble and file
meta (PS3.10 §7.1; older devices write neither), pixel decoding (`iter_pixels`), and the display
pipeline of PS3.3 C.11 / C.7.6.3: Modality LUT, VOI LUT or window, Presentation LUT, and the
Palette Color lookup tables. FUSC only chooses which of them apply and says what it assumed.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi_lut,
    iter_pixels,
)
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MediaStorageDirectoryStorage,
)

from fusc_lib.io import BadInput, DecodedScan, check_size, select_frames, to_uint8

# What ultrasound machines write and viewers show; anything else is refused with its name.
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")
_PALETTE = "PALETTE COLOR"
_GREY_LUTS = ("ModalityLUTSequence", "RescaleSlope", "VOILUTSequence", "WindowCenter")


def looks_like_bare_dataset(data: bytes) -> bool:
    """True when `data` starts like a DICOM data set written without preamble or file meta.

    Such files begin with their first element's tag, little endian: the file meta group (0002)
    or, on older devices, the identifying group (0008), e.g. (0008,0016) SOP Class UID.
    """
    return len(data) >= 8 and data[1] == 0 and data[0] in (0x02, 0x08) and data[3] < 0x10


def decode_dicom(data: bytes, max_megapixels: float, frame_limit: int | None) -> DecodedScan:
    """Frames of a DICOM file (with or without preamble), as a viewer displays them.

    Raises `BadInput` for files pydicom cannot read, non-image objects (DICOMDIR, structured
    reports: anything without Pixel Data), unsupported photometric interpretations, images
    outside the size limits and pixel data too short for even one frame.
    """
    dataset, notes = _read(data)
    _refuse_non_images(dataset)
    claimed = int(getattr(dataset, "NumberOfFrames", 1) or 1)
    width, height = int(getattr(dataset, "Columns", 0)), int(getattr(dataset, "Rows", 0))
    check_size(width, height, claimed, max_megapixels)
    photometric = str(getattr(dataset, "PhotometricInterpretation", "")).strip()
    if photometric not in (*_MONOCHROME, *_COLOUR, _PALETTE):
        raise BadInput(f"DICOM PhotometricInterpretation {photometric or '(missing)'!r} is not "
                       "supported (monochrome, RGB, YBR or palette colour are)")
    available = _frames_held(dataset, claimed)
    indices = select_frames(claimed, frame_limit)
    frames = _display_frames(dataset, [i for i in indices if i < available], photometric)
    first = next(frames)  # decode now: a missing codec or broken data fails here, clearly
    return DecodedScan(frames=_then(first, frames, indices, available, claimed), n_frames=claimed,
                       width=width, height=height, tags=dicom_tags(dataset),
                       frames_skipped=claimed - len(indices), notes=notes)


def _read(data: bytes) -> tuple[Dataset, list[str]]:
    """The data set, with a Transfer Syntax UID set where the file had none (and a note)."""
    has_preamble = data[128:132] == b"DICM"
    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=not has_preamble)
    except Exception as error:  # pydicom raises many types on garbage
        raise BadInput(f"not a readable DICOM file: {error}") from None
    if len(dataset) == 0:
        raise BadInput("not an image: no DICOM elements found")
    notes = [] if has_preamble else ["DICOM without preamble"]
    meta = getattr(dataset, "file_meta", None) or FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        meta.TransferSyntaxUID = _assumed_syntax(dataset)
        dataset.file_meta = meta
        notes.append(f"no file meta: transfer syntax assumed {meta.TransferSyntaxUID.name}")
    return dataset, notes


def _assumed_syntax(dataset: Dataset) -> UID:
    """The transfer syntax pydicom found the bare data set readable as (implicit VR LE first)."""
    implicit, little = getattr(dataset, "original_encoding", (True, True))
    if implicit in (True, None):
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _refuse_non_images(dataset: Dataset) -> None:
    sop_class = dataset.get("SOPClassUID") or getattr(dataset.file_meta, "MediaStorageSOPClassUID",
                                                      None)
    if sop_class == MediaStorageDirectoryStorage or "DirectoryRecordSequence" in dataset:
        raise BadInput("not an image: DICOMDIR (a media directory listing other files; "
                       "ingest the folder that holds them)")
    if "PixelData" not in dataset and "FloatPixelData" not in dataset:
        kind = getattr(UID(str(sop_class)), "name", "") if sop_class else ""
        raise BadInput(f"not an image: DICOM {kind or 'object'} without pixel data")


def _frames_held(dataset: Dataset, claimed: int) -> int:
    """How many frames the native Pixel Data really holds (encapsulated: trusted as claimed).

    Raises `BadInput` when it holds less than one frame.
    """
    if dataset.file_meta.TransferSyntaxUID.is_compressed or "PixelData" not in dataset:
        return claimed
    samples = int(getattr(dataset, "SamplesPerPixel", 1) or 1)
    if str(getattr(dataset, "PhotometricInterpretation", "")) == "YBR_FULL_422":
        samples = 2  # two chroma samples shared by each pair of pixels (PS3.3 C.7.6.3.1.2)
    bits = int(getattr(dataset, "BitsAllocated", 8) or 8)
    frame_bits = int(dataset.Rows) * int(dataset.Columns) * samples * bits
    held = min(claimed, len(dataset.PixelData) * 8 // frame_bits) if frame_bits else 0
    if held == 0:
        raise BadInput(f"DICOM pixel data truncated: {len(dataset.PixelData)} bytes, one frame "
                       f"needs {frame_bits // 8}")
    if held < claimed:
        dataset.NumberOfFrames = held
        dataset.PixelData = dataset.PixelData[: held * frame_bits // 8]
    return held


def _display_frames(dataset: Dataset, indices: list[int],
                    photometric: str) -> Iterator[tuple[int, np.ndarray]]:
    try:
        for index, pixels in zip(indices, iter_pixels(dataset, indices=indices,
                                                      as_rgb=photometric in _COLOUR)):
            yield index, _as_displayed(pixels, dataset, photometric)
    except BadInput:
        raise
    except Exception as error:
        name = getattr(dataset.file_meta.TransferSyntaxUID, "name", "unknown")
        raise BadInput(f"cannot decode DICOM pixel data (transfer syntax {name}): {error}") from None


def _then(first: tuple[int, np.ndarray], rest: Iterator[tuple[int, np.ndarray]],
          indices: list[int], available: int, claimed: int) -> Iterator[tuple[int, np.ndarray]]:
    """The frames, then one `BadInput` naming the selected frames the file does not hold."""
    yield first
    yield from rest
    missing = [i for i in indices if i >= available]
    if missing:
        which = (f"frame {missing[0]} is" if len(missing) == 1
                 else f"{len(missing)} selected frames ({missing[0]}–{missing[-1]}) are")
        raise BadInput(f"multi-frame DICOM holds {available} of the {claimed} frames it claims: "
                       f"{which} missing")


def _as_displayed(pixels: np.ndarray, dataset: Dataset, photometric: str) -> np.ndarray:
    """uint8 pixels as a viewer shows them: palette colour through its lookup tables; grey
    through the Modality LUT (or rescale) and VOI LUT (or window) where the file has them,
    inverted for MONOCHROME1 or a Presentation LUT Shape of INVERSE."""
    if photometric == _PALETTE:
        rgb = apply_color_lut(pixels, dataset)
        return rgb if rgb.dtype == np.uint8 else (rgb >> 8).astype(np.uint8)
    if photometric in _COLOUR:
        return to_uint8(pixels)
    if any(key in dataset for key in _GREY_LUTS):
        pixels = _in_stored_range(apply_voi_lut(apply_modality_lut(pixels, dataset), dataset),
                                  int(getattr(dataset, "BitsStored", 8) or 8))
    grey = to_uint8(pixels)
    inverse = str(dataset.get("PresentationLUTShape", "")).upper() == "INVERSE"
    return 255 - grey if photometric == "MONOCHROME1" or inverse else grey


def _in_stored_range(values: np.ndarray, bits_stored: int) -> np.ndarray:
    """8-bit data that stayed in 0..255 after the LUTs keeps its grey levels (a viewer does not
    stretch them); anything wider is scaled by its own range (`to_uint8`)."""
    if bits_stored <= 8 and values.min() >= 0 and values.max() <= 255:
        return np.rint(values).astype(np.uint8)
    return values


def dicom_tags(dataset: Dataset) -> dict[str, str]:
    """Where the scan came from; patient and study are returned raw and hashed by the caller."""
    device = " ".join(str(getattr(dataset, key, "") or "").strip()
                      for key in ("Manufacturer", "ManufacturerModelName")).strip()
    tags = {"device": device,
            "site": str(getattr(dataset, "InstitutionName", "") or "").strip(),
            "patient": str(getattr(dataset, "PatientID", "") or "").strip(),
            "study": str(getattr(dataset, "StudyInstanceUID", "") or "").strip()}
    return {key: value for key, value in tags.items() if value}
