"""Tracker-side transforms of the (cloaked) training photos before feature extraction.

Each takes and returns uint8 RGB. `apply(name, rgb, rng)`; names: none, jpeg95, jpeg85, jpeg75,
jpeg50, blur (Gaussian, sigma 1 px), noise (Gaussian, sigma 4/255), resize50 (0.5x down, back up).
"""
from __future__ import annotations

import cv2
import numpy as np

from ..io.images import decode_image, encode_image


def jpeg(rgb, quality: int):
    return decode_image(encode_image(rgb, "jpeg", quality))


def blur(rgb, sigma: float = 1.0):
    return cv2.GaussianBlur(rgb, (0, 0), sigma)


def noise(rgb, sigma: float = 4.0, rng=None):
    rng = rng or np.random.default_rng(0)
    return np.clip(rgb.astype(np.float32) + rng.normal(0, sigma, rgb.shape), 0, 255).round().astype(np.uint8)


def resize(rgb, scale: float = 0.5):
    h, w = rgb.shape[:2]
    small = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


COUNTERMEASURES = {
    "none": lambda x, rng: x,
    "jpeg95": lambda x, rng: jpeg(x, 95),
    "jpeg85": lambda x, rng: jpeg(x, 85),
    "jpeg75": lambda x, rng: jpeg(x, 75),
    "jpeg50": lambda x, rng: jpeg(x, 50),
    "blur": lambda x, rng: blur(x, 1.0),
    "noise": lambda x, rng: noise(x, 4.0, rng),
    "resize50": lambda x, rng: resize(x, 0.5),
}


def apply(name: str, rgb: np.ndarray, rng=None) -> np.ndarray:
    if name not in COUNTERMEASURES:
        raise ValueError(f"countermeasure must be one of {', '.join(COUNTERMEASURES)}, not {name!r}")
    return np.ascontiguousarray(COUNTERMEASURES[name](np.asarray(rgb, np.uint8), rng))
