"""Cheap text-region proposals: where burnt-in text may be, found without a neural detector.

A neural detector (CRAFT) costs ~95 % of whole-image EasyOCR and loses small text when shrunk, so
boxes come from plain image processing instead, on the whole image (typed view names can sit
inside the fan): bright thin strokes (white top-hat) -> connected components shaped like glyphs ->
glyphs chained into words by horizontal proximity. Proposals are generous; the recogniser's
confidence decides what is text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

Box = tuple[int, int, int, int]  # x0, y0, x1, y1; x1/y1 exclusive


@dataclass(frozen=True)
class ProposalParams:
    """Tuning of the proposer; the defaults fit 8-40 px screen text on 400-1200 px captures."""

    tophat_size: int = 9          # strokes narrower than this (px) stand out of the background
    min_contrast: int = 50        # stroke minus local background, grey levels
    min_level: int = 110          # text is bright: grey machine text is ~140, white 255
    max_saturation: int = 60      # RGB: pixels more coloured than this are annotations, not text
    glyph_height: tuple[int, int] = (5, 48)
    max_glyph_width: int = 160
    max_stroke: int = 4           # px; anything thicker and larger than a junction is tissue
    max_junction_area: int = 100  # px; thick spots up to this size are glyph junctions
    min_slenderness: float = 2.0  # glyph height / stroke width; speckle blobs are ~1
    link_gap: float = 0.7        # glyphs closer than this x glyph height belong to one word


DEFAULT_PARAMS = ProposalParams()


def uncoloured_gray(image: np.ndarray, max_saturation: int = DEFAULT_PARAMS.max_saturation) -> np.ndarray:
    """Grayscale view of an image in which coloured (caliper, Doppler, annotation) pixels are 0.

    Burnt-in text is white or grey; coloured marks are dropped here so they never become boxes.
    """
    if image.ndim == 2:
        return image
    rgb = image[..., :3]
    gray = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    saturation = rgb.max(axis=2).astype(np.int16) - rgb.min(axis=2)
    gray[saturation > max_saturation] = 0
    return gray


def stroke_mask(gray: np.ndarray, params: ProposalParams = DEFAULT_PARAMS) -> np.ndarray:
    """Pixels of thin bright strokes: brighter than their opened surroundings, bright overall,
    and not part of a large blob thicker than any stroke (bright tissue a glyph may touch)."""
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (params.tophat_size, params.tophat_size))
    tophat = cv2.morphologyEx(gray, cv2.MORPH_TOPHAT, kernel)
    bright = ((tophat >= params.min_contrast) & (gray >= params.min_level)).astype(np.uint8)
    return bright & (1 - _thick_blobs(bright, params))


def _thick_blobs(mask: np.ndarray, params: ProposalParams) -> np.ndarray:
    """Areas of `mask` thicker than a stroke and larger than a glyph's junction, slightly grown.

    Junctions of bold or large glyphs (the vertex of an M) are thick too, but small: keeping them
    keeps the glyph whole.
    """
    side = params.max_stroke + 1
    opened = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((side, side), np.uint8))
    _, labels, stats, _ = cv2.connectedComponentsWithStats(opened, connectivity=8)
    large = stats[:, cv2.CC_STAT_AREA] > params.max_junction_area
    large[0] = False
    return cv2.dilate(large[labels].astype(np.uint8), np.ones((3, 3), np.uint8))


def _glyphs(mask: np.ndarray, params: ProposalParams) -> np.ndarray:
    """Connected components shaped like glyphs, as rows of (x0, y0, x1, y1).

    Glyphs are thin for their height (stroke <= height / `min_slenderness`); speckle and tissue
    streaks are blobs about as thick as they are high, which is what tells them apart.
    """
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    x, y, w, h = (stats[:, i] for i in range(4))
    lo, hi = params.glyph_height
    keep = (h >= lo) & (h <= hi) & (w <= params.max_glyph_width)
    keep[0] = False
    keep &= h >= params.min_slenderness * _thickness(mask, labels, n)
    return np.stack([x, y, x + w, y + h], axis=1)[keep]


def _thickness(mask: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Widest stroke of each component: twice its largest distance to the background."""
    dist = cv2.distanceTransform(mask, cv2.DIST_L2, 3)
    inside = mask.astype(bool)
    widest = np.zeros(n, np.float32)
    np.maximum.at(widest, labels[inside], dist[inside])
    return 2 * widest


def _link(glyphs: np.ndarray, params: ProposalParams) -> np.ndarray:
    """Label glyphs chained into words: similar height, tops or bottoms aligned, small gap.

    The alignment rule keeps a glyph from chaining to a tissue fragment that happens to touch
    the line; descenders still chain through their aligned tops.
    """
    x0, y0, x1, y1 = (glyphs[:, i, None] for i in range(4))
    height = y1 - y0
    h = np.maximum(height, height.T)
    similar = 3 * np.minimum(height, height.T) >= 2 * h
    aligned = np.minimum(np.abs(y0 - y0.T), np.abs(y1 - y1.T)) * 4 <= h
    gap = np.maximum(x0, x0.T) - np.minimum(x1, x1.T)
    adjacent = similar & aligned & (gap <= params.link_gap * h)
    return connected_components(csr_matrix(adjacent), directed=False)[1]


def _merge(glyphs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    groups = [glyphs[labels == k] for k in np.unique(labels)]
    return np.array([[g[:, 0].min(), g[:, 1].min(), g[:, 2].max(), g[:, 3].max()] for g in groups])


def pad_box(box: Box, shape: tuple[int, ...], pad: float) -> Box:
    """`box` grown by `pad` x its height plus one pixel on every side, clipped to the image."""
    x0, y0, x1, y1 = box
    m = math.ceil(pad * (y1 - y0)) + 1
    return max(x0 - m, 0), max(y0 - m, 0), min(x1 + m, shape[1]), min(y1 + m, shape[0])


def propose(image: np.ndarray, params: ProposalParams = DEFAULT_PARAMS) -> list[Box]:
    """Tight candidate word boxes (glyph extent) of a grayscale or RGB uint8 image, in reading order."""
    gray = uncoloured_gray(image, params.max_saturation)
    glyphs = _glyphs(stroke_mask(gray, params), params)
    if len(glyphs) == 0:
        return []
    words = _merge(glyphs, _link(glyphs, params))
    words = words[np.lexsort((words[:, 0], words[:, 1]))]
    return [tuple(int(v) for v in w) for w in words]
