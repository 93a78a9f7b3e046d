"""The boxes a face's budget is held over, and the DSSIM and colour change over all of them at once.

Detectors disagree on where a face ends: on LFW dlib's HOG box (upsampled once) is about 1.2x the
side of ours and a pixel or two off; MTCNN's and YuNet's differ again. A budget over our box alone
lets the optimiser move the change just outside it, where another detector's box sees it. So the
budget holds over a family of boxes: ours scaled by each of BOX_SCALES about its centre and shifted
by up to BOX_SHIFT of its side each way. One SSIM map (tf.image.ssim's convention: 11x11 Gaussian,
VALID) gives every box's DSSIM: a box's DSSIM is the mean of the map over the windows inside it.
"""
from __future__ import annotations

import numpy as np
import torch

from ..ops_reference import K1, K2, WIN, gaussian_taps, ssim_map_full

BOX_SCALES = (1.0, 0.8, 0.9, 1.15, 1.3)  # the face's own box first
BOX_SHIFT = 0.1
BOX_SHIFT_STEPS = 9  # per axis: -0.1, -0.075, ..., 0.1 of the side (about 2 px on a 90 px face)


def scaled_boxes(box) -> np.ndarray:
    """(len(BOX_SCALES), 4) float boxes: `box` scaled by each of BOX_SCALES about its centre."""
    return _boxes(box, BOX_SCALES, [0.0])


def budget_boxes(box) -> np.ndarray:
    """(K, 4) float boxes (left, top, right, bottom) over which a face's budget holds; row 0 is `box`."""
    shifted = _boxes(box, BOX_SCALES, np.linspace(-BOX_SHIFT, BOX_SHIFT, BOX_SHIFT_STEPS))
    return np.concatenate([scaled_boxes(box)[:1], shifted])


def _boxes(box, scales, shifts) -> np.ndarray:
    l, t, r, b = (float(v) for v in box)
    cx, cy, w, h = (l + r) / 2, (t + b) / 2, r - l, b - t
    out = [(cx + dx * w - k * w / 2, cy + dy * h - k * h / 2, cx + dx * w + k * w / 2, cy + dy * h + k * h / 2)
           for k in scales for dy in shifts for dx in shifts]
    return np.array(out, dtype=np.float64)


def whole_boxes(boxes: np.ndarray, height: int, width: int, offset=(0.0, 0.0), scale: float = 1.0) -> np.ndarray:
    """(K, 4) int64 boxes in an image's pixels: `(box - offset) * scale`, rounded and clipped to the
    image; boxes too small for one SSIM window are replaced by the first box (always kept)."""
    ox, oy = offset
    b = np.rint((np.asarray(boxes, np.float64) - (ox, oy, ox, oy)) * scale).astype(np.int64)
    b[:, 0::2] = b[:, 0::2].clip(0, width)
    b[:, 1::2] = b[:, 1::2].clip(0, height)
    small = (b[:, 2] - b[:, 0] < WIN) | (b[:, 3] - b[:, 1] < WIN)
    b[small] = b[0]
    return b


def box_sums(values: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(B, K) float64 sums of (B, H, W) `values` over (B, K, 4) int boxes (left, top, right, bottom,
    exclusive), from one integral image; an empty box sums to 0."""
    B, H, W = values.shape
    s = torch.zeros(B, H + 1, W + 1, dtype=torch.float64, device=values.device)
    s[:, 1:, 1:] = values.double().cumsum(1).cumsum(2)
    l, t, r, b = boxes.unbind(-1)
    flat = s.flatten(1)
    at = lambda y, x: flat.gather(1, y * (W + 1) + x)  # noqa: E731
    return at(b, r) - at(t, r) - at(b, l) + at(t, l)


def box_means(values: torch.Tensor, boxes: torch.Tensor, inset: int = 0) -> torch.Tensor:
    """Means of (B, H, W) `values` over (B, K, 4) int boxes, each shrunk by `inset` on its right
    and bottom (an SSIM map has a value per window: a box of side n holds n - 10 of them)."""
    l, t = boxes[..., 0], boxes[..., 1]
    r, b = (boxes[..., 2] - inset).clamp_min(l + 1), (boxes[..., 3] - inset).clamp_min(t + 1)
    return (box_sums(values, torch.stack([l, t, r, b], -1)) / ((r - l) * (b - t))).to(values.dtype)


def boxes_dssim(x: torch.Tensor, x0: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(B, K) DSSIM between (B, 3, H, W) images over (B, K, 4) boxes in their pixels; differentiable."""
    ssim = ssim_map_full(x, x0).mean(1)
    return (1.0 - box_means(ssim, boxes, inset=WIN - 1)) / 2.0


def ssim_plane(x: np.ndarray, y: np.ndarray, data_range: float = 255.0) -> np.ndarray:
    """SSIM map (h-10, w-10) of two (h, w) planes, as `ssim_map_full` computes it (centred values,
    float32), with OpenCV's separable filter for the blurs: on a 12 MP photo's 1,000-px face torch's
    depthwise convolution took 0.45 s a plane, about 18x OpenCV's time (issue #24)."""
    import cv2

    taps = gaussian_taps(torch.float32, "cpu").numpy()
    half = (WIN - 1) // 2
    c = data_range / 2
    xc, yc = x.astype(np.float32) - c, y.astype(np.float32) - c

    def blur(p):
        return cv2.sepFilter2D(p, cv2.CV_32F, taps, taps, borderType=cv2.BORDER_CONSTANT)[half:-half, half:-half]

    mx, my = blur(xc), blur(yc)
    sx, sy, sxy = blur(xc * xc) - mx * mx, blur(yc * yc) - my * my, blur(xc * yc) - mx * my
    mx, my = mx + c, my + c
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    return (2 * mx * my + c1) * (2 * sxy + c2) / ((mx * mx + my * my + c1) * (sx + sy + c2))


def photo_dssim(original: np.ndarray, output: np.ndarray, boxes: np.ndarray, strip_pixels: int = 2_000_000) -> np.ndarray:
    """(K,) DSSIM of uint8 RGB photos over whole-pixel boxes, from the SSIM map of the area they span.
    The map is made in strips of rows (about `strip_pixels` each), so a 50 MP face costs a few
    strips' memory, never the whole map's."""
    L, T, R, B = boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max()
    l, t = boxes[:, 0] - L, boxes[:, 1] - T
    r, b = np.maximum(boxes[:, 2] - L - (WIN - 1), l + 1), np.maximum(boxes[:, 3] - T - (WIN - 1), t + 1)
    rows, cols = B - T - (WIN - 1), R - L - (WIN - 1)
    step = max(16, strip_pixels // max(cols, 1))
    sums = np.zeros(len(boxes))
    with torch.no_grad():
        for r0 in range(0, max(rows, 0), step):
            r1 = min(rows, r0 + step)
            m = 0.0
            for c in range(3):  # one channel at a time: a map is 5 blurred planes
                o, a = (v[T + r0:T + r1 + WIN - 1, L:R, c] for v in (output, original))
                m = m + torch.from_numpy(ssim_plane(o, a)).double()
            strip = np.stack([l, np.clip(t, r0, r1) - r0, r, np.clip(b, r0, r1) - r0], -1)
            sums += box_sums((m / 3)[None], torch.from_numpy(strip)[None])[0].numpy()
    return (1.0 - sums / ((r - l) * (b - t))) / 2.0
