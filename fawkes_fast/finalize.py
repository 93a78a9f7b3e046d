"""Paste cloaks back into the photo at full resolution and make the budget true on the output.

The budget belongs to the face: the DSSIM over each face's detection box (and over the boxes other
detectors may draw instead, `faces.budget`), between what is saved
(after 8-bit rounding and, for JPEG/WebP, after decoding the bytes) and the original encoded the
same way, so that a lossy format's own noise is not counted as cloak. The optimiser works on a
(possibly downscaled) crop, so the figure is measured again here on exactly those pixels, and a
face whose cloak overshoots is scaled down until it fits. Pixels outside the regions are never
touched.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .faces.budget import budget_boxes, photo_dssim, scaled_boxes, whole_boxes
from .io.images import decode_image, encode_image
from .optimize.modes import Settings
from .perceptual import colour_difference
from .pipeline import Region

LOSSY = ("jpeg", "jpg", "webp")
MAX_TRIES = 8
BISECT_STEPS = 7


@dataclass
class FaceCloak:
    region: Region
    box: np.ndarray  # the face's detection box (left, top, right, bottom), photo pixels
    delta: torch.Tensor  # (3, work, work) perturbation at working resolution


@dataclass
class Finished:
    image: np.ndarray  # uint8 RGB to save
    encoded: bytes | None  # the exact bytes checked, when a format was given
    measures: list[dict]  # per face: dssim (max over its budget boxes), region_dssim, delta_e, delta_e_p99
    uncloaked: list[bool]  # per face: no cloak fitted the budget (it was scaled to nothing)


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


def _compose(rgb, parts, alpha) -> np.ndarray:
    """The photo with each face's delta (scaled by its alpha) added; only the regions' bounding
    area is touched in float, so a 50 MP photo costs a few copies of its faces, not of itself."""
    L, T = min(p[0][0] for p in parts), min(p[0][1] for p in parts)
    R, B = max(p[0][2] for p in parts), max(p[0][3] for p in parts)
    acc = rgb[T:B, L:R].astype(np.float32)  # regions may overlap: add every delta before rounding
    for ((l, t, r, b), d), a in zip(parts, alpha):
        if a > 0:
            acc[t - T:b - T, l - L:r - L] += a * d
    out = rgb.copy()
    out[T:B, L:R] = np.clip(np.rint(acc), 0, 255).astype(np.uint8)
    return out


def finalize_photo(rgb: np.ndarray, cloaks: list[FaceCloak], rho: float, fmt: str | None = None,
                   quality: int = 95, safety: float = Settings.safety) -> Finished:
    """Paste, encode, measure each face's box DSSIM on what is saved, and shrink what overshoots.

    A face with no cloak that fits is reported in `uncloaked` (its cloak is removed), never
    passed off as cloaked. Raises ValueError only if the bytes break the budget with every cloak
    removed, which the same-encoding reference makes impossible short of a codec bug."""
    h, w = rgb.shape[:2]
    lossy = bool(fmt) and fmt.lower() in LOSSY
    reference = decode_image(encode_image(rgb, fmt, quality)) if lossy else rgb
    parts = [_full_res(c, h, w) for c in cloaks]
    boxes = [whole_boxes(budget_boxes(c.box), h, w) for c in cloaks]
    reach = _reach(boxes, parts)

    def attempt(alpha):
        out = _compose(rgb, parts, alpha)
        encoded = encode_image(out, fmt, quality) if fmt else None
        seen = decode_image(encoded) if lossy else out
        dss = np.array([photo_dssim(reference, seen, face).max() for face in boxes])
        return out, encoded, seen, dss

    alpha = np.ones(len(parts))
    for _ in range(MAX_TRIES):  # DSSIM grows about quadratically with the cloak's amplitude
        out, encoded, seen, dss = attempt(alpha)
        if not (dss > rho).any():
            break
        shrink, factor = _shrink_plan(dss, rho, safety, reach, alpha)
        alpha[shrink] *= factor[shrink]
    else:  # 8-bit and JPEG rounding can make DSSIM flat in the amplitude: bisect a common scale
        shrink, _ = _shrink_plan(dss, rho, safety, reach, alpha)
        base, lo, hi, found = alpha.copy(), 0.0, 1.0, None
        for _ in range(BISECT_STEPS):
            alpha = base.copy()
            alpha[shrink] *= (lo + hi) / 2
            trial = attempt(alpha)
            if (trial[3] > rho).any():
                hi = (lo + hi) / 2
            else:
                lo, found = (lo + hi) / 2, (alpha, trial)
        if found is None:  # last resort: remove those cloaks; the caller reports them
            alpha = base.copy()
            alpha[shrink] = 0.0
            found = (alpha, attempt(alpha))
        alpha, (out, encoded, seen, dss) = found
        if (dss > rho).any():
            raise ValueError(f"the saved file breaks the DSSIM budget {rho} even without a cloak "
                             f"(face DSSIM {dss.max():.4f})")
    measures = [_measures(reference, seen, c, face, part[0], d) for c, face, part, d in zip(cloaks, boxes, parts, dss)]
    # a cloak scaled below half an 8-bit step leaves its face as it was: that is no cloak either
    untouched = [a == 0 or float(np.abs(d).max(initial=0.0)) * a < 0.5 for (_, d), a in zip(parts, alpha)]
    return Finished(out, encoded, measures, [bool(u) for u in untouched])


def _shrink_plan(dss, rho, safety, reach, alpha):
    """Which cloaks to shrink (the faces over budget and any live neighbour reaching them) and by
    what factor each."""
    over = dss > rho
    factor = np.clip(np.sqrt(rho * safety / np.maximum(dss, 1e-12)), 0.0, 0.95)
    shrink = over.copy()
    for i in np.flatnonzero(over):
        near = reach[i] & (alpha > 0)
        shrink |= near
        factor[near] = np.minimum(factor[near], factor[i])
    return shrink, factor


def _reach(boxes, parts) -> np.ndarray:
    """(n, n) bool: face j's region touches face i's budget boxes (j != i)."""
    n = len(parts)
    out = np.zeros((n, n), bool)
    for i, b in enumerate(boxes):
        L, T, R, B = b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()
        for j, ((l, t, r, bt), _) in enumerate(parts):
            out[i, j] = j != i and l < R and L < r and t < B and T < bt
    return out


def _measures(reference, seen, cloak, boxes, region_box, dssim) -> dict:
    h, w = seen.shape[:2]
    mean, p99 = colour_difference(reference, seen, boxes, whole_boxes(scaled_boxes(cloak.box), h, w))
    return {"dssim": float(dssim), "region_dssim": float(photo_dssim(reference, seen, np.array([region_box]))[0]),
            "delta_e": float(mean), "delta_e_p99": float(p99)}
