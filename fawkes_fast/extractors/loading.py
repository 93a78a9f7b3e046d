"""Building, caching and loading extractor modules (see the package docstring)."""
from __future__ import annotations

import functools
import hashlib
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from ..io.files import write_atomic
from ..model_files import cache_dir
from ..ops import HAS_EXTENSION  # loads the fawkes_fast ops a cached trace may call (dlib's ordered_mm)
from .base import Extractor
from .registry import builtin, builtin_names

_lock = threading.Lock()
_modules: dict[str, torch.nn.Module] = {}
# the converters' code as this process imported it (the package imports them all before this module):
# a key read from the files at build time could name code this process never ran, and a stale build
# would be saved under the new code's key
_CODE = {p.name: hashlib.sha256(p.read_bytes()).digest() for p in Path(__file__).parent.glob("*.py")}


@contextmanager
def _quiet_jit():
    """TorchScript is deprecated with a warning in torch >= 2.10; we still ship it, quietly."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=".*TorchScript.*")
        warnings.filterwarnings("ignore", message=".*torch.jit.*")
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # chip sizes are fixed: baking them is meant
        yield


def _freeze(module: torch.nn.Module) -> torch.nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def cached_builtin(name: str, force: bool = False) -> Path:
    """Path of the cached TorchScript for a built-in, converting it first if needed."""
    loader = builtin(name)
    src = loader.source()
    # keyed on the model file's content (retrained weights keep their size) and the converter code
    h = hashlib.sha256(f"{name}:{src.name}:{torch.__version__}:{HAS_EXTENSION}".encode())
    h.update(src.read_bytes())
    for f in loader.converters:
        h.update(_CODE.get(f, b""))
    out = cache_dir() / f"{name}-{h.hexdigest()[:12]}.pt"
    if out.is_file() and not force:
        return out
    module = _freeze(loader.build(src))
    size = loader.chip_size
    with _quiet_jit(), torch.no_grad():
        traced = torch.jit.trace(module, torch.rand(2, 3, size, size) * 255, check_trace=False)
    with _quiet_jit():
        return write_atomic(out, lambda tmp: torch.jit.save(traced, tmp))  # concurrent builders never see half a file


def _load_torchscript(path: Path) -> torch.nn.Module:
    with _quiet_jit():
        return _freeze(torch.jit.load(str(path), map_location="cpu"))


@functools.lru_cache(maxsize=8)
def eager_builtin(name: str, device: str = "cpu") -> torch.nn.Module:
    """A built-in's module before TorchScript, rebuilt from its model file once per device and frozen.
    Forward hooks (ghost copies) and autocast (reduced precision) need it: a traced graph records
    `aten::_convolution`, which autocast does not cast."""
    loader = builtin(name)
    return _freeze(loader.build(loader.source())).to(device)


def load_builtin(name: str, device="cpu") -> Extractor:
    """Built-in modules are shared per (name, device): they are frozen, so threads can share them,
    and `Extractor.to` copies rather than moves them."""
    loader = builtin(name)
    key = f"{name}@{torch.device(device)}"
    with _lock:
        if key not in _modules:
            _modules[key] = _load_torchscript(cached_builtin(name)).to(device)
        module = _modules[key]
    return Extractor(name=name, module=module, template=loader.template, chip_size=loader.chip_size, dim=loader.dim)


class UnknownExtractor(ValueError, FileNotFoundError):
    """Neither a built-in's name nor a model file: a bad argument (ValueError), and the
    FileNotFoundError that callers of `load` have always caught."""


_MODEL_SUFFIXES = (".onnx", ".pt2", ".pt", ".pth", ".ts")


def _read_spec(path: Path, spec):
    from .onnx_face import OnnxFaceSpec

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


def check_file(path: Path, spec=None):
    """The spec of a model file, after every check that needs no model run: the file is there, in a
    format we read, and its spec is there and valid. Raises what `load_file` would."""
    if not path.is_file():
        raise UnknownExtractor(f"no extractor named or at {str(path)!r}; built-ins are {', '.join(builtin_names())}")
    if path.suffix.lower() not in _MODEL_SUFFIXES:
        raise ValueError(f"{path.name}: unsupported extractor format {path.suffix!r} (use .onnx, .pt or .pt2)")
    return _read_spec(path, spec)


def _check_against_spec(module: torch.nn.Module, spec, name: str) -> None:
    """Run one grey chip of the spec's input size: a spec that does not describe the model fails
    here, naming its field, rather than on every photo with a tensor shape error."""
    side = spec.input_size
    try:
        with torch.no_grad():
            out = module(torch.full((1, 3, side, side), 127.5))
    except Exception as e:  # noqa: BLE001 - whatever the model raises, the spec is what is wrong
        first = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(f"{name}: spec field input_size is {side}, but the model does not take a {side}x{side} "
                         f"chip ({type(e).__name__}: {first})") from None
    if out.shape[-1] != spec.embedding_dim:
        raise ValueError(f"{name}: spec field embedding_dim is {spec.embedding_dim}, but the model gives "
                         f"{out.shape[-1]} values per face")


def load_file(path: Path, spec=None) -> Extractor:
    """An extractor from a .onnx, TorchScript .pt or torch.export .pt2 file plus its JSON spec,
    checked against the spec (one chip of its input size must give its embedding size)."""
    from .onnx_face import wrap_onnx_face_model
    from .onnx_import import onnx_to_torch

    face_spec = check_file(path, spec)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        raw = onnx_to_torch(path)
    elif suffix == ".pt2":
        raw = torch.export.load(str(path)).module()
    else:
        raw = _load_torchscript(path)
    module = _freeze(wrap_onnx_face_model(raw, face_spec))
    _check_against_spec(module, face_spec, path.name)
    return Extractor(name=path.stem, module=module, template=face_spec.template,
                     chip_size=face_spec.input_size, dim=face_spec.embedding_dim)
