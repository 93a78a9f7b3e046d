"""(2, 3) affine algebra on numpy arrays or torch tensors: chip transforms, crops and their compositions.

A chip transform maps chip pixel coordinates (x, y, 1) to source-image pixel coordinates, pixel
centres at integer coordinates in both; batches are (N, 2, 3).
"""
from __future__ import annotations

import numpy as np


def apply_affine(M, pts) -> np.ndarray:
    """Apply (2,3) or (N,2,3) affines to (K,2) or (N,K,2) points (numpy)."""
    M = np.asarray(M, np.float64)
    p = np.asarray(pts, np.float64)
    return p @ np.swapaxes(M[..., :2], -1, -2) + M[..., None, :, 2]


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _h(M):
    """(…,2,3) -> (…,3,3)."""
    if _is_torch(M):
        import torch
        row = torch.zeros(M.shape[:-2] + (1, 3), dtype=M.dtype, device=M.device)
        row[..., 0, 2] = 1
        return torch.cat([M, row], -2)
    M = np.asarray(M, np.float64)
    row = np.zeros(M.shape[:-2] + (1, 3))
    row[..., 0, 2] = 1
    return np.concatenate([M, row], -2)


def compose(A, B):
    """A ∘ B for (…,2,3) affines (apply B first, then A).  numpy or torch."""
    if _is_torch(A) or _is_torch(B):
        import torch
        if not _is_torch(A):
            A = torch.as_tensor(np.asarray(A), dtype=B.dtype, device=B.device)
        if not _is_torch(B):
            B = torch.as_tensor(np.asarray(B), dtype=A.dtype, device=A.device)
        return (_h(A) @ _h(B))[..., :2, :]
    return (_h(A) @ _h(B))[..., :2, :]


def invert_affine(A):
    """Inverse of (…,2,3) affines.  numpy or torch."""
    if _is_torch(A):
        import torch
        return torch.linalg.inv(_h(A))[..., :2, :]
    return np.linalg.inv(_h(A))[..., :2, :]


def translate_scale(x0: float, y0: float, s: float, sy: float | None = None) -> np.ndarray:
    """(2,3) affine (x, y) -> (x0 + s*x, y0 + sy*y) (sy defaults to s)."""
    sy = s if sy is None else sy
    return np.array([[s, 0.0, x0], [0.0, sy, y0]], np.float64)


def crop_matrix(box, out_w: int, out_h: int | None = None) -> np.ndarray:
    """(2,3) affine from pixels of a crop resized to out_w×out_h to source pixels.

    ``box`` = (left, top, right, bottom) in source pixel *edges* (e.g. (0, 0, W, H) is
    the whole image).  Matches ``F.interpolate(..., align_corners=False)`` /
    cv2.resize: crop pixel x maps to ``left + (x + 0.5) * (right - left) / out_w - 0.5``.
    With M (chip -> source), ``compose(invert_affine(crop_matrix(box, w, h)), M)`` maps
    chip -> crop pixels.
    """
    out_h = out_w if out_h is None else out_h
    l, t, r, b = (float(v) for v in box)
    sx, sy = (r - l) / out_w, (b - t) / out_h
    return translate_scale(l + 0.5 * sx - 0.5, t + 0.5 * sy - 0.5, sx, sy)
