"""fawkes_fast: cloak face photos against unauthorized face recognition (Fawkes, USENIX Security 2020).

    import fawkes_fast
    results = fawkes_fast.cloak(["me.jpg"])          # -> [CloakResult]
    faces = fawkes_fast.embed("me.jpg")              # -> [FaceSet]
    report = fawkes_fast.evaluate("originals/", "cloaked/")   # your protection, estimated

Importing is cheap: torch, dlib and the models load on first use, inside a Cloaker.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it; resolved on first attribute access (PEP 562)
_LAZY = {
    "cloak": "fawkes_fast.api",
    "embed": "fawkes_fast.api",
    "evaluate": "fawkes_fast.api",
    "Cloaker": "fawkes_fast.cloaker",
    "CloakResult": "fawkes_fast.reports",
    "FaceReport": "fawkes_fast.reports",
    "FaceSet": "fawkes_fast.pipeline",
    "MODES": "fawkes_fast.optimize.modes",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fawkes_fast' has no attribute {name!r}")


def __dir__():
    return __all__
