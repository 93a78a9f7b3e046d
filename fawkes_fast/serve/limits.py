"""Request limits, checked before any pixel is decoded, and the errors they raise.

Order: Content-Length against --max-bytes (413 before reading), then the body read with the
same cap (a chunked body without a length), then the image header alone (PIL's lazy open reads
the size, not the pixels) against --max-pixels (413), and only then a full decode (400 when the
file is corrupt). Bytes that no image reader recognises are 415.
"""
from __future__ import annotations

import io
import warnings

from PIL import Image

from ..io.images import ImageError, load_image_with_meta


class Problem(Exception):
    """An HTTP error answered as JSON {"status": ..., "message": ...}; never a traceback."""

    def __init__(self, code: int, status: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.code, self.status, self.message = code, status, message
        self.headers = headers or {}


def check_declared_length(headers, max_bytes: int) -> None:
    length = headers.get("content-length")
    if length is None:
        return
    if not length.strip().isdigit():
        raise Problem(400, "bad_request", "Content-Length is not a number")
    if int(length) > max_bytes:
        raise Problem(413, "too_large", f"the request body is {int(length)} bytes; the limit is {max_bytes}")


async def read_capped(stream, max_bytes: int) -> bytes:
    """The whole body, refusing it as soon as it passes `max_bytes` (chunked uploads too)."""
    parts, size = [], 0
    async for chunk in stream:
        size += len(chunk)
        if size > max_bytes:
            raise Problem(413, "too_large", f"the request body is over the limit of {max_bytes} bytes")
        parts.append(chunk)
    return b"".join(parts)


def check_header(data: bytes, max_pixels: int) -> str:
    """Read only the image header: its format (415 if none) and size (413 if too many pixels)."""
    if not data:
        raise Problem(400, "bad_request", "the request has no image (empty body)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:  # lazy: the pixels are not decoded here
                fmt, (w, h) = img.format, img.size
    except Image.DecompressionBombError:
        raise Problem(413, "too_large", "the image has too many pixels") from None
    except Exception:  # noqa: BLE001 - whatever PIL says, no reader knows these bytes
        raise Problem(415, "not_an_image", "the body is not an image PIL can read "
                                           "(send PNG, JPEG, WebP, GIF, TIFF, BMP or HEIC bytes)") from None
    if w * h > max_pixels:
        raise Problem(413, "too_large", f"the image is {w}x{h} = {w * h} pixels; the limit is {max_pixels}")
    return fmt


def decode(data: bytes):
    """Full decode (EXIF orientation applied, metadata dropped): uint8 RGB, or 400."""
    try:
        rgb, _info = load_image_with_meta(data)
    except ImageError as e:
        raise Problem(400, "undecodable", f"the image could not be decoded: {str(e).split(': ', 1)[-1]}") from None
    return rgb
