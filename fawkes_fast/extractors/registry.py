"""The built-in extractor registry: a name -> how to locate, convert and align that model.

`register_builtin(name, loader)` is the one way a built-in comes to exist: the package registers
dlib, sface, dlib-robust and facenet (`builtins.py`); a benchmark registers its experimental
variants the same way instead of patching module globals.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch


@dataclass(frozen=True)
class BuiltinLoader:
    """How a built-in extractor is made and fed."""

    source: Callable[[], Path]  # the model file; raises ModelMissingError naming its PyPI package
    build: Callable[[Path], torch.nn.Module]  # model file -> module: RGB [0, 255] chips -> raw embeddings
    template: str  # alignment template (fawkes_fast.faces.align.chip_matrix)
    chip_size: int
    dim: int
    # converter source files (beside this module) whose content keys the TorchScript cache
    converters: tuple[str, ...] = ()
    # `build` makes a module of nn.Conv2d layers, which ghost copies can thin (the dlib family);
    # an imported graph (SFace, FaceNet) runs its convolutions functionally and stays whole
    thinnable: bool = False


_lock = threading.Lock()
_BUILTINS: dict[str, BuiltinLoader] = {}


def register_builtin(name: str, loader: BuiltinLoader, replace: bool = False) -> None:
    """Make `name` load through `loader` (ValueError if taken, unless replace=True)."""
    if not isinstance(loader, BuiltinLoader):
        raise TypeError(f"register_builtin({name!r}, ...) needs a BuiltinLoader, got {type(loader).__name__}")
    with _lock:
        if name in _BUILTINS and not replace:
            raise ValueError(f"a built-in extractor named {name!r} is already registered")
        _BUILTINS[name] = loader


def builtin(name: str) -> BuiltinLoader:
    try:
        return _BUILTINS[name]
    except KeyError:
        raise ValueError(f"unknown built-in extractor {name!r}; built-ins are {', '.join(_BUILTINS)}") from None


def builtin_names() -> tuple[str, ...]:
    """Registered built-ins, in registration order."""
    return tuple(_BUILTINS)


def is_builtin(name) -> bool:
    return isinstance(name, str) and name in _BUILTINS
