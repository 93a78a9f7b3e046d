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


def draw(gens, k: int, count: int) -> torch.Tensor:
    """(count, k) uniforms in [0, 1). With a list of generators (one per face) row b comes from
    face b's own, so a face's random transformations never depend on its batch-mates."""
    if isinstance(gens, torch.Generator):
        return torch.rand(count, k, generator=gens)
    return torch.stack([torch.rand(k, generator=g) for g in gens])


def jitter_mats(mats: torch.Tensor, size: int, strength: float, gens) -> torch.Tensor:
    """Chip->crop matrices (B, 2, 3) composed with a random scale 1 +- 6%*s and shift +- 3px*s
    about the chip centre."""
    r = (draw(gens, 3, mats.shape[0]) * 2 - 1).to(mats)
    a = 1 + 0.06 * strength * r[:, 0]
    t = 3.0 * strength * r[:, 1:]
    c = (size - 1) / 2
    lin = mats[:, :, :2]
    off = (c * (1 - a))[:, None] + t  # (B, 2) chip-space offset
    return torch.cat([lin * a[:, None, None], (lin @ off[:, :, None]) + mats[:, :, 2:]], dim=2)


def similarity_jitter(mats: torch.Tensor, size: int, strength: float, gens) -> torch.Tensor:
    """Chip->crop matrices (B, 2, 3) composed with a random similarity about the chip centre:
    rotation +-3 deg*s, scale 1 +- 3%*s, shift +-2 chip px*s (uniform). That is the size of the
    landmark noise between two detections of one face, so a cloak tuned through it survives a
    tracker's re-detection. At s=1 a chip corner moves at most ~7.6 px (112-px chip)."""
    B = mats.shape[0]
    r = (draw(gens, 4, B) * 2 - 1).to(mats)
    ang = math.radians(3.0) * strength * r[:, 0]
    a = 1 + 0.03 * strength * r[:, 1]
    cos, sin = a * torch.cos(ang), a * torch.sin(ang)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # (B, 2, 2)
    c = torch.full((B, 2, 1), (size - 1) / 2, dtype=mats.dtype, device=mats.device)
    off = c - rot @ c + 2.0 * strength * r[:, 2:, None]  # chip -> chip: c + rot (p - c) + t
    lin = mats[:, :, :2]
    return torch.cat([lin @ rot, lin @ off + mats[:, :, 2:]], dim=2)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable 5-tap Gaussian blur of each image with its own sigma (B,)."""
    B, C = x.shape[:2]
    k = torch.arange(-2, 3, dtype=x.dtype, device=x.device)
    k = torch.exp(-k * k / (2 * sigma.to(x)[:, None] ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(C, 0)  # (B*C, 5)
    y = x.reshape(1, B * C, *x.shape[2:])
    y = F.conv2d(F.pad(y, (2, 2, 0, 0), mode="replicate"), k[:, None, None, :], groups=B * C)
    y = F.conv2d(F.pad(y, (0, 0, 2, 2), mode="replicate"), k[:, None, :, None], groups=B * C)
    return y.reshape(x.shape)


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


def jpeg_like(x: torch.Tensor, quality) -> torch.Tensor:
    """x (B, 3, H, W) RGB in [0, 255] through YCbCr 8x8 DCT quantisation at `quality` (a number
    or one per image)
    (no chroma subsampling); the rounding passes gradients straight through."""
    B, C, H, W = x.shape
    D, m, m_inv, offset, q = _jpeg_constants(x.device, x.dtype)
    y = F.pad(x, (0, (-W) % 8, 0, (-H) % 8), mode="replicate")
    y = torch.einsum("ij,bjhw->bihw", m, y) - offset
    h, w = y.shape[2] // 8, y.shape[3] // 8
    coef = D @ y.reshape(B, 3, h, 8, w, 8).permute(0, 1, 2, 4, 3, 5) @ D.T
    quality = torch.as_tensor(quality, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1, 1, 1)
    s = torch.where(quality < 50, 5000 / quality, 200 - 2 * quality)
    q = ((q * s + 50) / 100).floor().clamp_min(1)
    coef = coef + ((coef / q).round() * q - coef).detach()
    y = (D.T @ coef @ D).permute(0, 1, 2, 4, 3, 5).reshape(B, 3, h * 8, w * 8) + offset
    return torch.einsum("ij,bjhw->bihw", m_inv, y)[:, :, :H, :W]


def diversify(chips: torch.Tensor, strength: float, gens) -> torch.Tensor:
    """Random blur and JPEG-like quantisation (each with probability 1/2, per face) of a chip batch."""
    u = draw(gens, 4, chips.shape[0]).to(chips.device)
    blur, jpeg = (u[:, 0] < 0.5)[:, None, None, None], (u[:, 2] < 0.5)[:, None, None, None]
    if bool(blur.any()):
        chips = torch.where(blur, gaussian_blur(chips, 0.3 + 0.7 * strength * u[:, 1]), chips)
    if bool(jpeg.any()):
        chips = torch.where(jpeg, jpeg_like(chips, 95 - 25 * strength * u[:, 3]), chips)
    return chips
