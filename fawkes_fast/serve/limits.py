"""Request limits, checked before any pixel is decoded, and the errors they raise.

Order: Content-Length against --max-bytes (413 before reading), then the body read with the
same cap (a chunked body without a length) and its own clock (408: the whole body within
--body-timeout-s, and after the first BODY_GRACE_S seconds at least --min-body-rate bytes per
second on average), then the image header alone (PIL's lazy open reads the size, not the pixels)
against --max-pixels (413), and only then a full decode (400 when the file is corrupt). Bytes that
no image reader recognises are 415.
"""
from __future__ import annotations

import asyncio
import io
import time
import warnings
from dataclasses import dataclass

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


#: seconds a body may take before --min-body-rate applies (connection set-up, a slow first packet)
BODY_GRACE_S = 10.0


class ClientLeft(Exception):
    """The client closed the connection while sending its body."""


@dataclass(frozen=True)
class BodyLimits:
    max_bytes: int
    timeout_s: float  # the whole body, from the first read
    min_rate: float  # bytes per second on average, after BODY_GRACE_S

    def deadline(self, received: int) -> float:
        """Seconds after the start by which more than `received` bytes must have come: every byte
        buys 1/min_rate s beyond the grace (a fast start is banked), within the overall timeout."""
        return min(self.timeout_s, BODY_GRACE_S + received / self.min_rate)


async def read_body(receive, limits: BodyLimits, clock=time.monotonic) -> bytes:
    """The whole body from the ASGI `receive`, refused as soon as it passes `max_bytes` (chunked
    uploads too) or falls behind its clock (408: a slow upload must not hold the server)."""
    parts, size, start = [], 0, clock()
    while True:
        left = start + limits.deadline(size) - clock()
        try:
            if left <= 0:
                raise asyncio.TimeoutError
            message = await asyncio.wait_for(receive(), left)
        except asyncio.TimeoutError:
            raise _too_slow(size, clock() - start, limits) from None
        if message["type"] == "http.disconnect":
            raise ClientLeft()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limits.max_bytes:
            raise Problem(413, "too_large", f"the request body is over the limit of {limits.max_bytes} bytes")
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


def _too_slow(size: int, seconds: float, limits: BodyLimits) -> Problem:
    return Problem(408, "slow_upload",
                   f"the body was too slow: {size} bytes in {seconds:.1f} s; the server needs the whole body "
                   f"within {limits.timeout_s:g} s (--body-timeout-s) and, after the first {BODY_GRACE_S:g} s, "
                   f"at least {limits.min_rate:g} bytes/s (--min-body-rate)", {"Connection": "close"})


def check_header(data: bytes, max_pixels: int) -> int:
    """Read only the image header: its format (415 if none) and size (413 if too many pixels).
    Returns the pixel count."""
    if not data:
        raise Problem(400, "bad_request", "the request has no image (empty body)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:  # lazy: the pixels are not decoded here
                w, h = img.size
    except Image.DecompressionBombError:
        raise Problem(413, "too_large", "the image has too many pixels") from None
    except Exception:  # noqa: BLE001 - whatever PIL says, no reader knows these bytes
        raise Problem(415, "not_an_image", "the body is not an image PIL can read "
                                           "(send PNG, JPEG, WebP, GIF, TIFF, BMP or HEIC bytes)") from None
    if w * h > max_pixels:
        raise Problem(413, "too_large", f"the image is {w}x{h} = {w * h} pixels; the limit is {max_pixels}")
    return w * h


def decode(data: bytes):
    """Full decode (EXIF orientation applied, metadata dropped): uint8 RGB, or 400."""
    try:
        rgb, _info = load_image_with_meta(data)
    except ImageError as e:
        raise Problem(400, "undecodable", f"the image could not be decoded: {str(e).split(': ', 1)[-1]}") from None
    return rgb
