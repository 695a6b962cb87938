"""Scans as small JPEG data URIs, so the report carries its pictures inside itself."""

from __future__ import annotations

import base64

import cv2
import numpy as np

from fusc_lib.preprocess import decode_png
from fusc_lib.store import Workdir, rows_by_id
from schemas.tables import SCANS

JPEG_QUALITY = 80


def thumbnails(workdir: Workdir, image_ids: list[str], side: int) -> dict[str, str]:
    """image_id -> `data:image/jpeg;base64,...` of its stored (preprocessed, text-inpainted)
    image shrunk to `side` × `side` pixels; reads only the rows of `image_ids`."""
    if not image_ids:
        return {}
    table = rows_by_id(workdir.table_uri(SCANS), list(image_ids), ["image_id", "image"])
    return {image_id: data_uri(decode_png(png), side)
            for image_id, png in zip(table.column("image_id").to_pylist(),
                                     table.column("image").to_pylist())}


def data_uri(image: np.ndarray, side: int) -> str:
    """A uint8 grey or BGR image as a `side`-pixel JPEG data URI."""
    small = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)
    ok, jpeg = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return "data:image/jpeg;base64," + base64.b64encode(jpeg.tobytes()).decode()
