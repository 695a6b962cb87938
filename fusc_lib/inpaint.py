"""Paint out burnt-in text (view names, machine labels) found by OCR.

Typed text next to the anatomy is a label leak: a model clusters the words, not the
view. Only the glyph pixels are inpainted, not the whole OCR box, so the speckle around
and between the letters survives and the painted area stays small.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

Box = tuple[int, int, int, int]

# Grey levels a glyph must stand out from its local background; below this the box
# holds no text worth painting (OCR false positive, or speckle only).
_MIN_CONTRAST = 25
# Context around a box given to the inpainting, so it fills from real neighbours.
_CONTEXT = 8
_INPAINT_RADIUS = 3


def text_mask(shape: tuple[int, int], boxes: Sequence[Box], pad: int = 2,
              gray: np.ndarray | None = None) -> np.ndarray:
    """bool mask of the glyph pixels inside the given boxes (x0,y0,x1,y1 exclusive).

    Glyphs are found in `gray`; without it the padded boxes are returned whole (no image,
    no glyphs to tell apart). The mask never leaves the boxes grown by `pad`, which is
    what bounds the pixels `inpaint_text` may change.
    """
    mask = np.zeros(shape[:2], bool)
    for x0, y0, x1, y1 in _padded(boxes, pad, shape):
        if gray is None:
            mask[y0:y1, x0:x1] = True
        else:
            mask[y0:y1, x0:x1] |= _glyphs(gray[y0:y1, x0:x1])
    return mask


def inpaint_text(gray: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
    """uint8 HxW copy with the text in `boxes` painted out; pixels outside the (padded) boxes unchanged.

    Each box is inpainted on a small crop around it, which keeps the cost proportional
    to the text, not the image.
    """
    out = gray.copy()
    if not boxes:
        return out
    mask = text_mask(gray.shape, boxes, gray=gray)
    for x0, y0, x1, y1 in _padded(boxes, _CONTEXT, gray.shape):
        crop_mask = mask[y0:y1, x0:x1].astype(np.uint8)
        if not crop_mask.any():
            continue
        crop = out[y0:y1, x0:x1]
        filled = cv2.inpaint(crop, crop_mask, _INPAINT_RADIUS, cv2.INPAINT_TELEA)
        crop[crop_mask > 0] = filled[crop_mask > 0]
    return out


def _padded(boxes: Sequence[Box], pad: int, shape: tuple[int, ...]) -> list[Box]:
    """Boxes grown by `pad` and clipped to the image."""
    h, w = shape[:2]
    return [(max(0, x0 - pad), max(0, y0 - pad), min(w, x1 + pad), min(h, y1 + pad))
            for x0, y0, x1, y1 in boxes]


def _glyphs(crop: np.ndarray) -> np.ndarray:
    """Glyph pixels of one text box: the thin strokes that stand out from the background.

    A top-hat with a kernel wider than a stroke keeps the strokes and drops the
    background (tissue, fluid or a filled label box); Otsu on it separates strokes from
    speckle. A one-pixel dilation catches the anti-aliased edges.
    """
    size = max(5, min(crop.shape) // 3) | 1
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (size, size))
    op = cv2.MORPH_BLACKHAT if _dark_text(crop) else cv2.MORPH_TOPHAT
    contrast = cv2.morphologyEx(crop, op, kernel)
    if int(contrast.max()) < _MIN_CONTRAST:
        return np.zeros(crop.shape, bool)
    level, _ = cv2.threshold(contrast, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    strokes = (contrast > max(level, _MIN_CONTRAST)).astype(np.uint8)
    return cv2.dilate(strokes, np.ones((3, 3), np.uint8)).astype(bool)


def _dark_text(crop: np.ndarray) -> bool:
    """Dark text on a light label box (inverted labels); machine text is otherwise light.

    Only a box that is mostly light, with its outliers on the dark side, counts: text
    over mid-grey or bright tissue is still white text.
    """
    low, median, high = np.percentile(crop, (0, 50, 100))
    return median > 192 and median - low > high - median
