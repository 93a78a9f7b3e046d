"""How different a cloaked face looks: CIEDE2000 colour difference over the face's budget boxes.

A ΔE2000 of about 1 is just noticeable side by side; the mean and the 99th percentile over the boxes
go in every face's report (the blotches a person notices live in the tail)."""
from __future__ import annotations

import numpy as np
import torch
from skimage.color import deltaE_ciede2000, rgb2lab

from .faces.budget import box_means

MAX_PIXELS = 500_000


def colour_difference(original: np.ndarray, output: np.ndarray, boxes: np.ndarray,
                      tail_boxes: np.ndarray) -> tuple[float, float]:
    """CIEDE2000 ΔE between two uint8 RGB photos: the largest mean over whole-pixel `boxes` (K, 4),
    and the largest 99th percentile over `tail_boxes`. One ΔE map covers the area they span."""
    L, T = min(boxes[:, 0].min(), tail_boxes[:, 0].min()), min(boxes[:, 1].min(), tail_boxes[:, 1].min())
    R, B = max(boxes[:, 2].max(), tail_boxes[:, 2].max()), max(boxes[:, 3].max(), tail_boxes[:, 3].max())
    if R <= L or B <= T:
        return 0.0, 0.0
    # a big face is measured on an even grid of at most ~MAX_PIXELS pixels: the same statistics,
    # without gigabytes of float64 Lab images
    step = max(1, int(np.ceil(np.sqrt((R - L) * (B - T) / MAX_PIXELS))))
    a, o = (rgb2lab(v[T:B:step, L:R:step].astype(np.float64) / 255.0) for v in (original, output))
    de = deltaE_ciede2000(a, o)
    local = lambda bx: -(-(np.asarray(bx) - (L, T, L, T)) // step)  # noqa: E731  (grid cells inside)
    mean = box_means(torch.from_numpy(de)[None], torch.from_numpy(local(boxes))[None]).max()
    tail = max(float(np.percentile(de[t:b, l:r], 99)) for l, t, r, b in local(tail_boxes) if r > l and b > t)
    return float(mean), tail
