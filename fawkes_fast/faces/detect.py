"""Face detection (dlib HOG or MMOD-CNN) + dlib 5-point landmarks.

Landmark order (dlib ``shape_predictor_5_face_landmarks.dat``, image left/right as
seen in the photo; "subject's" left/right in brackets):

    0: outer corner of the eye on the image right  (subject's left eye, outer/lateral)
    1: inner corner of the eye on the image right  (subject's left eye, inner/medial)
    2: outer corner of the eye on the image left   (subject's right eye, outer)
    3: inner corner of the eye on the image left   (subject's right eye, inner)
    4: base of the nose (subnasale, just under the nose tip)

There are no mouth points.  All coordinates are pixels of the image handed to
``detect`` (pixel centres at integer coordinates), as float64.

Large photos are detected on a downscaled copy (longest side <= ``max_side``) and the
boxes mapped back; landmarks are then predicted on the full-resolution image, so they
stay precise.  The downscale means the smallest face found in a big photo is about
``min_detectable * longest_side / max_side`` pixels (HOG finds ~80 px faces, ~40 px
with one upsample).  Small photos (longest side <= ``upsample_below``) are upsampled
once for the detector, so LFW-sized (~100 px) faces are found.

The detector pads the (downscaled) image by a replicated border before detection so
that faces cut by the photo border are still found; their boxes may extend outside
the image (kept, not clipped) and landmarks are still produced.

Thread safety: dlib detector / predictor objects are kept per thread
(``threading.local``), so one ``FaceDetector`` may be used from several threads.
Models load lazily on the first ``detect`` in each thread; nothing loads at import.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from ..model_files import dlib_model

__all__ = ["Face", "FaceDetector", "LANDMARK_NAMES"]

LANDMARK_NAMES = (
    "eye_image_right_outer", "eye_image_right_inner",
    "eye_image_left_outer", "eye_image_left_inner", "nose_base",
)


@dataclass
class Face:
    """One detected face.

    box: (4,) float64 (left, top, right, bottom) in pixels of the given image, as pixel
        edges (right/bottom exclusive = dlib's inclusive right/bottom + 1, so
        right - left is the width); may extend outside the image for faces cut by the
        border.
    landmarks: (5, 2) float64 (x, y), dlib 5-point order (see module docstring); dlib
        predicts whole-pixel positions (pixel centres at integer coordinates).
    score: detector confidence (HOG: SVM margin, CNN: MMOD confidence).
    points: other landmark schemes by name, each (K, 2) float64 in the same pixels, added by
        later passes, e.g. ``"yunet5"`` (``faces.yunet.add_yunet_points``: YuNet's eyes, nose
        tip and mouth corners, what OpenCV's SFace pipeline aligns on). Absent when that pass
        did not find this face.
    """
    box: np.ndarray
    landmarks: np.ndarray
    score: float
    extra: dict = field(default_factory=dict, repr=False, compare=False)
    points: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)


_tls = threading.local()


def _thread_models(kind: str):
    """(detector, shape predictor) for this thread, loaded on first use and shared by
    all FaceDetector instances of the thread (dlib objects are not shared across threads)."""
    cache = getattr(_tls, "models", None)
    if cache is None:
        cache = _tls.models = {}
    if kind not in cache:
        import dlib
        if kind == "hog":
            det = dlib.get_frontal_face_detector()
        else:
            det = dlib.cnn_face_detection_model_v1(str(dlib_model("mmod_human_face_detector.dat")))
        pred = getattr(_tls, "predictor", None)
        if pred is None:
            pred = _tls.predictor = dlib.shape_predictor(
                str(dlib_model("shape_predictor_5_face_landmarks.dat")))
        cache[kind] = (det, pred)
    return cache[kind]


def _resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    import cv2
    interp = cv2.INTER_AREA if w < img.shape[1] else cv2.INTER_LINEAR
    return cv2.resize(img, (w, h), interpolation=interp)


class FaceDetector:
    """dlib face detector + 5-point landmarks.

    kind: "hog" (dlib.get_frontal_face_detector, default), "cnn" (MMOD
        mmod_human_face_detector.dat; slower, finds more poses), or "auto": HOG, then CNN
        on photos where HOG finds nothing (a missed face would go out unprotected).
    min_face: drop faces whose box is smaller than this (min of width and height,
        in pixels of the original image).
    max_side: the detector runs on a copy whose longest side is at most this (default
        1600 for HOG; 1000 for CNN, whose memory grows fast: ~3 GB at 1600 px).
    upsample: detector upsampling count; None = 1 for small photos (not downscaled and
        longest side <= ``upsample_below``: 1000 px HOG, 500 px CNN), else 0.
    threshold: HOG adjust_threshold (scores below are dropped); CNN: min confidence.
    pad: fraction of the detection image added as a replicated border on each side
        (helps faces cut by the border); 0 disables.
    confirm_below: a HOG face scoring below this is kept only if YuNet finds it too
        (``YuNet.confirms``). Low HOG margins are where its false faces are (a mission badge,
        an open mouth, a hand): cloaking one would report "cloaked" on a face left bare. On 2,000
        LFW photos it dropped 4 such faces and kept the 3 faces under 0.5 cut by the border;
        0 disables.
    """

    def __init__(self, kind: str = "hog", min_face: int = 40, max_side: int | None = None,
                 upsample: int | None = None, upsample_below: int | None = None,
                 threshold: float = 0.0, pad: float = 0.15, confirm_below: float = 0.5):
        if kind not in ("hog", "cnn", "auto"):
            raise ValueError(f"kind must be 'hog', 'cnn' or 'auto', not {kind!r}")
        self.kind = kind
        self.min_face = float(min_face)
        self._max_side, self._upsample_below = max_side, upsample_below
        self.upsample = upsample
        self.threshold = float(threshold)
        self.pad = float(pad)
        self.confirm_below = float(confirm_below)

    def max_side(self, kind: str) -> int:
        return int(self._max_side if self._max_side is not None else (1600 if kind == "hog" else 1000))

    def upsample_below(self, kind: str) -> int:
        return int(self._upsample_below if self._upsample_below is not None else (1000 if kind == "hog" else 500))

    # -- detection -------------------------------------------------------------------
    def _raw_boxes(self, kind: str, det_img: np.ndarray, detector,
                   downscaled: bool) -> list[tuple[np.ndarray, float]]:
        h, w = det_img.shape[:2]
        up = self.upsample
        if up is None:
            up = 1 if (not downscaled and max(h, w) <= self.upsample_below(kind)) else 0
        p = int(round(self.pad * max(h, w))) if self.pad > 0 else 0
        if p:
            import cv2
            img = cv2.copyMakeBorder(det_img, p, p, p, p, cv2.BORDER_REPLICATE)
        else:
            img = det_img
        img = np.ascontiguousarray(img)
        out = []
        if kind == "hog":
            rects, scores, _ = detector.run(img, up, self.threshold)
            for r, s in zip(rects, scores):
                out.append((np.array([r.left(), r.top(), r.right() + 1, r.bottom() + 1],
                                     np.float64) - p, float(s)))
        else:
            for d in detector(img, up):
                if d.confidence < self.threshold:
                    continue
                r = d.rect
                out.append((np.array([r.left(), r.top(), r.right() + 1, r.bottom() + 1],
                                     np.float64) - p, float(d.confidence)))
        return out

    def detect(self, image) -> list[Face]:
        """Faces in ``image`` (uint8 RGB H×W×3, or anything ``load_image`` accepts),
        sorted by box area, largest first."""
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8
                and image.ndim == 3 and image.shape[2] == 3):
            from ..io.images import load_image
            image = load_image(image)
        rgb = np.ascontiguousarray(image)
        faces: list[Face] = []
        if min(rgb.shape[:2]) < self.min_face:  # no face of the minimum size fits
            return faces
        for kind in (("hog", "cnn") if self.kind == "auto" else (self.kind,)):
            faces = self._detect(kind, rgb)
            if faces:
                break
        return faces

    def _detect(self, kind: str, rgb: np.ndarray) -> list[Face]:
        import dlib
        H, W = rgb.shape[:2]
        detector, predictor = _thread_models(kind)

        scale = 1.0
        det_img = rgb
        if max(H, W) > self.max_side(kind):
            scale = self.max_side(kind) / max(H, W)
            det_img = _resize(rgb, max(1, round(W * scale)), max(1, round(H * scale)))
        sx = W / det_img.shape[1]
        sy = H / det_img.shape[0]

        faces: list[Face] = []
        for box, score in self._raw_boxes(kind, det_img, detector, scale < 1.0):
            # map box edges back to the original image
            b = np.array([box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy], np.float64)
            if min(b[2] - b[0], b[3] - b[1]) < self.min_face:
                continue
            # dlib rectangles are inclusive: right = left + width - 1
            rect = dlib.rectangle(int(round(b[0])), int(round(b[1])),
                                  int(round(b[2])) - 1, int(round(b[3])) - 1)
            shape = predictor(rgb, rect)
            lm = np.array([[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)],
                          np.float64)
            faces.append(Face(box=b, landmarks=lm, score=score,
                              extra={"detect_scale": scale}))
        if kind == "hog":
            faces = self._confirmed(rgb, faces)
        faces.sort(key=lambda f: -f.area)
        return faces

    def _confirmed(self, rgb: np.ndarray, faces: list[Face]) -> list[Face]:
        """``faces`` less the low-scoring ones YuNet does not find (see ``confirm_below``)."""
        doubtful = [f for f in faces if f.score < self.confirm_below]
        if not doubtful:
            return faces
        from .yunet import default_yunet
        yunet = default_yunet()
        rows = yunet.detect_padded(rgb, [f.box for f in doubtful])  # one pass for all of them
        for f in doubtful:
            f.extra["confirmed_by_yunet"] = yunet.confirms(f, rows)
        return [f for f in faces if f.extra.get("confirmed_by_yunet", True)]

    __call__ = detect
