"""Ultrasound augmentations: the views SimCLR and DINO learn to agree on, and the eval transform.

Natural-image augmentations (colour jitter, solarisation, any crop) teach the wrong invariances
here. A scan is a grey fan on black: crops must stay inside the fan and flips are horizontal
only. Views tilt as a probe does (`PROBE_TILT`; the SSL views by `SSLConfig.rotation`, the same
by default): turning them freely, though the fetus lies at any angle in the fan, lost purity on
the African hospitals (README, Levers measured). What differs between
hospitals is the machine's rendering -- gain, time-gain compensation, dynamic range (log
compression), grey map, speckle grain, resolution. Generic features cluster hospitals rather than
anatomy (../shared/data/README.md), so the style augmentations below are deliberately strong: a
view and its partner may look as if they came from two different machines.

Images arrive as uint8 HxW grey (what `fusc ingest` stores: black outside the fan, square) and
leave as float32 3xSxS tensors normalised with the backbone's mean/std (grey copied to 3
channels, as ImageNet backbones expect). Random choices take an explicit numpy Generator: every
Ray Data worker process starts torch's global RNG from the same seed, so views drawn from it
would repeat across workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from fusc_lib.config import PROBE_TILT
from fusc_lib.ultrasound import fan_area

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)

# A crop is kept when at least this share of it lies inside the fan; otherwise another is drawn.
MIN_FAN_SHARE = 0.6
_CROP_TRIES = 10


def fan_share(fan: np.ndarray, box: Box) -> float:
    """Share of a box that lies inside the fan."""
    x0, y0, x1, y1 = box
    return float(fan[y0:y1, x0:x1].mean())


def sample_fan_crop(fan: np.ndarray, rng: np.random.Generator, scale: tuple[float, float],
                    ratio: tuple[float, float] = (3 / 4, 4 / 3),
                    min_fan: float = MIN_FAN_SHARE) -> Box:
    """A random crop box (area share in `scale`, aspect in `ratio`) that is mostly fan.

    Boxes mostly outside the fan teach the network what black looks like; they are redrawn.
    After a few misses the fan's own bounding box is used, which is always valid.
    """
    height, width = fan.shape
    for _ in range(_CROP_TRIES):
        area = height * width * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        w = round(np.sqrt(area * aspect))
        h = round(np.sqrt(area / aspect))
        if not (0 < w <= width and 0 < h <= height):
            continue
        x0, y0 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        box = (x0, y0, x0 + w, y0 + h)
        if fan_share(fan, box) >= min_fan:
            return box
    return _bounding_box(fan)


def _bounding_box(fan: np.ndarray) -> Box:
    ys, xs = np.nonzero(fan)
    if xs.size == 0:
        return 0, 0, fan.shape[1], fan.shape[0]
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def flip_and_rotate(image: np.ndarray, rng: np.random.Generator,
                    max_degrees: float) -> np.ndarray:
    """Horizontal flip half the time and a rotation by up to `max_degrees` either way; corners
    fill with black (no fan)."""
    if rng.random() < 0.5:
        image = image[:, ::-1]
    size = image.shape[1], image.shape[0]
    centre = (size[0] / 2, size[1] / 2)
    matrix = cv2.getRotationMatrix2D(centre, rng.uniform(-max_degrees, max_degrees), 1.0)
    return cv2.warpAffine(np.ascontiguousarray(image), matrix, size, flags=cv2.INTER_LINEAR,
                          borderValue=0)


@dataclass(frozen=True)
class MachineStyle:
    """Random rendering of a scan as another machine or setting might have shown it.

    Each effect is drawn independently; `strength` scales every range (0: identity). All work on
    float [0, 1] images and keep black at black, so the fan outline survives.
    """

    strength: float = 1.0

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        s = self.strength
        if s <= 0:
            return image
        for effect, probability in ((self._grey_map, 0.8), (self._gain_and_tgc, 0.8),
                                    (self._dynamic_range, 0.5), (self._speckle, 0.5),
                                    (self._resolution, 0.4), (self._blur, 0.4)):
            if rng.random() < probability:
                image = effect(image, rng, s)
        return np.clip(image, 0.0, 1.0)

    @staticmethod
    def _grey_map(image: np.ndarray, rng: np.random.Generator, s: float) -> np.ndarray:
        """A random monotone intensity curve (grey map / histogram remap), then a gamma.

        Machines differ most in how echo strength maps to grey; a piecewise-linear curve through
        random knots covers far more of them than gamma alone.
        """
        knots = np.linspace(0.0, 1.0, 6)
        steps = rng.dirichlet(np.full(5, 2.0 / s))
        curve = (1 - min(s, 1.0)) * knots + min(s, 1.0) * np.concatenate([[0.0], np.cumsum(steps)])
        gamma = np.exp(rng.uniform(-0.5, 0.5) * s)
        return np.interp(image, knots, curve).astype(np.float32) ** gamma

    @staticmethod
    def _gain_and_tgc(image: np.ndarray, rng: np.random.Generator, s: float) -> np.ndarray:
        """Overall gain times a depth profile (time-gain compensation set by the sonographer)."""
        gain = np.exp(rng.uniform(-0.4, 0.4) * s)
        depth = np.linspace(-1.0, 1.0, image.shape[0], dtype=np.float32)[:, None]
        slope, bend = rng.uniform(-0.4, 0.4, size=2) * s
        return image * gain * np.clip(1 + slope * depth + bend * (depth ** 2 - 1 / 3), 0.3, 2.0)

    @staticmethod
    def _dynamic_range(image: np.ndarray, rng: np.random.Generator, s: float) -> np.ndarray:
        """Log compression (or its inverse): a wider or narrower displayed dynamic range."""
        c = np.exp(rng.uniform(0.0, 3.0 * s))
        if rng.random() < 0.5:
            return np.log1p(c * image) / np.log1p(c)
        return np.expm1(image * np.log1p(c)) / c

    @staticmethod
    def _speckle(image: np.ndarray, rng: np.random.Generator, s: float) -> np.ndarray:
        """Multiplicative speckle with a random grain size (probe frequency, machine filtering)."""
        h, w = image.shape
        grain = rng.uniform(1.0, 4.0)
        small = (max(1, int(h / grain)), max(1, int(w / grain)))
        noise = rng.normal(0.0, 0.25 * s, size=small).astype(np.float32)
        noise = cv2.resize(noise, (w, h), interpolation=cv2.INTER_LINEAR)
        return image * np.clip(1 + noise, 0.0, None)

    @staticmethod
    def _resolution(image: np.ndarray, rng: np.random.Generator, s: float) -> np.ndarray:
        """Down- then up-sampling: an older machine, a lower line density, a compressed export."""
        h, w = image.shape
        factor = 1 - rng.uniform(0.2, 0.65) * min(s, 1.0)
        small = cv2.resize(image, (max(8, int(w * factor)), max(8, int(h * factor))),
                           interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)

    @staticmethod
    def _blur(image: np.ndarray, rng: np.random.Generator, s: float) -> np.ndarray:
        sigma = rng.uniform(0.1, 1.5 * s) * image.shape[0] / 128
        return cv2.GaussianBlur(image, (0, 0), sigma)


class _Normalise:
    """Grey float HxW -> float32 3xHxW tensor normalised with the backbone's statistics."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, grey: np.ndarray) -> torch.Tensor:
        channel = torch.from_numpy(np.ascontiguousarray(grey, dtype=np.float32))
        return (channel.expand(3, -1, -1) - self.mean) / self.std


class EvalTransform:
    """Deterministic: resize to `size` and normalise. Embedding and serving use exactly this."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float]):
        self.size = size
        self.normalise = _Normalise(mean, std)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        if image.shape != (self.size, self.size):
            shrinking = image.shape[0] > self.size
            image = cv2.resize(image, (self.size, self.size),
                               interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
        return self.normalise(image.astype(np.float32) / 255.0)


class UltrasoundView:
    """One random view: a fan crop, a flip and a rotation, then a machine style."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float],
                 scale: tuple[float, float], strength: float = 1.0,
                 max_degrees: float = PROBE_TILT,
                 min_fan: float = MIN_FAN_SHARE):
        self.size = size
        self.scale = scale
        self.min_fan = min_fan
        self.max_degrees = max_degrees
        self.style = MachineStyle(strength)
        self.normalise = _Normalise(mean, std)

    def __call__(self, image: np.ndarray, fan: np.ndarray,
                 rng: np.random.Generator) -> torch.Tensor:
        x0, y0, x1, y1 = sample_fan_crop(fan, rng, self.scale, min_fan=self.min_fan)
        crop = image[y0:y1, x0:x1]
        interpolation = cv2.INTER_AREA if crop.shape[0] > self.size else cv2.INTER_LINEAR
        crop = cv2.resize(crop, (self.size, self.size), interpolation=interpolation)
        crop = flip_and_rotate(crop, rng, self.max_degrees)
        return self.normalise(self.style(crop.astype(np.float32) / 255.0, rng))


class SimCLRViews:
    """Two views of one scan, drawn alike (SimCLR's symmetric pair)."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float],
                 strength: float = 1.0, max_degrees: float = PROBE_TILT):
        self.view = UltrasoundView(size, mean, std, scale=(0.3, 1.0), strength=strength,
                                   max_degrees=max_degrees)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> list[torch.Tensor]:
        fan = fan_area(image)
        return [self.view(image, fan, rng) for _ in range(2)]


class DinoViews:
    """DINO's multi-crop: two large global views, then `n_local` small local ones.

    Local crops cover little of the image, so they must be mostly fan or they teach nothing;
    they also get a milder style, as in DINO where the global views carry the strong changes.
    """

    def __init__(self, global_size: int, local_size: int, n_local: int,
                 mean: Sequence[float], std: Sequence[float], strength: float = 1.0,
                 max_degrees: float = PROBE_TILT):
        self.global_view = UltrasoundView(global_size, mean, std, scale=(0.4, 1.0),
                                          strength=strength, max_degrees=max_degrees)
        self.local_view = UltrasoundView(local_size, mean, std, scale=(0.08, 0.4),
                                         strength=0.5 * strength, max_degrees=max_degrees,
                                         min_fan=0.75)
        self.n_local = n_local

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> list[torch.Tensor]:
        fan = fan_area(image)
        views = [self.global_view(image, fan, rng) for _ in range(2)]
        return views + [self.local_view(image, fan, rng) for _ in range(self.n_local)]
