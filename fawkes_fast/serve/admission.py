"""What a request holds once its body is in, and the 429s that say which limit was reached.

A request is counted only after its whole body has arrived (a slow upload holds no place):
`--max-queue` counts requests waiting for a batch (`fawkes_queue_depth`), and
`--max-pixels-in-flight` counts the decoded pixels the server holds, from decoding until the
photo's batch is done with them (`fawkes_pixels_in_flight`). One photo alone always fits, so the
largest allowed image is never refused for its size alone.
"""
from __future__ import annotations

import math

from .limits import Problem


class PixelBudget:
    def __init__(self, limit: int, gauge=None):
        self.limit, self.used, self._gauge = limit, 0, gauge

    def reserve(self, pixels: int, retry_after_s: float) -> "Reservation":
        """Hold `pixels` for one photo, or 429 when they do not fit beside those already held."""
        if self.used and self.used + pixels > self.limit:
            raise busy(f"the server holds {self.used / 1e6:.1f} MP of decoded photos and this one has "
                       f"{pixels / 1e6:.1f} MP; the limit is {self.limit / 1e6:g} MP (--max-pixels-in-flight)",
                       retry_after_s)
        self._add(pixels)
        return Reservation(self, pixels)

    def _add(self, pixels: int) -> None:
        self.used += pixels
        if self._gauge is not None:
            self._gauge.set(self.used)


class Reservation:
    def __init__(self, budget: PixelBudget, pixels: int):
        self._budget, self.pixels = budget, pixels

    def release(self) -> None:
        """Give the pixels back (once; later calls do nothing)."""
        if self.pixels:
            self._budget._add(-self.pixels)
            self.pixels = 0


def queue_full(queued: int, limit: int, retry_after_s: float) -> Problem:
    return busy(f"the queue is full: {queued} requests are waiting for a batch (--max-queue {limit})",
                retry_after_s)


def busy(why: str, retry_after_s: float) -> Problem:
    retry = max(1, math.ceil(retry_after_s))
    return Problem(429, "busy", f"{why}; retry in about {retry} s", {"Retry-After": str(retry)})
