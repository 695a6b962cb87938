"""Known-answer inputs for tests and benchmarks: real images with text rendered at a known place.

The shared data sets carry no typed view names, so OCR is tested by drawing a name onto a real
image (real speckle, real machine text around it) and checking it is read back from the exact box.
"""

from __future__ import annotations

import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts"))
DEJAVU_SANS = "DejaVuSans.ttf"


@lru_cache(maxsize=4)
def find_font(name: str = DEJAVU_SANS) -> Path:
    """The path of a TrueType font: asks fontconfig first, then searches the usual font folders."""
    if shutil.which("fc-match"):
        found = subprocess.run(["fc-match", name.removesuffix(".ttf"), "--format=%{file}"],
                               capture_output=True, text=True, check=False).stdout.strip()
        if found.endswith(name):
            return Path(found)
    for folder in _FONT_DIRS:
        hits = sorted(folder.rglob(name)) if folder.is_dir() else []
        if hits:
            return hits[0]
    raise FileNotFoundError(f"font {name} not found (install fonts-dejavu-core)")


@lru_cache(maxsize=64)
def _font(path: Path, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(path), size)


def render_text(image: np.ndarray, text: str, x: int, y: int, height_px: int,
                value: int = 255, font: str = DEJAVU_SANS) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Draw `text` (font size `height_px`, grey level `value`) with its pen origin at (x, y).

    Returns a new image (same shape and dtype as `image`, grayscale or RGB) and the exact box of
    the ink actually drawn, (x0, y0, x1, y1) with x1/y1 exclusive, clipped to the image. The box
    comes from the rendered mask, not from font metrics, so a test can demand full coverage.
    """
    mask = Image.new("L", (image.shape[1], image.shape[0]), 0)
    ImageDraw.Draw(mask).text((x, y), text, fill=255, font=_font(find_font(font), height_px))
    alpha = np.asarray(mask, dtype=np.float32) / 255.0
    ys, xs = np.nonzero(alpha)
    if xs.size == 0:
        raise ValueError(f"text {text!r} at ({x}, {y}) falls outside the image")
    if image.ndim == 3:
        alpha = alpha[..., None]
    blended = image.astype(np.float32) * (1.0 - alpha) + float(value) * alpha
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return np.rint(blended).astype(np.uint8), box


def text_size(text: str, height_px: int, font: str = DEJAVU_SANS) -> tuple[int, int]:
    """Width and height in pixels of the ink box `render_text` draws from pen origin (0, 0)."""
    _, _, x1, y1 = _font(find_font(font), height_px).getbbox(text)
    return x1, y1
