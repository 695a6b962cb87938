"""Tesseract 5 (LSTM) in-process through tesserocr, on the same proposed word boxes.

About 4x faster than EasyOCR's recogniser on a CPU core. Tesseract reads screen text well only
when a crop looks like a scanned page: scaled to ~50 px high, dark text on white, binarised;
without binarising, short names such as "TC"/"TT" came back as nonsense in measurements.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from fusc_lib.ocr import TextLine, read_words

CROP_HEIGHT = 50
BORDER = 10  # white margin, px: Tesseract misses glyphs that touch the image edge
TESSDATA_DIRS = ("/usr/share/tesseract-ocr/5/tessdata", "/usr/share/tesseract-ocr/4.00/tessdata",
                 "/usr/share/tessdata", "/usr/local/share/tessdata")


def tessdata_dir() -> str:
    """Folder holding eng.traineddata: $TESSDATA_PREFIX, else the usual system locations."""
    candidates = [os.environ.get("TESSDATA_PREFIX", ""), *TESSDATA_DIRS]
    for folder in candidates:
        if folder and (Path(folder) / "eng.traineddata").is_file():
            return folder
    raise FileNotFoundError("eng.traineddata not found; install tesseract-ocr-eng or set TESSDATA_PREFIX")


def prepare(crop: np.ndarray) -> np.ndarray:
    """Crop as Tesseract reads best: CROP_HEIGHT px high, black text on white, binarised, bordered.

    The threshold sits halfway between the background (median) and the glyphs (brightest
    pixels): Otsu splits textured tissue into noise that Tesseract reads as letters.
    """
    h, w = crop.shape
    width = max(1, round(w * CROP_HEIGHT / h))
    scaled = cv2.resize(crop, (width, CROP_HEIGHT), interpolation=cv2.INTER_CUBIC)
    level = (np.median(scaled) + np.percentile(scaled, 99.5)) / 2  # between tissue and glyphs
    binary = np.where(scaled > level, 0, 255).astype(np.uint8)
    return cv2.copyMakeBorder(binary, BORDER, BORDER, BORDER, BORDER, cv2.BORDER_CONSTANT, value=255)


class TesseractEngine:
    """Proposals + Tesseract's LSTM recogniser, one word box at a time (single-line mode)."""

    name = "tesseract"

    def __init__(self, threads: int = 1, min_confidence: float = 0.3):
        os.environ["OMP_THREAD_LIMIT"] = str(threads)  # read when libtesseract starts its LSTM
        cv2.setNumThreads(threads)
        import tesserocr

        self._api = tesserocr.PyTessBaseAPI(path=tessdata_dir(), lang="eng",
                                            psm=tesserocr.PSM.SINGLE_LINE, oem=tesserocr.OEM.LSTM_ONLY)
        self.min_confidence = min_confidence

    def read_batch(self, images: Sequence[np.ndarray]) -> list[list[TextLine]]:
        """Text lines of each image (see `fusc_lib.ocr.OcrEngine`)."""
        return read_words(images, self.recognise, self.min_confidence)

    def recognise(self, crops: list[np.ndarray]) -> list[tuple[str, float]]:
        """Text and confidence (0..1) of each grayscale word crop."""
        return [self._read(prepare(crop)) for crop in crops]

    def _read(self, page: np.ndarray) -> tuple[str, float]:
        h, w = page.shape
        self._api.SetImageBytes(page.tobytes(), w, h, 1, w)
        text = self._api.GetUTF8Text().strip()
        return (text, self._api.MeanTextConf() / 100.0) if text else ("", 0.0)

    def close(self) -> None:
        """Free Tesseract's memory now rather than at garbage collection."""
        self._api.End()
