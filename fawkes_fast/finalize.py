"""Paste cloaks back into the photo at full resolution and make the budget true on the output.

The optimiser works on a (possibly downscaled) crop; what people see is the full-resolution
photo after 8-bit rounding and, for JPEG, after encoding. So the DSSIM of every face region
is measured again on exactly those pixels, and a face whose cloak overshoots is scaled down
until it fits. Pixels outside the regions are never touched.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import ops
from .pipeline import Region

LOSSY = ("jpeg", "jpg", "webp")
MAX_TRIES = 8


@dataclass
class FaceCloak:
    region: Region
    delta: torch.Tensor  # (3, work, work) perturbation at working resolution


def _full_res(c: FaceCloak, h: int, w: int):
    """(box, HxWx3 float32 delta) of the in-photo part of a face's region at full resolution."""
    d = c.delta.detach().float()[None]
    side = c.region.side
    if c.region.work != side:  # smooth upsampling: the cloak is a low-resolution field
        d = F.interpolate(d, size=(side, side), mode="bicubic", align_corners=False)
    l, t, r, b = c.region.clipped(h, w)
    y0, x0 = c.region.y0, c.region.x0
    d = d[0, :, t - y0:b - y0, l - x0:r - x0].permute(1, 2, 0)
    return (l, t, r, b), d.cpu().numpy()


def region_dssim(original: np.ndarray, output: np.ndarray, box) -> float:
    """DSSIM (our op's convention: tf.image.ssim, 11x11 Gaussian, VALID) over one region."""
    l, t, r, b = box
    if r - l < 11 or b - t < 11:
        return 0.0 if np.array_equal(original[t:b, l:r], output[t:b, l:r]) else float("inf")
    a = torch.from_numpy(np.ascontiguousarray(original[t:b, l:r])).permute(2, 0, 1)[None].float()
    o = torch.from_numpy(np.ascontiguousarray(output[t:b, l:r])).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        return float(ops.dssim(o, a)[0])


def finalize_photo(rgb: np.ndarray, cloaks: list[FaceCloak], rho: float, fmt: str | None = None,
                   quality: int = 95, tolerance: float = 1.0):
    """(output uint8 RGB, encoded bytes or None, per-face DSSIM on what will be saved).

    Raises ValueError if even an uncloaked face breaks the budget (JPEG at a low quality
    alone can), so a caller never gets a file that silently breaks its promise."""
    from .io.images import decode_image, encode_image

    h, w = rgb.shape[:2]
    parts = [_full_res(c, h, w) for c in cloaks]
    boxes = [p[0] for p in parts]
    L, T = min(b[0] for b in boxes), min(b[1] for b in boxes)
    R, B = max(b[2] for b in boxes), max(b[3] for b in boxes)
    base = rgb[T:B, L:R].astype(np.float32)
    alpha = np.ones(len(parts))
    limit = rho * tolerance
    for attempt in range(MAX_TRIES + 1):
        acc = base.copy()
        for ((l, t, r, b), d), a in zip(parts, alpha):
            if a > 0:
                acc[t - T:b - T, l - L:r - L] += a * d
        out = rgb.copy()
        out[T:B, L:R] = np.clip(np.rint(acc), 0, 255).astype(np.uint8)
        encoded = encode_image(out, fmt, quality) if fmt else None
        seen = decode_image(encoded) if fmt and fmt.lower() in LOSSY else out
        dss = np.array([region_dssim(rgb, seen, b) for b in boxes])
        over = dss > limit
        if not over.any():
            return out, encoded, dss
        if attempt == MAX_TRIES - 1:
            alpha[over] = 0.0  # last resort: leave those faces uncloaked and look again
        else:
            # DSSIM grows about quadratically with the cloak's amplitude
            alpha[over] *= np.clip(np.sqrt(limit * 0.97 / dss[over]), 0.0, 0.95)
    raise ValueError(f"the output encoding alone exceeds the DSSIM budget {rho} "
                     f"(face DSSIM {dss.max():.4f} with no cloak); use PNG or a higher quality")
