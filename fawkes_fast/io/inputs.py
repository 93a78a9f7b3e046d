"""Which files a list of paths names: files as given, folders listed recursively.

Every file found is returned, with the reason it is skipped when it is: nothing is dropped in
silence. A file named explicitly is always tried (the loader decides whether it is an image).
"""
from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .images import IMAGE_SUFFIXES

# What this package names its outputs: <stem>_cloaked.<ext>, or <stem>_cloaked_<hex>.<ext>
_OUTPUT_NAME = re.compile(r"_cloaked(_[0-9a-f]{8,40})?$")


@dataclass(frozen=True)
class Found:
    path: Path
    root: Path | None  # the folder input it was found under; None for a file named explicitly
    skip: str | None = None  # why it is not an input to cloak, or None
    error: str | None = None  # why it could not even be listed (an unreadable folder)


def looks_like_output(path: Path) -> bool:
    return bool(_OUTPUT_NAME.search(path.stem))


def unfollowable_link(path: Path) -> str | None:
    """Why `path` is a symlink that leads to no file (a loop, or a missing target), else None.
    (On a loop, Python 3.11's Path.resolve raises RuntimeError: such paths must be caught here.)"""
    if not path.is_symlink():
        return None
    try:
        path.stat()
    except OSError as e:
        target = os.readlink(path)
        if e.errno == errno.ELOOP:
            return f"symlink loop ({path.name} -> {target} leads back to itself)"
        return f"broken symlink ({path.name} -> {target}: {e.strerror or e})"
    return None


def _folder_entry(path: Path, root: Path) -> Found:
    link = unfollowable_link(path)
    if link:
        return Found(path, root, link)
    if path.name.startswith(".") and path.suffix == ".tmp":
        return Found(path, root, "temporary file of an unfinished write")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return Found(path, root, f"not an image suffix ({path.suffix or 'none'})")
    if looks_like_output(path):
        return Found(path, root, "named like a cloaked output (*_cloaked)")
    return Found(path, root)


def _list_folder(root: Path) -> list[Found]:
    found = []

    def unreadable(e: OSError) -> None:
        found.append(Found(Path(e.filename), root, error=f"cannot list folder ({e.strerror or e})"))

    for folder, dirs, files in os.walk(root, onerror=unreadable):  # symlinked folders come in `dirs`, not followed
        here = Path(folder)
        dirs.sort()
        found += [Found(here / d, root, "symlinked folder, not followed")
                  for d in dirs if (here / d).is_symlink()]
        found += [_folder_entry(here / f, root) for f in sorted(files)]
    return found


def find_inputs(paths) -> list[Found]:
    """Files for `paths`, in order; folders are listed recursively, sorted, symlinks to folders
    reported and not followed (they may loop or leave the tree). In a folder, a symlink that leads
    to no file is skipped; named explicitly, it is an error (the file asked for cannot be read)."""
    found = []
    for p in map(Path, paths):
        if p.is_dir():
            found += _list_folder(p)
        else:  # a missing or odd file gets its own error status later
            found.append(Found(p, None, error=unfollowable_link(p)))
    return found
