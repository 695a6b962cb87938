"""Sets of image ids that Ray actors test every batch against: pending scans (embed), scans
already assigned (assign).

One sorted numpy bytes array per set (~N x the longest id, in bytes), put once in Ray's object
store and read zero-copy by every actor of a node; a batch is looked up by binary search,
O(B log N). A hash set built per batch (pyarrow's `is_in` with a value set) costs O(N) each call:
O(N^2 / B) over a run, ~25 % of embedding at 10 million scans (bench/README.md).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

IdArray = pa.Array | pa.ChunkedArray


def _bytes(image_ids: IdArray) -> np.ndarray:
    return np.asarray(pa.chunked_array([image_ids]).to_pylist(), dtype=np.bytes_)


def sorted_ids(image_ids: IdArray) -> np.ndarray:
    """(N,) the ids as a sorted numpy bytes array, for `contains`."""
    return np.sort(_bytes(image_ids))


def contains(id_set: np.ndarray, image_ids: IdArray) -> np.ndarray:
    """(B,) bool: which of `image_ids` are in `id_set` (from `sorted_ids`); ids of any length."""
    ids = _bytes(image_ids)
    if not len(id_set) or not len(ids):
        return np.zeros(len(ids), bool)
    return id_set[np.minimum(np.searchsorted(id_set, ids), len(id_set) - 1)] == ids
