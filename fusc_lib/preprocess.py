"""The one preprocessing of a scan frame, shared by ingest, training, embedding and serving.

frame pixels -> OCR of burnt-in text -> pseudo view -> text inpainted out -> fan mask and crop ->
grey, letterboxed to a square of `image_size` pixels. Serving calls exactly this code, so an image
sent online is prepared as it was offline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from fusc_lib.config import PreprocessConfig
from fusc_lib.inpaint import inpaint_text
from fusc_lib.layout import PREPROCESS
from fusc_lib.ocr import TextLine, make_engine
from fusc_lib.ultrasound import crop_box, fan_mask
from fusc_lib.views import load_vocabulary

if TYPE_CHECKING:
    from fusc_lib.store import Workdir

# Bump when the pixels produced for the same input change: rows record it, so stale rows show.
PREPROCESS_VERSION = "1"

@dataclass(frozen=True)
class PreparedFrame:
    """A frame ready for the models, with what its burnt-in text said."""

    pixels: np.ndarray  # uint8, image_size x image_size
    pseudo_view: str
    ocr_confidence: float
    ocr_text: str  # every text line read, joined by " | " (stored only on request)


def to_gray(pixels: np.ndarray) -> np.ndarray:
    """uint8 grey from grey or RGB pixels."""
    return pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)


def letterbox(gray: np.ndarray, size: int) -> np.ndarray:
    """Resize keeping the aspect ratio and pad with black (the colour outside the fan)."""
    height, width = gray.shape
    scale = size / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(gray, (new_w, new_h), interpolation=interpolation)
    out = np.zeros((size, size), np.uint8)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    out[top:top + new_h, left:left + new_w] = resized
    return out


def clean_pixels(gray: np.ndarray, text_boxes: Sequence[tuple[int, int, int, int]],
                 size: int) -> np.ndarray:
    """Inpaint the text, keep only the ultrasound fan, crop to it and letterbox to `size`."""
    clean = inpaint_text(gray, text_boxes)
    mask = fan_mask(clean)
    x0, y0, x1, y1 = crop_box(mask)
    fan_only = np.where(mask, clean, 0).astype(np.uint8)
    return letterbox(fan_only[y0:y1, x0:x1], size)


def encode_png(pixels: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", pixels)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buffer.tobytes()


def decode_png(data: bytes) -> np.ndarray:
    """The stored image back as uint8 pixels (what training and embedding read)."""
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


class Preprocessor:
    """Holds the OCR engine and vocabulary; build once per worker, call per batch of frames."""

    def __init__(self, config: PreprocessConfig):
        self.config = config
        self.engine = make_engine(config.ocr_engine, threads=config.ocr_threads)
        self.vocabulary = load_vocabulary(config.vocabulary)

    def prepare(self, frames: Sequence[np.ndarray]) -> list[PreparedFrame]:
        """Prepare frames together, so the OCR recogniser runs one batch for all their text."""
        text_per_frame = self.engine.read_batch(list(frames))
        return [self._prepare_one(frame, lines) for frame, lines in zip(frames, text_per_frame)]

    def _prepare_one(self, frame: np.ndarray, lines: list[TextLine]) -> PreparedFrame:
        match = self.vocabulary.match((line.text, line.confidence) for line in lines)
        pixels = clean_pixels(to_gray(frame), [line.box for line in lines], self.config.image_size)
        return PreparedFrame(pixels, match.view, match.confidence,
                             " | ".join(line.text for line in lines))


_FIXED_PER_WORKDIR = ("image_size", "ocr_engine")  # change these and stored rows disagree


def workdir_preprocess(workdir: Workdir, requested: dict | None = None) -> PreprocessConfig:
    """The workdir's preprocessing, fixed by its first ingest; later runs may not change pixels.

    `requested` holds options the user gave explicitly (None values are ignored). On a new workdir
    they (plus defaults) become its preprocessing; on an existing one, a different image size or
    OCR engine is refused with the reason, since stored and new rows would no longer match.
    """
    given = {key: value for key, value in (requested or {}).items() if value is not None}
    stored = workdir.read_json(PREPROCESS)
    if stored is None:
        config = PreprocessConfig(**given)
        workdir.write_json(config.model_dump(), PREPROCESS)
        return config
    config = PreprocessConfig(**stored)
    conflicts = [f"{key}: workdir has {getattr(config, key)!r}, asked for {given[key]!r}"
                 for key in _FIXED_PER_WORKDIR if key in given and given[key] != getattr(config, key)]
    if conflicts:
        raise ValueError("this workdir was ingested with other settings (" + "; ".join(conflicts)
                         + "); use a new --workdir to ingest with these")
    return config.model_copy(update=given)
