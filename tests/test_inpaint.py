"""Inpainting rendered view names on real images: text gone, everything else untouched."""

import re
import subprocess
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from fusc_lib.inpaint import inpaint_text, text_mask

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TESSERACT = "/usr/bin/tesseract"
PAD = 2
# Tesseract reads speckle as "a", "ee", "4" at low confidence; real reads score > 80.
MIN_CONFIDENCE = 70

CASES = [  # image, text position, font px, text
    ("fetal-planes-db/images/Patient00305_Plane2_1_of_2.png", (300, 500), 24, "ABDOMEN"),
    ("african-planes/images/patient002_EGY_plane0.png", (60, 150), 20, "Femur"),
    ("hc18/images/000_HC.png", (300, 380), 28, "BRAIN TC"),
    ("fetal-planes-db/images/Patient00216_Plane3_5_of_5.png", (350, 250), 14, "Thorax"),
]


def _font(size: int) -> ImageFont.FreeTypeFont:
    path = subprocess.run(["fc-match", "-f", "%{file}", "DejaVuSans"],
                          capture_output=True, text=True, check=True).stdout
    return ImageFont.truetype(path, size)


def _render(gray: np.ndarray, xy: tuple[int, int], size: int, text: str,
            fill: int = 255) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The image with `text` drawn on it, and the text's box (2 px looser than PIL's)."""
    image = Image.fromarray(gray)
    draw = ImageDraw.Draw(image)
    draw.text(xy, text, fill=fill, font=_font(size))
    x0, y0, x1, y1 = draw.textbbox(xy, text, font=_font(size))
    return np.asarray(image).copy(), (x0 - 2, y0 - 2, x1 + 2, y1 + 2)


def _ocr_words(crop: np.ndarray) -> list[str]:
    """Alphanumeric words Tesseract reads with confidence, on a 3x upscaled line crop."""
    big = cv2.resize(crop, None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)
    with tempfile.NamedTemporaryFile(suffix=".png") as f:
        cv2.imwrite(f.name, big)
        tsv = subprocess.run([TESSERACT, f.name, "stdout", "--psm", "7", "tsv"],
                             capture_output=True, text=True, check=True).stdout
    rows = [r.split("\t") for r in tsv.splitlines()[1:]]
    return [r[11] for r in rows if len(r) == 12 and float(r[10]) >= MIN_CONFIDENCE
            and re.search(r"[A-Za-z0-9]", r[11])]


@pytest.mark.parametrize(("name", "xy", "size", "text"), CASES)
def test_inpaint_removes_rendered_text(name: str, xy: tuple[int, int], size: int,
                                       text: str) -> None:
    original = cv2.imread(str(DATA / name), cv2.IMREAD_GRAYSCALE)
    texted, box = _render(original, xy, size, text)
    out = inpaint_text(texted, [box])

    x0, y0, x1, y1 = box
    outside = np.ones(original.shape, bool)
    outside[y0 - PAD: y1 + PAD, x0 - PAD: x1 + PAD] = False
    assert np.array_equal(out[outside], texted[outside])

    inside = (slice(y0, y1), slice(x0, x1))
    texted_err = np.abs(texted[inside].astype(int) - original[inside]).mean()
    out_err = np.abs(out[inside].astype(int) - original[inside]).mean()
    assert out_err < 15 and out_err < texted_err / 4, (out_err, texted_err)

    line = (slice(y0 - 4, y1 + 4), slice(x0 - 4, x1 + 4))
    assert _ocr_words(original[line]) == [], "precondition: nothing readable there"
    assert " ".join(_ocr_words(texted[line])) == text
    assert _ocr_words(out[line]) == []


def test_mask_is_glyphs_not_box() -> None:
    original = cv2.imread(str(DATA / CASES[0][0]), cv2.IMREAD_GRAYSCALE)
    texted, box = _render(original, (300, 500), 24, "ABDOMEN")
    mask = text_mask(original.shape, [box], gray=texted)
    x0, y0, x1, y1 = box
    glyphs = texted != original
    assert mask[glyphs].mean() > 0.98
    assert mask[y0:y1, x0:x1].mean() < 0.7
    assert not mask[:, : x0 - PAD].any() and not mask[y1 + PAD:, :].any()


def test_mask_without_image_is_padded_boxes() -> None:
    mask = text_mask((40, 60), [(10, 5, 20, 15), (55, 35, 70, 50)], pad=2)
    assert mask.sum() == 14 * 14 + 7 * 7
    assert mask[3:17, 8:22].all() and mask[33:, 53:].all()


def test_dark_text_on_light_label() -> None:
    """Inverted labels: black glyphs on a white box are painted white."""
    gray = cv2.imread(str(DATA / CASES[0][0]), cv2.IMREAD_GRAYSCALE).copy()
    gray[95:135, 95:260] = 230
    texted, box = _render(gray, (100, 100), 22, "8.0MHz", fill=0)
    out = inpaint_text(texted, [box])
    x0, y0, x1, y1 = box
    assert texted[y0:y1, x0:x1].min() < 50
    assert out[y0:y1, x0:x1].min() > 200


def test_no_boxes_returns_copy() -> None:
    gray = cv2.imread(str(DATA / CASES[2][0]), cv2.IMREAD_GRAYSCALE)
    out = inpaint_text(gray, [])
    assert out is not gray and np.array_equal(out, gray)


def test_box_on_image_border_is_clipped() -> None:
    gray = cv2.imread(str(DATA / CASES[2][0]), cv2.IMREAD_GRAYSCALE)
    h, w = gray.shape
    texted, box = _render(gray, (w - 60, h - 20), 16, "HC18")
    out = inpaint_text(texted, [(box[0], box[1], w + 10, h + 10)])
    assert out.shape == gray.shape
    assert out[box[1]:, box[0]:].max() < texted[box[1]:, box[0]:].max()
