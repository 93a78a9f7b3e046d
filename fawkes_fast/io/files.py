"""Atomic file writes for everything that is not an image (models, records, caches).

The file appears complete or not at all: written to a temp file in the same folder, then
renamed over the target, so concurrent readers and interrupted runs never see half a file.
(Images go through `save.save_image_atomic`, which also refuses to clobber and protects inputs.)
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def write_atomic(path, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)` to fill a temp file beside `path`, then rename it to `path` (0644)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; these are files to share
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
