"""Differentiable warping of aligned chips out of images (``F.affine_grid`` + ``F.grid_sample``).

``warp_batch`` is the optimiser's per-step path (one chip per image, no host sync);
``warp_chips`` adds cropping and antialiasing (dlib's pyramid) for chips that shrink the face.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from .affine import _h, apply_affine, compose, crop_matrix, invert_affine, translate_scale


def _theta(M, H: int, W: int, size: int):
    """Normalised affine_grid theta (N,2,3) from pixel-space chip->source M (torch)."""
    S_src, S_out = _normalisers(M.dtype, M.device, H, W, size)
    return S_src @ _h(M) @ S_out


@functools.lru_cache(maxsize=64)
def _normalisers(dt, dev, H: int, W: int, size: int):
    """The pixel<->[-1, 1] matrices of `_theta`, built once per geometry: a per-step host-to-device
    copy would cost a transfer on every optimiser step and cannot be captured in a CUDA graph."""
    import torch
    S_out = torch.tensor([[size / 2.0, 0, (size - 1) / 2.0],
                          [0, size / 2.0, (size - 1) / 2.0],
                          [0, 0, 1.0]], dtype=dt, device=dev)
    S_src = torch.tensor([[2.0 / W, 0, 1.0 / W - 1.0],
                          [0, 2.0 / H, 1.0 / H - 1.0]], dtype=dt, device=dev)
    return S_src, S_out


def _footprint(Mi: np.ndarray, size: int, margin: float) -> tuple[float, float, float, float]:
    c = np.array([[-0.5, -0.5], [size - 0.5, -0.5], [-0.5, size - 0.5], [size - 0.5, size - 0.5]])
    p = apply_affine(Mi, c)
    return (p[:, 0].min() - margin, p[:, 1].min() - margin,
            p[:, 0].max() + margin, p[:, 1].max() + margin)


def _dlib_pyramid_plan(Mi: np.ndarray, size: int, H: int, W: int):
    """dlib extract_image_chip's pyramid for chip matrix ``Mi`` (a similarity from
    ``dlib_chip_matrix``): returns (n_levels, (x0, y0, x1, y1) crop, M in the pyramid
    level's pixels) or None when dlib would sample the image directly."""
    step = math.hypot(Mi[0, 0], Mi[1, 0])
    ang = math.atan2(Mi[1, 0], Mi[0, 0])
    c = Mi[:, :2] @ np.array([(size - 1) / 2.0] * 2) + Mi[:, 2]
    half = step * (size - 1) / 2.0                   # dlib drect: corners W-1 apart
    rect = np.array([c[0] - half, c[1] - half, c[0] + half, c[1] + half])

    def down(r):                                     # pyramid_down<2>::rect_down
        return np.array([r[0] / 2 - 1.25, r[1] / 2 - 0.75, r[2] / 2 - 1.25, r[3] / 2 - 0.75])

    def area(r):
        return max(r[2] - r[0] + 1, 0) * max(r[3] - r[1] + 1, 0)

    n_px = size * size
    if area(down(rect)) <= n_px:
        return None
    depth, grow, r = 0, 2.0, down(rect)
    while area(r) > n_px:
        r = down(r)
        depth += 1
        grow = grow * 2 + 2
    cs, sn = math.cos(ang), math.sin(ang)
    corners = np.array([[rect[0], rect[1]], [rect[2], rect[1]], [rect[0], rect[3]], [rect[2], rect[3]]])
    rot = (corners - c) @ np.array([[cs, sn], [-sn, cs]]) + c
    bb = [rot[:, 0].min() - grow, rot[:, 1].min() - grow, rot[:, 0].max() + grow,
          rot[:, 1].max() + grow]
    bb = [max(bb[0], 0), max(bb[1], 0), min(bb[2], W - 1), min(bb[3], H - 1)]
    x0, y0, x1, y1 = (int(math.floor(v + 0.5)) for v in bb)
    r = rect - np.array([x0, y0, x0, y0], np.float64)
    levels = 0
    while area(down(r)) > n_px:
        r = down(r)
        levels += 1
    # r is the rect in pyramid level ``levels`` (levels >= 1 here; dlib's level+1)
    rc = np.array([(r[0] + r[2]) / 2, (r[1] + r[3]) / 2])
    sx = (r[2] - r[0]) / (size - 1)
    sy = (r[3] - r[1]) / (size - 1)
    A = np.array([[cs * sx, -sn * sy], [sn * sx, cs * sy]])
    t = rc - A @ np.array([(size - 1) / 2.0] * 2)
    return levels, (x0, y0, x1 + 1, y1 + 1), np.concatenate([A, t[:, None]], 1)


def _dlib_pyr_down(x):
    """dlib pyramid_down<2> on (1,C,h,w): separable [1 4 6 4 1]/16, output pixel c is
    centred on input 2c+2; output size (n-3)//2.  Differentiable (no uint8 rounding)."""
    import torch
    import torch.nn.functional as F
    C = x.shape[1]
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=x.dtype, device=x.device) / 16.0
    x = F.conv2d(x, k.view(1, 1, 1, 5).repeat(C, 1, 1, 1), stride=(1, 2), groups=C)
    return F.conv2d(x, k.view(1, 1, 5, 1).repeat(C, 1, 1, 1), stride=(2, 1), groups=C)


def warp_batch(images, M, size: int, padding_mode: str = "zeros"):
    """One chip per image, all in one ``grid_sample``: the optimiser's per-step path.

    images (B, C, H, W), M (B, 2, 3) torch on the same device. No crop, no antialiasing and no
    host sync, so use it only where a chip pixel covers at most ~1.5 source pixels (the
    engine's working crops are sized so). Differentiable w.r.t. ``images``.
    """
    return _sample(images, M, size, padding_mode)


def warp_chips(images, M, size: int, index=None, antialias: bool = True,
               padding_mode: str = "zeros", aa_threshold: float = 1.5):
    """Sample aligned chips from ``images``.

    images: (B, C, H, W) float tensor.  M: (N, 2, 3) chip -> source pixel matrices
    (tensor or array; gradients flow to it when it is a tensor requiring grad).
    index: (N,) long, image of each chip (default ``arange(N)``; with a single image,
    every chip comes from it).
    Returns (N, C, size, size), differentiable w.r.t. ``images`` and ``M``.

    Bilinear sampling with ``align_corners=False`` and the pixel-centre convention
    converted exactly.  ``padding_mode="zeros"`` (default) gives black outside the
    image like dlib's ``extract_image_chip`` (dlib parity: 0.49 mean abs grey levels,
    all of it dlib's truncation to uint8); ``"border"`` replicates the image edge.

    Antialiasing (``antialias``):

    * ``True`` (default): when a chip pixel covers more than ``aa_threshold`` source
      pixels (scale = sqrt|det M|), the face region is cropped and downscaled by that
      scale with an antialiased (triangle-filter) resize before bilinear sampling, so a
      chip from a 4000-px photo matches one from a downscaled photo.
    * ``"dlib"``: emulate dlib ``extract_image_chip``'s image pyramid (pyramid_down<2>:
      [1 4 6 4 1] filter, decimate by 2, dlib's rect_down geometry) for chips that are
      more than ~2x smaller than their source region — use with ``dlib_chip_matrix``
      (similarity M) for parity with ``dlib.get_face_chip`` on big faces.  Without a
      pyramid level it is plain bilinear, i.e. exactly dlib's path.
    * ``False``: plain bilinear (aliases on strong downscaling).

    The face region is always cropped first, so memory and time do not grow with the
    photo size.  All paths are differentiable w.r.t. ``images`` and ``M``.
    """
    import torch

    images, Mt, idx = _chip_inputs(images, M, index, padding_mode)
    Mnp = Mt.detach().cpu().double().numpy()
    out = [_one_chip(images[idx[n]:idx[n] + 1], Mnp[n], Mt[n:n + 1], size, antialias, padding_mode, aa_threshold)
           for n in range(Mt.shape[0])]
    return torch.cat(out, 0) if out else images.new_zeros((0, images.shape[1], size, size))


def _chip_inputs(images, M, index, padding_mode):
    """(float images, (N, 2, 3) matrices on their device, image index per chip), checked."""
    import torch

    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got {tuple(images.shape)}")
    if padding_mode not in ("zeros", "border"):
        # the face region is cropped first; zeros/border keep their meaning, reflection not
        raise ValueError(f"padding_mode must be 'zeros' or 'border', not {padding_mode!r}")
    if not images.dtype.is_floating_point:
        images = images.to(torch.float32)
    Mt = (M if torch.is_tensor(M) else torch.as_tensor(np.asarray(M))).to(device=images.device, dtype=images.dtype)
    if Mt.ndim == 2:
        Mt = Mt[None]
    B, N = images.shape[0], Mt.shape[0]
    if index is None:
        if B != N and B != 1:
            raise ValueError(f"{N} matrices for {B} images: pass index")
        return images, Mt, [0] * N if B == 1 else list(range(N))
    idx = [int(i) for i in (index.tolist() if torch.is_tensor(index) else index)]
    if len(idx) != N:
        raise ValueError("index must have one entry per matrix")
    return images, Mt, idx


def _one_chip(img, Mi: np.ndarray, Mt, size: int, antialias, padding_mode: str, aa_threshold: float):
    """One (1, C, size, size) chip from img (1, C, H, W); Mi is Mt (1, 2, 3) as float64 numpy."""
    import torch.nn.functional as F

    _, C, H, W = img.shape
    plan = _dlib_pyramid_plan(Mi, size, H, W) if antialias == "dlib" else None
    if plan is not None:
        levels, (px0, py0, px1, py1), Mlev = plan
        crop = img[:, :, py0:py1, px0:px1]
        for _ in range(levels):
            crop = _dlib_pyr_down(crop)
        # M's gradient: re-express through the (constant) level mapping
        return _sample(crop, compose(Mlev @ np.vstack([invert_affine(Mi), [0, 0, 1]]), Mt), size, padding_mode)
    s = math.sqrt(abs(np.linalg.det(Mi[:, :2])))
    aa = bool(antialias) and antialias != "dlib" and s > aa_threshold
    l, t, r, b = _footprint(Mi, size, 2.0 + (2.0 * s if aa else 1.0))
    x0, y0 = max(0, int(math.floor(l))), max(0, int(math.floor(t)))
    x1, y1 = min(W, int(math.ceil(r)) + 1), min(H, int(math.ceil(b)) + 1)
    if x1 <= x0 or y1 <= y0:  # chip entirely outside the image: all padding (zeros; kept in the graph)
        return img[:, :, :1, :1].expand(1, C, size, size) * 0
    crop = img[:, :, y0:y1, x0:x1]
    Mc = compose(translate_scale(float(-x0), float(-y0), 1.0), Mt)
    if aa:
        ch, cw = y1 - y0, x1 - x0
        nh, nw = max(1, int(round(ch / s))), max(1, int(round(cw / s)))
        crop = F.interpolate(crop, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        Mc = compose(invert_affine(crop_matrix((0, 0, cw, ch), nw, nh)), Mc)  # small -> crop pixels
    return _sample(crop, Mc, size, padding_mode)


def _sample(images, M, size: int, padding_mode: str):
    """Bilinear chips (B, C, size, size) from images (B, C, H, W) through chip->source pixel matrices M."""
    import torch.nn.functional as F

    B, C, H, W = images.shape
    theta = _theta(M.to(images.dtype), H, W, size)
    grid = F.affine_grid(theta, (B, C, size, size), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)
