"""How different a cloaked face looks: CIEDE2000 colour difference over the face's box.

A ΔE2000 of about 1 is just noticeable side by side; the mean and the 99th percentile over the box
go in every face's report (the blotches a person notices live in the tail)."""
from __future__ import annotations

import numpy as np
from skimage.color import deltaE_ciede2000, rgb2lab

MAX_PIXELS = 500_000


def colour_difference(original: np.ndarray, output: np.ndarray, box) -> tuple[float, float]:
    """(mean, 99th percentile) CIEDE2000 ΔE between two uint8 RGB photos over `box` (l, t, r, b)."""
    l, t, r, b = box
    if r <= l or b <= t:
        return 0.0, 0.0
    # a big face is measured on an even grid of at most ~MAX_PIXELS pixels: the same statistics,
    # without gigabytes of float64 Lab images
    step = max(1, int(np.ceil(np.sqrt((r - l) * (b - t) / MAX_PIXELS))))
    a, o = (rgb2lab(v[t:b:step, l:r:step].astype(np.float64) / 255.0) for v in (original, output))
    de = deltaE_ciede2000(a, o)
    return float(de.mean()), float(np.percentile(de, 99))
