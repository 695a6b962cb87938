"""Fan mask and crop on real captures: decorations out, the scan (dark fluid included) in."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from fusc_lib.ultrasound import crop_box, fan_mask

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# Captures whose machine text (top right) and grey bar (left) lie outside the fan:
# Aloka linear, Voluson E6 sectors and an "other" machine.
DECORATED = [
    "Patient00019_Plane1_4_of_18.png",
    "Patient00041_Plane1_13_of_45.png",
    "Patient00671_Plane1_1_of_1.png",
    "Patient00674_Plane1_1_of_1.png",
    "Patient00691_Plane6_1_of_1.png",
    "Patient00841_Plane6_2_of_2.png",
    "Patient00930_Plane2_3_of_3.png",
    "Patient01128_Plane3_2_of_3.png",
]


def _gray(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)


@pytest.mark.parametrize("name", DECORATED)
def test_fan_excludes_screen_decorations(name: str) -> None:
    gray = _gray(DATA / "fetal-planes-db" / "images" / name)
    mask = fan_mask(gray)
    h, w = gray.shape
    assert mask.shape == gray.shape and mask.dtype == bool
    assert not mask[: int(0.12 * h), int(0.88 * w):].any(), "machine text corner inside"
    assert not mask[int(0.1 * h): h // 2, : int(0.03 * w)].any(), "left grey bar inside"
    assert mask[int(0.4 * h): int(0.6 * h), int(0.4 * w): int(0.6 * w)].all()
    assert mask.mean() > 0.3


def test_fan_keeps_dark_fluid_inside() -> None:
    """The black amniotic band splitting this linear scan must stay in the mask."""
    gray = _gray(DATA / "fetal-planes-db" / "images" / "Patient00019_Plane1_4_of_18.png")
    mask = fan_mask(gray)
    h, w = gray.shape
    band = np.zeros_like(mask)
    band[int(0.2 * h): int(0.6 * h), w // 2 - 100: w // 2 + 100] = True
    fluid = band & (gray < 12) & (cv2.blur(gray, (31, 31)) < 20)
    assert fluid.sum() > 2000, "precondition: a dark band across the scan's middle"
    assert mask[fluid].mean() > 0.95


@pytest.mark.parametrize("folder", ["fetal-planes-db", "hc18"])
def test_fan_never_empty_and_centred(folder: str) -> None:
    for path in sorted((DATA / folder / "images").glob("*.png")):
        gray = _gray(path)
        mask = fan_mask(gray)
        h, w = gray.shape
        assert mask.mean() > 0.3, path.name
        assert mask[h // 2, w // 2], path.name


def test_fan_covers_cropped_scans() -> None:
    """african-planes is already cropped to the scan: the mask keeps nearly all of it."""
    coverage, tissue_kept = [], []
    for path in sorted((DATA / "african-planes" / "images").glob("*.png")):
        gray = _gray(path)
        mask = fan_mask(gray)
        coverage.append(mask.mean())
        tissue_kept.append(mask[cv2.medianBlur(gray, 5) > 40].mean())
    assert len(coverage) > 200
    assert min(coverage) > 0.45
    assert np.median(coverage) >= 0.8
    assert np.median(tissue_kept) > 0.99 and min(tissue_kept) > 0.9


@pytest.mark.parametrize("value", [0, 128, 255])
def test_uniform_image_keeps_everything(value: int) -> None:
    assert fan_mask(np.full((790, 1140), value, np.uint8)).all()


def test_crop_box_bounds_the_mask() -> None:
    mask = np.zeros((50, 80), bool)
    mask[10:20, 30:45] = True
    mask[25, 5] = True
    assert crop_box(mask) == (5, 10, 45, 26)
    assert crop_box(mask, margin=3) == (2, 7, 48, 29)
    assert crop_box(mask, margin=100) == (0, 0, 80, 50)
    assert crop_box(np.zeros((50, 80), bool)) == (0, 0, 80, 50)


def test_crop_box_of_fan_removes_side_text() -> None:
    gray = _gray(DATA / "fetal-planes-db" / "images" / "Patient00674_Plane1_1_of_1.png")
    x0, _, x1, _ = crop_box(fan_mask(gray))
    w = gray.shape[1]
    assert 0 < x1 - x0 < w and x1 < 0.9 * w and x0 > 0.05 * w
