"""Reading burnt-in screen text (typed view names, machine text) fast and offline.

Whole-image EasyOCR runs at well under 1 image/s on a CPU core, almost all of it in the CRAFT
detector. The engines here replace the detector by cheap proposals (`proposals.py`) and spend
model time only on candidate word boxes; words on one line are then joined, so "4 CH" or a name
split into two boxes comes back as one line for the view vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fusc_lib.ocr.proposals import pad_box, propose, uncoloured_gray

Box = tuple[int, int, int, int]
CROP_PAD = 0.1    # recognisers read best with a slim margin (x word height)
COVER_PAD = 0.2   # returned boxes are wider, so inpainting covers anti-aliased glyph edges
LINE_GAP = 1.0  # neighbouring words on one line join when the gap is under this x their height


@dataclass(frozen=True)
class TextLine:
    """One line of text: its box (x0, y0, x1, y1; x1/y1 exclusive), text and confidence (0..1)."""

    box: Box
    text: str
    confidence: float


class OcrEngine(Protocol):
    """Reads the text lines of images: uint8 HxW grayscale or HxWx3 RGB."""

    name: str

    def read_batch(self, images: Sequence[np.ndarray]) -> list[list[TextLine]]: ...


class NullEngine:
    """Reads nothing; for runs that skip OCR."""

    name = "none"

    def read_batch(self, images: Sequence[np.ndarray]) -> list[list[TextLine]]:
        return [[] for _ in images]


def _same_line(a: Box, b: Box) -> bool:
    """True when word `b` continues the line that ends with word `a` (b starts right of a)."""
    ha, hb = a[3] - a[1], b[3] - b[1]
    overlap = min(a[3], b[3]) - max(a[1], b[1])
    gap = b[0] - a[2]
    return 2 * overlap >= min(ha, hb) and -min(ha, hb) <= gap <= LINE_GAP * max(ha, hb)


def _union(line: list[TextLine]) -> TextLine:
    box = (min(w.box[0] for w in line), min(w.box[1] for w in line),
           max(w.box[2] for w in line), max(w.box[3] for w in line))
    chars = [max(len(w.text), 1) for w in line]
    confidence = sum(c * w.confidence for c, w in zip(chars, line)) / sum(chars)
    return TextLine(box, " ".join(w.text for w in line), confidence)


def join_words(words: Sequence[TextLine]) -> list[TextLine]:
    """Join words that sit next to each other on one line, left to right, into `TextLine`s.

    Proposals and recognisers both split lines at wide spaces ("4 CH", "FE MUR"); the vocabulary
    needs the whole line. Confidence is the character-weighted mean of the words'.
    """
    lines: list[list[TextLine]] = []
    for word in sorted(words, key=lambda w: w.box[0]):
        line = next((ln for ln in lines if _same_line(ln[-1].box, word.box)), None)
        if line is None:
            lines.append([word])
        else:
            line.append(word)
    joined = [_union(line) for line in lines]
    return sorted(joined, key=lambda t: (t.box[1], t.box[0]))


def _is_text(word: TextLine, min_confidence: float) -> bool:
    """Confident, and not only punctuation (what recognisers make of tissue streaks)."""
    return word.confidence >= min_confidence and any(c.isalnum() for c in word.text)


def _crop(gray: np.ndarray, box: Box, pad: float) -> np.ndarray:
    x0, y0, x1, y1 = pad_box(box, gray.shape, pad)
    return gray[y0:y1, x0:x1]


Recognise = Callable[[list[np.ndarray]], list[tuple[str, float]]]


def read_words(images: Sequence[np.ndarray], recognise: Recognise,
               min_confidence: float) -> list[list[TextLine]]:
    """Propose word boxes on every image, recognise all crops in one call, join lines.

    One `recognise` call for the whole batch lets an engine batch crops across images. Words
    under `min_confidence` are dropped before joining: they are tissue, not text.
    """
    grays = [uncoloured_gray(image) for image in images]
    boxes = [propose(gray) for gray in grays]
    crops = [_crop(gray, box, CROP_PAD) for gray, bs in zip(grays, boxes) for box in bs]
    results = iter(recognise(crops))
    lines = []
    for gray, bs in zip(grays, boxes):
        words = [TextLine(pad_box(box, gray.shape, COVER_PAD), text, conf)
                 for box, (text, conf) in zip(bs, results)]
        lines.append(join_words([w for w in words if _is_text(w, min_confidence)]))
    return lines


def make_engine(name: str, *, threads: int = 1, min_confidence: float = 0.3) -> OcrEngine:
    """Build an OCR engine: "easyocr", "tesseract" or "none" (reads nothing).

    Engines import their heavy libraries lazily, so choosing one never loads the other.
    """
    if name == "none":
        return NullEngine()
    if name == "easyocr":
        from fusc_lib.ocr.easyocr_engine import EasyOcrEngine
        return EasyOcrEngine(threads=threads, min_confidence=min_confidence)
    if name == "tesseract":
        from fusc_lib.ocr.tesseract_engine import TesseractEngine
        return TesseractEngine(threads=threads, min_confidence=min_confidence)
    raise ValueError(f"unknown OCR engine {name!r}; expected 'easyocr', 'tesseract' or 'none'")


__all__ = ["NullEngine", "OcrEngine", "TextLine", "join_words", "make_engine", "read_words"]
