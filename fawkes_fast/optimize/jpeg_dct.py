"""JPEG's 8x8 block DCT and its quantisation steps, for the "dct" cloak shape (shapes.QuantisedDct).

tests/test_shapes.py checks the transform against scipy's orthonormal DCT-II (JPEG's FDCT) and the
steps against libjpeg's scaling of ITU T.81 Annex K's tables.
"""
from __future__ import annotations

import functools

import torch

# JPEG's quantisation tables (ITU T.81 Annex K), luma and chroma, at quality 50
_Q_LUMA = torch.tensor([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55], [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62], [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], dtype=torch.float32)
_Q_CHROMA = torch.tensor([[17, 18, 24, 47] + [99] * 4, [18, 21, 26, 66] + [99] * 4, [24, 26, 56] + [99] * 5,
                          [47, 66] + [99] * 6] + [[99] * 8] * 4, dtype=torch.float32)


def jpeg_steps(quality: int) -> torch.Tensor:
    """(3, 8, 8) quantisation steps of libjpeg at `quality` (its scaling of the Annex K tables) for Y, Cb, Cr."""
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    q = [((t * scale + 50) // 100).clamp(1, 255) for t in (_Q_LUMA, _Q_CHROMA)]
    return torch.stack([q[0], q[1], q[1]])


@functools.lru_cache(maxsize=8)
def _dct_matrix(dtype: torch.dtype, device: torch.device, n: int = 8) -> torch.Tensor:
    k, i = torch.arange(n, dtype=torch.float64)[:, None], torch.arange(n, dtype=torch.float64)[None]
    d = torch.cos(torch.pi * (2 * i + 1) * k / (2 * n)) * (2 / n) ** 0.5
    d[0] /= 2 ** 0.5
    return d.to(dtype=dtype, device=device)  # orthonormal: D @ D.T = I; built once, not every step


def block_dct(x: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """Orthonormal 8x8 block DCT-II (or its inverse) of (B, C, H, W), H and W multiples of 8."""
    B, C, H, W = x.shape
    d = _dct_matrix(x.dtype, x.device)
    blocks = x.reshape(B, C, H // 8, 8, W // 8, 8)
    out = torch.einsum("ij,bchjwk,lk->bchiwl", d.T if inverse else d, blocks, d.T if inverse else d)
    return out.reshape(B, C, H, W)
