"""Expectation over transformations (input diversity), for cloaks that transfer.

An unseen tracker aligns, resizes and compresses a face differently from our extractor, so a
cloak tuned to one exact pixel grid transfers poorly. With `diversity` > 0 every optimiser
step sees each face through a fresh random small resize and shift (folded into the chip
matrices, so it costs nothing), and, each with probability 1/2, a Gaussian blur and a
JPEG-like 8x8 DCT quantisation (rounding with a straight-through gradient).
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

# JPEG Annex K luma and chroma quantisation tables
_LUMA = [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
         14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
         49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]
_CHROMA = [17, 18, 24, 47] + [99] * 4 + [18, 21, 26, 66] + [99] * 4 + [24, 26, 56] + [99] * 5 + [47, 66] + [99] * 38


def jitter_mats(mats: torch.Tensor, size: int, strength: float, gen: torch.Generator) -> torch.Tensor:
    """Chip->crop matrices (B, 2, 3) composed with a random scale 1 +- 6%*s and shift +- 3px*s
    about the chip centre."""
    B = mats.shape[0]
    r = (torch.rand(B, 3, generator=gen) * 2 - 1).to(mats)
    a = 1 + 0.06 * strength * r[:, 0]
    t = 3.0 * strength * r[:, 1:]
    c = (size - 1) / 2
    lin = mats[:, :, :2]
    off = (c * (1 - a))[:, None] + t  # (B, 2) chip-space offset
    return torch.cat([lin * a[:, None, None], (lin @ off[:, :, None]) + mats[:, :, 2:]], dim=2)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    k = torch.arange(-2, 3, dtype=x.dtype, device=x.device)
    k = torch.exp(-k * k / (2 * sigma * sigma))
    k = (k / k.sum()).repeat(x.shape[1], 1)
    x = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="replicate"), k[:, None, None, :], groups=x.shape[1])
    return F.conv2d(F.pad(x, (0, 0, 2, 2), mode="replicate"), k[:, None, :, None], groups=x.shape[1])


@functools.lru_cache(maxsize=8)
def _jpeg_constants(device, dtype):
    """(DCT matrix, RGB->YCbCr matrix, its inverse, YCbCr offset, base quantisation tables), built
    once per device and dtype instead of on every optimiser step."""
    n = torch.arange(8, dtype=torch.float64)
    D = torch.cos((2 * n[None] + 1) * n[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    D[0] /= math.sqrt(2)
    m = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]],
                     dtype=torch.float64)
    offset = torch.tensor([128.0, 0, 0], dtype=torch.float64)[:, None, None]
    q = torch.tensor([_LUMA, _CHROMA, _CHROMA], dtype=torch.float64).reshape(3, 1, 1, 8, 8)
    return tuple(t.to(device=device, dtype=dtype) for t in (D, m, torch.linalg.inv(m), offset, q))


def jpeg_like(x: torch.Tensor, quality: float) -> torch.Tensor:
    """x (B, 3, H, W) RGB in [0, 255] through YCbCr 8x8 DCT quantisation at `quality`
    (no chroma subsampling); the rounding passes gradients straight through."""
    B, C, H, W = x.shape
    D, m, m_inv, offset, q = _jpeg_constants(x.device, x.dtype)
    y = F.pad(x, (0, (-W) % 8, 0, (-H) % 8), mode="replicate")
    y = torch.einsum("ij,bjhw->bihw", m, y) - offset
    h, w = y.shape[2] // 8, y.shape[3] // 8
    coef = D @ y.reshape(B, 3, h, 8, w, 8).permute(0, 1, 2, 4, 3, 5) @ D.T
    s = 5000 / quality if quality < 50 else 200 - 2 * quality
    q = ((q * s + 50) / 100).floor().clamp_min(1)
    coef = coef + ((coef / q).round() * q - coef).detach()
    y = (D.T @ coef @ D).permute(0, 1, 2, 4, 3, 5).reshape(B, 3, h * 8, w * 8) + offset
    return torch.einsum("ij,bjhw->bihw", m_inv, y)[:, :, :H, :W]


def diversify(chips: torch.Tensor, strength: float, gen: torch.Generator) -> torch.Tensor:
    """Random blur and JPEG-like quantisation (each with probability 1/2) of a chip batch."""
    u = torch.rand(4, generator=gen).tolist()
    if u[0] < 0.5:
        chips = _blur(chips, 0.3 + 0.7 * strength * u[1])
    if u[2] < 0.5:
        chips = jpeg_like(chips, 95 - 25 * strength * u[3])
    return chips
