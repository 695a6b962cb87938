"""Ultrasound field-of-view (fan / sector) mask and crop.

Screen captures carry machine text, grey-level bars, logos and calipers around the
scan. Features computed on the whole frame learn those decorations (the machine) rather
than the anatomy, so downstream stages mask or crop to the field of view first.
"""

from __future__ import annotations

import cv2
import numpy as np

# Work at this size: the fan outline is a coarse shape, and ~256 px keeps the whole
# mask under a few milliseconds while text glyphs shrink to specks the opening removes.
_WORK_SIDE = 256
# Screen background is 0-1; speckle in tissue and even in fluid is brighter after
# averaging. Text survives this threshold but not the opening below.
_DARK = 2
# Decorations smaller than this fraction of the frame are never the fan.
_MIN_FAN_FRACTION = 0.02
# A piece of the fan split off by fluid: at least this fraction of the largest piece,
# and at least this fraction of its width under the largest piece's columns.
_PIECE_FRACTION = 0.05
_PIECE_OVERLAP = 0.7
# Closing that puts back the small black pockets of fluid inside a stored fan (`fan_area`).
_CLOSE_KERNEL = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9))


def fan_mask(gray: np.ndarray) -> np.ndarray:
    """uint8 HxW -> bool HxW, True on the ultrasound field of view (sector/fan, linear or curved).

    Returns all True when the image carries no usable structure (blank or uniform), so
    callers keep every pixel rather than lose the image.
    """
    h, w = gray.shape[:2]
    if gray.size == 0 or int(gray.max()) - int(gray.min()) < _DARK:
        return np.ones((h, w), bool)
    scale = _WORK_SIDE / max(h, w)
    small = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))),
                       interpolation=cv2.INTER_AREA)
    hull = _fan_hull(_bright_tissue(small))
    if hull is None:
        return np.ones((h, w), bool)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(mask, np.round(hull / scale).astype(np.int32), 1)
    return mask.astype(bool)


def _bright_tissue(small: np.ndarray) -> np.ndarray:
    """Pixels brighter than the screen background, with thin decorations opened away."""
    blurred = cv2.medianBlur(small, 5)
    tissue = (blurred > _DARK).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    return cv2.morphologyEx(tissue, cv2.MORPH_OPEN, kernel)


def _fan_hull(tissue: np.ndarray) -> np.ndarray | None:
    """Convex hull (Nx2 float, x/y) of the fan's components; None if no fan-sized one.

    The hull puts back the dark fluid inside the fan, which thresholding removes.
    """
    n, labels, stats, _ = cv2.connectedComponentsWithStats(tissue, connectivity=8)
    if n < 2:
        return None
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    if stats[largest, cv2.CC_STAT_AREA] < _MIN_FAN_FRACTION * tissue.size:
        return None
    keep = [i for i in range(1, n) if _same_fan(stats[i], stats[largest])]
    points = cv2.findNonZero(np.isin(labels, keep).astype(np.uint8))
    return cv2.convexHull(points).reshape(-1, 2).astype(np.float64) + 0.5


def _same_fan(part: np.ndarray, fan: np.ndarray) -> bool:
    """Whether a component is a piece of the fan cut off by a band of black fluid.

    Such pieces are large and lie under the same columns as the fan (a linear probe's
    layers); text panels and bars of similar size sit beside it.
    """
    if part[cv2.CC_STAT_AREA] < _PIECE_FRACTION * fan[cv2.CC_STAT_AREA]:
        return False
    x0, width = part[cv2.CC_STAT_LEFT], part[cv2.CC_STAT_WIDTH]
    fan_x0, fan_x1 = fan[cv2.CC_STAT_LEFT], fan[cv2.CC_STAT_LEFT] + fan[cv2.CC_STAT_WIDTH]
    overlap = min(x0 + width, fan_x1) - max(x0, fan_x0)
    return overlap >= _PIECE_OVERLAP * width


def crop_box(mask: np.ndarray, margin: int = 0) -> tuple[int, int, int, int]:
    """x0, y0, x1, y1 (exclusive) of the mask's bounding box; the whole image when the mask is empty.

    The margin is clipped to the image so the box is always a valid slice.
    """
    h, w = mask.shape[:2]
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return 0, 0, w, h
    return (max(0, int(xs.min()) - margin), max(0, int(ys.min()) - margin),
            min(w, int(xs.max()) + 1 + margin), min(h, int(ys.max()) + 1 + margin))


def fan_area(image: np.ndarray) -> np.ndarray:
    """uint8 HxW -> uint8 0/1 mask of the fan.

    Preprocessing leaves exact black outside the fan (`fusc_lib.preprocess.clean_pixels`), so the
    fan is the non-black area; a closing puts back the small black pockets of fluid inside it.
    This costs well under a millisecond, against ~10 ms for a fresh `ultrasound.fan_mask`.
    """
    return cv2.morphologyEx((image > 0).astype(np.uint8), cv2.MORPH_CLOSE, _CLOSE_KERNEL)
