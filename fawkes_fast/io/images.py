"""Image I/O: load anything a user may hand us as uint8 RGB, save atomically.

Loading rules (``load_image``):

* Result: ``np.ndarray`` uint8, shape (H, W, 3), RGB, C-contiguous.
* EXIF orientation is applied (``ImageOps.exif_transpose``), so the array is what a
  viewer shows.
* Alpha (RGBA, LA, PA, P with transparency) is **composited over white**: the cloaked
  output is RGB, and transparent regions of logos/PNG portraits are usually shown on
  white.  Dropping alpha instead would expose whatever colour the encoder left under
  the transparent pixels (often black or garbage).
* 16-bit inputs (PIL modes I;16, I;16B, I;16L, I;16N, 16-bit PNG decoded as mode I,
  numpy uint16) are **scaled** to 8 bits (``round(v * 255 / 65535)``), never clipped.
  Mode ``I`` (32-bit int) is treated as 16-bit data when its maximum exceeds 255,
  otherwise as 8-bit data.  Mode ``F``: values in [0, 1] are scaled by 255, otherwise
  clipped to [0, 255].
* Palette, 1-bit, L, CMYK (incl. Adobe CMYK JPEG), YCbCr, LAB, HSV: converted by PIL.
* Animated GIF/WebP/APNG/multi-page TIFF: the **first frame** only.
* HEIC/HEIF: supported when ``pillow_heif`` is importable.
* Empty, truncated, corrupt or non-image input, or more than ``MAX_PIXELS`` pixels
  -> ``ImageError`` naming the source and the problem.  A truncated file is never
  accepted half-decoded (Pillow's default; this module leaves Pillow's process-wide
  ``ImageFile.LOAD_TRUNCATED_IMAGES`` as the host program set it).  Nor is a JPEG whose
  compressed data is too short for the size its header declares: libjpeg would paint the rest
  grey without an error (``jpeg_scan``).
* EXIF is kept (``ImageInfo.exif``) without what could show the uncloaked face: the
  thumbnail (IFD1), maker notes (vendors hide preview JPEGs there) and XMP.  XMP and MPF
  previews of the file are never read into ``ImageInfo`` at all.
"""
from __future__ import annotations

import io
import os
import struct
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from .jpeg_scan import short_scan

__all__ = [
    "FORMATS", "IMAGE_SUFFIXES", "ImageError", "ImageInfo", "MAX_PIXELS", "load_image",
    "load_image_with_meta", "encode_image", "decode_image",
]

#: Largest accepted image (pixels).  A 50 MP (even a 100 MP medium-format) photo passes;
#: larger is refused.  Kept below PIL's own hard limit (2 * Image.MAX_IMAGE_PIXELS ~ 179 MP)
#: so this guard, not PIL's, is the one that applies.
MAX_PIXELS = 150_000_000
#: Largest file read (bytes): the whole file is read before decoding, so a huge non-image (a
#: video named .jpg) must not be.  An uncompressed 150 MP 16-bit TIFF is 0.9 GB.
MAX_FILE_BYTES = 2 * 2**30

#: File suffixes read as images when a folder is listed (any file named explicitly is tried).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".heic", ".heif", ".gif",
                            ".bmp", ".tif", ".tiff"})

_EXIF_ORIENTATION = 0x0112
_heif_lock = threading.Lock()
_heif_done = False


class ImageError(ValueError):
    """An input image could not be read (which file, what is wrong)."""


@dataclass
class ImageInfo:
    """What ``load_image_with_meta`` kept of the original file."""
    format: str | None            # PIL format name ("JPEG", "PNG", ...) or None for arrays
    mode: str | None              # original PIL mode ("RGB", "CMYK", "I;16", ...)
    size: tuple[int, int]         # (width, height) of the *returned* (transposed) image
    original_size: tuple[int, int]  # (width, height) as stored in the file
    icc_profile: bytes | None = None
    exif: bytes | None = None     # EXIF with Orientation reset to 1 (pixels are upright)
    n_frames: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


def _register_heif() -> None:
    global _heif_done
    if _heif_done:
        return
    with _heif_lock:
        if _heif_done:
            return
        try:
            import pillow_heif  # type: ignore
            pillow_heif.register_heif_opener()
        except Exception:  # pragma: no cover - optional
            pass
        _heif_done = True


def _source_label(src: Any) -> str:
    """How an error message names the input: its path, or its kind and size."""
    if isinstance(src, (str, os.PathLike)):
        return f"'{os.fspath(src)}'"
    if isinstance(src, (bytes, bytearray, memoryview)):
        return f"<{len(src)} bytes>"
    if isinstance(src, np.ndarray):
        return f"<array {src.shape} {src.dtype}>"
    if isinstance(src, Image.Image):
        return f"<PIL image {src.mode} {src.size}>"
    name = getattr(src, "name", None)
    return f"'{name}'" if isinstance(name, str) else f"<{type(src).__name__}>"


# ----------------------------------------------------------------------------- arrays

def _scale16(a: np.ndarray) -> np.ndarray:
    a = np.clip(a.astype(np.float64), 0, 65535)
    return np.rint(a * (255.0 / 65535.0)).astype(np.uint8)


def _to_uint8(a: np.ndarray, what: str) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if a.dtype == np.uint16:
        return _scale16(a)
    if np.issubdtype(a.dtype, np.integer):
        mx = int(a.max()) if a.size else 0
        if mx > 255:
            return _scale16(a)
        return np.clip(a, 0, 255).astype(np.uint8)
    if np.issubdtype(a.dtype, np.floating):
        f = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if f.size and f.max() <= 1.0:
            f = f * 255.0
        return np.rint(np.clip(f, 0, 255)).astype(np.uint8)
    raise ImageError(f"{what}: unsupported array dtype {a.dtype}")


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float32)[..., None] / 255.0
    out = rgb.astype(np.float32) * a + 255.0 * (1.0 - a)
    return np.rint(out).astype(np.uint8)


def _array_to_rgb(a: np.ndarray, what: str) -> np.ndarray:
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        g = _to_uint8(a, what)
        out = np.repeat(g[..., None], 3, axis=2)
    elif a.ndim == 3 and a.shape[2] in (3, 4):
        u = _to_uint8(a, what)
        out = u[..., :3] if a.shape[2] == 3 else _over_white(u[..., :3], u[..., 3])
    elif a.ndim == 3 and a.shape[2] == 2:  # gray + alpha
        u = _to_uint8(a, what)
        out = np.repeat(_over_white(u[..., :1], u[..., 1]), 3, axis=2)
    else:
        raise ImageError(f"{what}: expected an H×W, H×W×3 or H×W×4 array, got shape {a.shape}")
    if out.shape[0] == 0 or out.shape[1] == 0:
        raise ImageError(f"{what}: empty image {a.shape}")
    if out.shape[0] * out.shape[1] > MAX_PIXELS:
        raise ImageError(f"{what}: {out.shape[1]}×{out.shape[0]} exceeds MAX_PIXELS={MAX_PIXELS}")
    return np.ascontiguousarray(out)


# ----------------------------------------------------------------------------- PIL

def _pil_to_rgb(img: Image.Image, what: str) -> np.ndarray:
    mode = img.mode
    if mode == "RGB":
        return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(img)
        if mode == "F":
            return _array_to_rgb(a.astype(np.float32), what)
        if mode.startswith("I;16"):
            return _array_to_rgb(a.astype(np.uint16), what)
        return _array_to_rgb(a.astype(np.int64), what)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
            mode in ("P", "L", "RGB", "1") and "transparency" in img.info):
        rgba = img.convert("RGBA")
        a = np.asarray(rgba, dtype=np.uint8)
        return np.ascontiguousarray(_over_white(a[..., :3], a[..., 3]))
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))


def _open_pil(src: Any, what: str) -> Image.Image:
    """Open and fully decode ``src`` (first frame), raising ImageError on any problem."""
    _register_heif()
    if isinstance(src, (str, os.PathLike)):
        p = Path(src)
        if not p.exists():
            raise ImageError(f"{what}: file not found")
        if p.is_dir():
            raise ImageError(f"{what}: is a directory, not an image")
        try:
            size = p.stat().st_size
            if size > MAX_FILE_BYTES:
                raise ImageError(f"{what}: {size / 2**30:.1f} GiB is larger than any photo "
                                 f"(MAX_FILE_BYTES={MAX_FILE_BYTES / 2**30:.0f} GiB)")
            data = p.read_bytes()
        except OSError as e:
            raise ImageError(f"{what}: cannot read ({e.strerror or e})") from e
    elif isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
    elif hasattr(src, "read"):
        try:
            data = src.read()
        except Exception as e:
            raise ImageError(f"{what}: cannot read stream ({e})") from e
        if isinstance(data, str):
            raise ImageError(f"{what}: stream is opened in text mode; open it with 'rb'")
    else:
        raise ImageError(f"{what}: unsupported source type {type(src).__name__}")
    if not data:
        raise ImageError(f"{what}: file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w <= 0 or h <= 0:
                raise ImageError(f"{what}: image has zero size {w}×{h}")
            if w * h > MAX_PIXELS:
                raise ImageError(
                    f"{what}: {w}×{h} = {w * h / 1e6:.0f} MP exceeds MAX_PIXELS="
                    f"{MAX_PIXELS / 1e6:.0f} MP (decompression-bomb guard)")
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)
            img.load()
            short = short_scan(data) if img.format in ("JPEG", "MPO") else None
            if short:
                raise ImageError(f"{what}: corrupt or unreadable image ({short})")
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"{what}: too many pixels, exceeds MAX_PIXELS "
                         f"(decompression-bomb guard: {e})") from e
    except Image.UnidentifiedImageError as e:
        raise ImageError(f"{what}: not a recognised image format") from e
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError,
            struct.error, MemoryError) as e:
        msg = str(e) or type(e).__name__
        if "truncated" in msg.lower():  # Pillow's own message already says so
            raise ImageError(f"{what}: {msg}") from e
        raise ImageError(f"{what}: corrupt or unreadable image ({msg})") from e
    return img


# Tags that can carry a preview of the uncloaked photo: the thumbnail's offset and length
# (IFD0 in some writers), XMP (may embed a preview) and, in the Exif IFD, the maker note.
_PREVIEW_TAGS = (0x0201, 0x0202, 0x02BC)
_EXIF_IFD, _MAKER_NOTE = 0x8769, 0x927C


def _exif_to_keep(img: Image.Image) -> bytes | None:
    """The image's EXIF, rebuilt with Orientation 1 (the pixels are upright) and without
    anything that could show the uncloaked face: Pillow writes IFD0 and its sub-IFDs only, so
    the thumbnail (IFD1) goes; preview tags and the maker note are dropped. Never mutates
    ``img`` (its cached Exif drives ``exif_transpose``)."""
    try:
        raw = img.info.get("exif") or img.getexif().tobytes()
        ex = Image.Exif()
        ex.load(raw)
        if not len(ex):
            return None
        if _EXIF_ORIENTATION in ex:
            ex[_EXIF_ORIENTATION] = 1
        for tag in _PREVIEW_TAGS:
            ex.pop(tag, None)
        if _EXIF_IFD in ex:
            ex.get_ifd(_EXIF_IFD).pop(_MAKER_NOTE, None)
        return ex.tobytes()
    except Exception:  # unreadable EXIF: keep none rather than fail the photo
        return None


def load_image_with_meta(src: Any) -> tuple[np.ndarray, ImageInfo]:
    """Like ``load_image`` and also return an ``ImageInfo`` with format, mode, size,
    ICC profile and EXIF (Orientation reset to 1, since pixels are returned upright)."""
    what = _source_label(src)
    if isinstance(src, np.ndarray):
        rgb = _array_to_rgb(src, what)
        if np.shares_memory(rgb, src):      # never hand back a view of the caller's array
            rgb = rgb.copy()
        h, w = rgb.shape[:2]
        return rgb, ImageInfo(format=None, mode=None, size=(w, h), original_size=(w, h))
    if isinstance(src, Image.Image):
        img = src
        try:
            img.load()
        except Exception as e:
            raise ImageError(f"{what}: cannot decode PIL image ({e})") from e
        if img.size[0] * img.size[1] > MAX_PIXELS:
            raise ImageError(f"{what}: exceeds MAX_PIXELS={MAX_PIXELS}")
    else:
        img = _open_pil(src, what)
    fmt, mode, osize = img.format, img.mode, img.size
    n_frames = int(getattr(img, "n_frames", 1) or 1)
    icc = img.info.get("icc_profile") or None
    exif = _exif_to_keep(img)
    try:
        up = ImageOps.exif_transpose(img)
        if up is None:  # pragma: no cover - older Pillow with in_place semantics
            up = img
        rgb = _pil_to_rgb(up, what)
    except ImageError:
        raise
    except Exception as e:
        raise ImageError(f"{what}: cannot convert {mode} image to RGB ({e})") from e
    h, w = rgb.shape[:2]
    return rgb, ImageInfo(format=fmt, mode=mode, size=(w, h), original_size=osize,
                          icc_profile=icc, exif=exif, n_frames=n_frames)


def load_image(src: Any) -> np.ndarray:
    """Load ``src`` (path, bytes, file-like, PIL image or ndarray) as uint8 H×W×3 RGB."""
    return load_image_with_meta(src)[0]


def decode_image(data: bytes) -> np.ndarray:
    """Decode encoded bytes (as written by ``encode_image``) to uint8 RGB."""
    return load_image(bytes(data))


# ----------------------------------------------------------------------------- saving

#: output format name -> PIL format
FORMATS = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP"}


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    a = np.asarray(rgb)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected a uint8 H×W×3 RGB array, got {a.dtype} {a.shape}")
    return np.ascontiguousarray(a)


def encode_image(rgb: np.ndarray, format: str = "png", quality: int = 95,
                 exif: bytes | None = None, icc_profile: bytes | None = None) -> bytes:
    """Encode uint8 RGB to PNG/JPEG/WebP bytes.  No metadata unless given.

    JPEG uses 4:4:4 chroma (no subsampling) so the small cloak perturbation survives;
    WebP with quality=100 is lossless.
    """
    fmt = FORMATS.get(format.lower().lstrip("."))
    if fmt is None:
        raise ValueError(f"unsupported output format {format!r}; use png, jpeg or webp")
    img = Image.fromarray(_check_rgb(rgb), "RGB")
    kw: dict[str, Any] = {}
    if fmt == "JPEG":
        kw.update(quality=int(quality), subsampling=0, optimize=True)
    elif fmt == "WEBP":
        kw.update(quality=int(quality), method=4, lossless=int(quality) >= 100)
    elif fmt == "PNG":
        kw.update(compress_level=6)
    if exif:
        kw["exif"] = exif
    if icc_profile:
        kw["icc_profile"] = icc_profile
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()
