"""Save images atomically: never half a file, never over an input, never over a file by accident.

``write_bytes_atomic`` writes already-encoded bytes (e.g. the exact JPEG whose DSSIM budget was
checked); ``save_image_atomic`` encodes uint8 RGB first. Both:

* raise ``FileExistsError`` if the path exists and ``overwrite`` is False (checked atomically: the
  last step is a hard link, which fails if the name was taken meanwhile);
* raise ``ValueError`` if the path is (resolves to, or is a hard link of) a path in ``protect``:
  inputs are never overwritten, even with ``overwrite=True``;
* remove their temp file on any failure, Ctrl-C included.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np

from .images import FORMATS, encode_image

#: output format -> file suffix
OUTPUT_SUFFIXES = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}


def resolved_path(path) -> Path:
    """`path` resolved; as an absolute path where it cannot be (a symlink loop: RuntimeError on Python 3.11)."""
    path = Path(path)
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return path.absolute()


def same_file(a: Path, b: Path) -> bool:
    """True when `a` and `b` name the same file: same resolved path, or hard links of one inode."""
    if resolved_path(Path(a)) == resolved_path(Path(b)):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _link_count(path: Path) -> int:
    try:
        return os.stat(path).st_nlink
    except OSError:
        return 0


def check_not_protected(path: Path, protect: Iterable[str | os.PathLike]) -> None:
    """ValueError if `path` is one of `protect` (a set is taken to hold resolved paths: a run
    checks each output in constant time; hard links are compared only for a multiply-linked file)."""
    path = Path(path)
    keys = protect if isinstance(protect, (set, frozenset)) else {resolved_path(Path(p)) for p in protect}
    hit = resolved_path(path) in keys
    if not hit and _link_count(path) > 1:  # a hard link of a protected file has another name
        hit = any(same_file(path, p) for p in keys)
    if hit:
        raise ValueError(f"refusing to write {path}: it is an input or was already written by this run")


def _temp_beside(path: Path) -> tuple[int, str]:
    parent = path.parent if str(path.parent) else Path(".")
    try:
        return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    except OSError as e:
        why = ("does not exist" if isinstance(e, FileNotFoundError) else
               "is not a directory" if isinstance(e, NotADirectoryError) else
               "is not writable" if isinstance(e, PermissionError) else
               (e.strerror or str(e)))
        raise type(e)(e.errno, f"cannot write {path}: output directory {parent} {why}") from e


def _publish(tmp: str, path: Path, overwrite: bool) -> None:
    """Move the finished temp file to its name; without `overwrite`, never replace a file."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails atomically if the name exists
    except FileExistsError:
        raise FileExistsError(f"{path} already exists") from None
    except OSError:
        if path.exists():  # a file system without hard links: best-effort no-clobber
            raise FileExistsError(f"{path} already exists") from None
        os.replace(tmp, path)


def write_bytes_atomic(path: str | os.PathLike, data: bytes, overwrite: bool = False,
                       protect: Iterable[str | os.PathLike] = ()) -> Path:
    """Write `data` to `path` atomically (temp file in the same folder, fsync, rename; mode 0644)."""
    path = Path(path)
    check_not_protected(path, protect)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists")
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are ordinary files
        _publish(tmp, path, overwrite)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    return path


def save_image_atomic(path: str | os.PathLike, rgb: np.ndarray, format: str | None = "png",
                      quality: int = 95, exif: bytes | None = None,
                      icc_profile: bytes | None = None, overwrite: bool = False,
                      protect: Iterable[str | os.PathLike] = ()) -> Path:
    """Encode `rgb` (metadata stripped unless `exif` / `icc_profile` are given) and write it
    atomically. ``format=None`` picks the format from the suffix (default png)."""
    path = Path(path)
    check_not_protected(path, protect)
    if format is None:
        format = path.suffix.lower().lstrip(".")
        format = format if format in FORMATS else "png"
    data = encode_image(rgb, format, quality, exif=exif, icc_profile=icc_profile)
    return write_bytes_atomic(path, data, overwrite=overwrite)


def folder_write_problem(folder: Path) -> str | None:
    """Why files cannot be written into `folder` (made if missing), or None. It probes with a
    real temp file, so a read-only mount or a file where a folder should be is found up front."""
    probe = Path(folder)
    while not probe.exists() and probe.parent != probe:  # the folders below it will be made
        probe = probe.parent
    if not probe.is_dir():
        return f"cannot write into {folder}: {probe} is not a folder"
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        return f"cannot write into {folder}: {probe} is not writable ({e.strerror or e})"
    return None
