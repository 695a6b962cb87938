"""EasyOCR's recogniser on proposed word boxes, called directly and batched.

`Reader.readtext` spends ~95 % of its time in the CRAFT detector, and `Reader.recognize` adds
~1.75x over the bare model (one box at a time, PIL resizing, a second pass on low confidence).
Here the proposals replace the detector and the recogniser model runs on batches of crops of
similar width (padding a batch to its widest crop wastes convolution), with a bounded cache of
identical crops: one machine burns the same text at the same place into every screen.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import OrderedDict
from collections.abc import Sequence

import cv2
import numpy as np

from fusc_lib.ocr import TextLine, read_words

MODEL_HEIGHT = 64        # the english_g2 recogniser's input height
MAX_WIDTH = 1024         # wider crops are squeezed: longer lines are not screen labels
WIDTH_SLACK = 1.25       # a batch pads its crops to at most this x its narrowest crop
MAX_BATCH = 32
WIDTH_STEP = 32          # batch widths are multiples of this
CACHE_SIZE = 4096        # crops; bounded so memory stays flat over a long run


def _set_threads(threads: int) -> None:
    """Pin intra-op threads; OMP_NUM_THREADS only works if set before torch is first imported."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import torch

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)


def _custom_mean(probs: np.ndarray) -> float:
    """EasyOCR's line confidence: product of the kept characters' probabilities, length-tempered."""
    if probs.size == 0:
        return 0.0
    return float(np.prod(probs) ** (2.0 / math.sqrt(probs.size)))


def _crop_key(crop: np.ndarray) -> bytes:
    digest = hashlib.blake2b(np.asarray(crop.shape, np.int32).tobytes(), digest_size=16)
    digest.update(np.ascontiguousarray(crop).data)
    return digest.digest()


def _resize(crop: np.ndarray) -> np.ndarray:
    """Scale a crop to the model height, keeping its aspect ratio (width capped)."""
    h, w = crop.shape
    width = min(MAX_WIDTH, max(1, math.ceil(MODEL_HEIGHT * w / h)))
    return cv2.resize(crop, (width, MODEL_HEIGHT), interpolation=cv2.INTER_CUBIC)


def _width_groups(widths: Sequence[int]) -> list[list[int]]:
    """Indices grouped into batches of similar width (each at most WIDTH_SLACK x its narrowest)."""
    order = sorted(range(len(widths)), key=lambda i: widths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and len(groups[-1]) < MAX_BATCH and widths[i] <= WIDTH_SLACK * widths[groups[-1][0]]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _stack(resized: list[np.ndarray]) -> np.ndarray:
    """Batch of crops as float32 N x 1 x H x W in [-1, 1], right-padded by repeating the last column
    (what the model was trained with). Widths are rounded up to WIDTH_STEP so that few distinct
    input shapes reach the model: each new shape costs backend memory."""
    width = -(-max(r.shape[1] for r in resized) // WIDTH_STEP) * WIDTH_STEP
    batch = np.empty((len(resized), 1, MODEL_HEIGHT, width), np.float32)
    for k, r in enumerate(resized):
        batch[k, 0, :, : r.shape[1]] = r
        batch[k, 0, :, r.shape[1]:] = r[:, -1:]
    return batch / 127.5 - 1.0


class EasyOcrEngine:
    """Proposals + EasyOCR's english_g2 recogniser; GPU when CUDA is available."""

    name = "easyocr"

    def __init__(self, threads: int = 1, min_confidence: float = 0.3, cache_size: int = CACHE_SIZE):
        _set_threads(threads)
        import easyocr
        import easyocr_en_models
        import torch

        self._torch = torch
        reader = easyocr.Reader(["en"], gpu=torch.cuda.is_available(), detector=False,
                                model_storage_directory=str(easyocr_en_models.model_dir()),
                                download_enabled=False, verbose=False)
        self._device = reader.device
        self._model = reader.recognizer.eval()
        self._characters = ["[blank]"] + list(reader.character)
        allowed = set(reader.lang_char)
        self._ignore = np.array([i + 1 for i, c in enumerate(reader.character) if c not in allowed])
        self.min_confidence = min_confidence
        self._cache: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        self._cache_size = cache_size

    def read_batch(self, images: Sequence[np.ndarray]) -> list[list[TextLine]]:
        """Text lines of each image (see `fusc_lib.ocr.OcrEngine`)."""
        return read_words(images, self.recognise, self.min_confidence)

    def recognise(self, crops: list[np.ndarray]) -> list[tuple[str, float]]:
        """Text and confidence of each grayscale word crop; identical crops are read once."""
        keys = [_crop_key(c) for c in crops]
        todo = {k: c for k, c in zip(keys, crops) if k not in self._cache}
        for key, result in zip(todo, self._run(list(todo.values()))):
            self._cache[key] = result
        results = [self._cache[k] for k in keys]
        for key in keys:
            self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return results

    def _run(self, crops: list[np.ndarray]) -> list[tuple[str, float]]:
        resized = [_resize(c) for c in crops]
        results: list[tuple[str, float]] = [("", 0.0)] * len(crops)
        for group in _width_groups([r.shape[1] for r in resized]):
            batch = self._torch.from_numpy(_stack([resized[i] for i in group])).to(self._device)
            with self._torch.inference_mode():
                logits = self._model(batch, None)
            for i, decoded in zip(group, self._decode(logits)):
                results[i] = decoded
        return results

    def _decode(self, logits) -> list[tuple[str, float]]:
        """Greedy CTC decoding with EasyOCR's confidence, characters outside English removed."""
        probs = self._torch.softmax(logits.float(), dim=2).cpu().numpy()
        if self._ignore.size:
            probs[:, :, self._ignore] = 0.0
            probs /= probs.sum(axis=2, keepdims=True)
        best, index = probs.max(axis=2), probs.argmax(axis=2)
        return [self._decode_one(b, i) for b, i in zip(best, index)]

    def _decode_one(self, best: np.ndarray, index: np.ndarray) -> tuple[str, float]:
        keep = np.insert(index[1:] != index[:-1], 0, True) & (index != 0)
        text = "".join(self._characters[i] for i in index[keep]).strip()
        return text, _custom_mean(best[index != 0])
