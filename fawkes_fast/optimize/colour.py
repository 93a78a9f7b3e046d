"""A differentiable colour distance for the optimiser: CIE76 ΔE in CIELAB (D65, sRGB).

The budget the user is promised is DSSIM, which barely sees colour: left alone the optimiser
spends it on red/green blotches around the eyes. A hinge on ΔE76 (an over-estimate of the
CIEDE2000 figure the reports give, for skin tones) keeps the cloak mostly in luminance.
"""
from __future__ import annotations

import functools

import torch

from ..faces.budget import box_means

_DELTA = 6.0 / 29.0


@functools.lru_cache(maxsize=8)
def _xyz_matrix(device, dtype) -> torch.Tensor:
    m = torch.tensor([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                      [0.0193339, 0.1191920, 0.9503041]], dtype=torch.float64)
    white = torch.tensor([0.95047, 1.0, 1.08883], dtype=torch.float64)[:, None]
    return (m / white).to(device=device, dtype=dtype)


def rgb_to_lab(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) sRGB in [0, 255] -> (B, 3, H, W) L*a*b*."""
    c = (x / 255.0).clamp(0.0, 1.0)
    lin = torch.where(c > 0.04045, ((c + 0.055) / 1.055).clamp_min(1e-12) ** 2.4, c / 12.92)
    xyz = torch.einsum("ij,bjhw->bihw", _xyz_matrix(x.device, x.dtype), lin)
    f = torch.where(xyz > _DELTA ** 3, xyz.clamp_min(1e-12) ** (1.0 / 3.0), xyz / (3 * _DELTA ** 2) + 4.0 / 29.0)
    return torch.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], 1)


def delta_e76(lab_a: torch.Tensor, lab_b: torch.Tensor) -> torch.Tensor:
    """(B, H, W) Euclidean distance in L*a*b*; smooth at 0 so its gradient is finite."""
    return ((lab_a - lab_b).pow(2).sum(1) + 1e-4).sqrt()


def colour_excess(de: torch.Tensor, boxes: torch.Tensor, mean_cap: float, peak_cap: float) -> torch.Tensor:
    """(B,) how far each face's ΔE map (B, H, W) exceeds its caps: the mean over each of its (B, K, 4)
    boxes, and pixel by pixel anywhere (summed, in units of its first box's area)."""
    means = box_means(de, boxes).amax(1)
    first = boxes[:, 0]
    area = ((first[:, 2] - first[:, 0]) * (first[:, 3] - first[:, 1])).clamp_min(1)
    # row sums, then their sum: one face's whole map in one reduction would be split among threads,
    # and the partial sums' order would follow the thread count (issue #23); a row is one thread's
    peaks = torch.relu(de - peak_cap).sum(2).sum(1)
    return torch.relu(means - mean_cap) + peaks / area
