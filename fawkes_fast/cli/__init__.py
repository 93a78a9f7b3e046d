"""The `fawkes-fast` command line: `main.py` builds the parser and dispatches to one module per command."""
from __future__ import annotations

from .main import main

__all__ = ["main"]
