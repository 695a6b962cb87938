"""Machine-style statistics of a stored scan: what a hospital's machine and preset decide
(frame size, fan geometry, grey map, speckle), not what the probe points at.

Computed once per scan at ingest (the `style` column of `scans`) and for every scan served;
`fusc_lib.sites` groups scans by them. Only numpy and OpenCV: ingest's workers import this, and
torch or scikit-learn there would cost each of them ~0.5 GiB.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from fusc_lib.preprocess import decode_png
from fusc_lib.ultrasound import fan_area

HISTOGRAM_BINS = 16
STYLE_WIDTH = 2 + 9 + 3 + HISTOGRAM_BINS  # values in `style_features`' vector
# Rows of `scans` whose stored `style` must be computed (again): made before the column existed,
# or by a `style_features` of another width. A Lance SQL filter.
NEEDS_STYLE = f"style IS NULL OR array_length(style) != {STYLE_WIDTH}"


def style_features(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Machine-style statistics of one stored scan (uint8 square, black outside the fan) and
    its original frame size: what a hospital's machine decides, not what the probe points at.

    Returns (STYLE_WIDTH,) float32: log width, log height, 9 fan-geometry values, mean grey,
    grey spread and Laplacian texture (in [0, 1] of full scale), and the square roots of a
    HISTOGRAM_BINS-bin grey histogram of the fan."""
    fan = fan_area(image).astype(bool)
    if not fan.any():
        fan = np.ones_like(fan)
    inside = image[fan]
    histogram = np.histogram(inside, bins=HISTOGRAM_BINS, range=(0, 256))[0] / inside.size
    rows, cols = np.nonzero(fan)
    side = image.shape[0]
    texture = np.abs(cv2.Laplacian(image.astype(np.float32), cv2.CV_32F))[fan].mean()
    geometry = [fan.mean(), rows.min() / side, rows.max() / side, cols.min() / side,
                cols.max() / side, fan[rows.min()].mean(), fan[rows.max()].mean(),
                fan[:, cols.min()].mean(), fan[:, cols.max()].mean()]
    grey = [inside.mean() / 255, inside.std() / 255, texture / 255]
    return np.asarray([np.log(width), np.log(height), *geometry, *grey,
                       *np.sqrt(histogram)], dtype=np.float32)


def stored_style(style: Sequence[float] | None, image: bytes, width: int, height: int
                 ) -> np.ndarray:
    """A scan's style statistics from its `scans` row: the stored `style` where it has
    STYLE_WIDTH values, else computed from the stored PNG `image` and original frame size."""
    if style is not None and len(style) == STYLE_WIDTH:
        return np.asarray(style, dtype=np.float32)
    return style_features(decode_png(image), width, height)
