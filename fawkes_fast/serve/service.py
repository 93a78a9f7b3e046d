"""What the endpoints share: settings, the warm Cloaker, the batcher, the limits, counters, drain state."""
from __future__ import annotations

import asyncio
import hmac
import secrets
import sys
import threading
import time

from fastapi import Request

from ..cloaker import check_target
from ..evaluate.judges import missing as missing_judges
from ..optimize.modes import extractors_for
from .admission import PixelBudget, Reservation, queue_full
from .batcher import Job, MicroBatcher, QueueFull
from .config import ServeConfig
from .limits import BodyLimits, Problem
from .metrics import Metrics


class BatchCancelled(Exception):
    """The batch's clients all left, or the server is stopping: its optimiser stopped early."""


def stop_when(cancel):
    """An `on_step` for Cloaker.cloak that ends the optimisation at the first step after `cancel` is set."""
    def on_step(_active: int) -> None:
        if cancel.is_set():
            raise BatchCancelled("stopped: nobody is waiting for this batch")
    return on_step


class Service:
    def __init__(self, config: ServeConfig, cloaker_factory=None):
        self.config = config
        self.token = config.token()
        self.metrics = Metrics()
        self.cloaker = None  # the default mode's, warmed at start-up; other extractor sets load on first use
        self._cloakers: dict[tuple, object] = {}
        self._cloakers_lock = threading.Lock()
        self.load_error: str | None = None
        self.draining = False
        self.stopping = False  # the drain's time is up: what is still in flight is answered 503
        self.in_flight = 0  # POST /v1/cloak handlers running, uploads included (what a drain waits for)
        self.torch_threads: int | None = None  # set by the server before the models load
        self.batcher: MicroBatcher | None = None
        self.pixels = PixelBudget(config.max_pixels_in_flight, self.metrics.pixels_in_flight)
        self.body_limits = BodyLimits(config.max_bytes, config.body_timeout_s, config.min_body_rate)
        self._handlers: set[asyncio.Task] = set()
        self._factory = cloaker_factory or self._default_cloaker
        self.judge = not missing_judges()  # say how visible each cloak is, when the judges are installed

    def _default_cloaker(self, extractors: tuple):
        from ..cloaker import Cloaker

        return Cloaker(mode=self.config.mode, extractors=extractors, device=self.config.device,
                       batch_across_photos=self.config.batch_across_photos)

    def extractors_for(self, mode: str) -> tuple:
        """--extractor's list for every mode, or the mode's own (`high`: the joint cloak)."""
        return extractors_for(mode, self.config.extractors)

    def cloaker_for(self, mode: str):
        """The Cloaker of `mode`'s extractors; one not warmed at start-up loads here, on first use
        (in the batch's worker thread: that first batch waits for the models)."""
        key = self.extractors_for(mode)
        with self._cloakers_lock:
            if key not in self._cloakers:
                self._cloakers[key] = self._factory(key)
            return self._cloakers[key]

    def start_batcher(self) -> None:
        c = self.config
        self.batcher = MicroBatcher(self.run_batch, max_batch=c.max_batch, max_wait_s=c.max_wait_ms / 1000,
                                    max_queue=c.max_queue, workers=c.workers, metrics=self.metrics)
        self.batcher.start()

    def load(self) -> None:
        """Build and warm the Cloaker (runs in a thread: the server answers /healthz meanwhile)."""
        try:
            cloaker = self.cloaker_for(self.config.mode)
            _warm(cloaker)
            self.cloaker = cloaker
            self.metrics.ready.set(1)
            print(f"fawkes-fast serve: models ready on {cloaker.device}", file=sys.stderr, flush=True)
        except Exception as e:  # noqa: BLE001 - reported by /readyz and every request
            self.load_error = f"{type(e).__name__}: {e}"
            print(f"fawkes-fast serve: models failed to load: {self.load_error}", file=sys.stderr, flush=True)

    def run_batch(self, key, rgbs, seeds, cancel):
        mode, fmt, quality, target = key
        return self.cloaker_for(mode).cloak(rgbs, seed=seeds, mode=mode, format=fmt, quality=quality,
                                            target=target, on_step=stop_when(cancel), judge=self.judge)

    def check_target(self, target: str, mode: str) -> None:
        """400 for a target no photo of `mode` could be cloaked toward (an identity the bank lacks)."""
        try:
            check_target(target, self.extractors_for(mode))
        except ValueError as e:
            raise Problem(400, "bad_request", f"target: {e}") from None

    # ------------------------------------------------------------------ admission
    def authorise(self, request: Request) -> None:
        if self.token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token.encode())
        if not ok:
            raise Problem(401, "unauthorized", "a valid 'Authorization: Bearer <token>' header is required",
                          {"WWW-Authenticate": 'Bearer realm="fawkes-fast"'})

    def refuse_if_unavailable(self) -> None:
        """503 before the body is read: draining, or the models not loaded."""
        if self.draining:
            raise Problem(503, "shutting_down", "the server is shutting down", {"Retry-After": "5"})
        if self.cloaker is None:
            why = f"the models failed to load ({self.load_error})" if self.load_error else "the models are loading"
            raise Problem(503, "not_ready", why, {"Retry-After": "5"})

    def admit(self, pixels: int) -> Reservation:
        """Once the body is in and its header read: a place in the queue and room for its pixels, or 429."""
        if self.batcher.queue_full():
            raise self._queue_full()
        return self.pixels.reserve(pixels, self.batcher.estimated_wait())

    def submit(self, job: Job):
        try:
            return self.batcher.submit(job)
        except QueueFull:
            raise self._queue_full() from None

    def _queue_full(self) -> Problem:
        return queue_full(self.batcher.queued, self.config.max_queue, self.batcher.estimated_wait())

    def new_seed(self) -> int:
        return secrets.randbelow(2**31)

    # ------------------------------------------------------------------ handlers and shutdown
    def track(self, task: asyncio.Task) -> None:
        self.in_flight += 1
        self._handlers.add(task)

    def untrack(self, task: asyncio.Task) -> None:
        self.in_flight -= 1
        self._handlers.discard(task)

    def begin_drain(self) -> None:
        self.draining = True
        self.metrics.draining.set(1)

    async def drained(self, timeout: float) -> bool:
        """Wait until no request is in flight (or `timeout`); True if all finished."""
        end = time.monotonic() + timeout
        while self.in_flight > 0 and time.monotonic() < end:
            await asyncio.sleep(0.05)
        return self.in_flight == 0

    async def stop_in_flight(self, timeout: float) -> None:
        """The drain's time is up: running batches stop at their next step, and every request still
        in flight is answered 503 (its handler is cancelled and answers for itself)."""
        self.stopping = True
        if self.batcher is not None:
            self.batcher.cancel_running()
        for task in list(self._handlers):
            task.cancel()
        await self.drained(timeout)


def _warm(cloaker) -> None:
    """Load detector, extractors and target bank, and trace the step once, so the first request is not slow."""
    import numpy as np

    try:
        from skimage import data

        photo = data.astronaut()
    except Exception:  # noqa: BLE001 - warming is an optimisation only
        photo = np.full((64, 64, 3), 128, np.uint8)
    cloaker.cloak(photo, seed=0, steps=1)
