"""The FastAPI app: /v1/cloak, /healthz, /readyz, /metrics, /v1/info and the page at /.

`create_app(config)` loads the models in a background thread at start-up (so /healthz answers at
once and /readyz says when they are warm). Every refusal is JSON {"status", "message"} with the
right code; nothing ever answers with a traceback.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import secrets
import sys
import threading
import time
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response

from .batcher import Job, MicroBatcher, QueueFull
from .config import MODES, ServeConfig
from .limits import Problem
from .metrics import Metrics
from .responses import problem_response
from .service_request import handle_cloak


class Service:
    """What the endpoints share: settings, the warm Cloaker, the batcher, counters, drain state."""

    def __init__(self, config: ServeConfig, cloaker_factory=None):
        self.config = config
        self.token = config.token()
        self.metrics = Metrics()
        self.cloaker = None
        self.load_error: str | None = None
        self.draining = False
        self.in_flight = 0
        self.batcher: MicroBatcher | None = None
        self._factory = cloaker_factory or self._default_cloaker

    def _default_cloaker(self):
        from ..cloaker import Cloaker

        return Cloaker(mode=self.config.mode, extractors=self.config.extractors, device=self.config.device,
                       batch_across_photos=self.config.batch_across_photos)

    def load(self) -> None:
        """Build and warm the Cloaker (runs in a thread: the server answers /healthz meanwhile)."""
        try:
            cloaker = self._factory()
            _warm(cloaker)
            self.cloaker = cloaker
            self.metrics.ready.set(1)
            print(f"fawkes-fast serve: models ready on {cloaker.device}", file=sys.stderr, flush=True)
        except Exception as e:  # noqa: BLE001 - reported by /readyz and every request
            self.load_error = f"{type(e).__name__}: {e}"
            print(f"fawkes-fast serve: models failed to load: {self.load_error}", file=sys.stderr, flush=True)

    def run_batch(self, key, rgbs, seeds):
        mode, fmt, quality = key
        return self.cloaker.cloak(rgbs, seed=seeds, mode=mode, format=fmt, quality=quality)

    def authorise(self, request: Request) -> None:
        if self.token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token.encode())
        if not ok:
            raise Problem(401, "unauthorized", "a valid 'Authorization: Bearer <token>' header is required",
                          {"WWW-Authenticate": 'Bearer realm="fawkes-fast"'})

    def admit(self) -> None:
        """Refuse before the body is read: when draining, loading, or when too many requests are
        already being read, decoded or queued (this bounds the memory uploads can take)."""
        if self.draining:
            raise Problem(503, "shutting_down", "the server is shutting down", {"Retry-After": "5"})
        if self.cloaker is None:
            why = f"the models failed to load ({self.load_error})" if self.load_error else "the models are loading"
            raise Problem(503, "not_ready", why, {"Retry-After": "5"})
        if self.in_flight > self.config.max_queue + self.config.max_batch * self.config.workers:
            raise self._busy()

    def begin_drain(self) -> None:
        self.draining = True
        self.metrics.draining.set(1)

    async def drained(self, timeout: float) -> bool:
        """Wait until no request is in flight (or `timeout`); True if all finished."""
        end = time.monotonic() + timeout
        while self.in_flight > 0 and time.monotonic() < end:
            await asyncio.sleep(0.05)
        return self.in_flight == 0

    def submit(self, job: Job):
        try:
            return self.batcher.submit(job)
        except QueueFull:
            raise self._busy() from None

    def _busy(self) -> Problem:
        retry = max(1, round(self.batcher.estimated_wait()))
        return Problem(429, "busy", f"the queue is full ({self.config.max_queue} requests); retry later",
                       {"Retry-After": str(retry)})

    def new_seed(self) -> int:
        return secrets.randbelow(2**31)


def _warm(cloaker) -> None:
    """Load detector, extractors and target bank, and trace the step once, so the first request is not slow."""
    import numpy as np

    try:
        from skimage import data

        photo = data.astronaut()
    except Exception:  # noqa: BLE001 - warming is an optimisation only
        photo = np.full((64, 64, 3), 128, np.uint8)
    cloaker.cloak(photo, seed=0, steps=1)


def _page() -> str:
    return resources.files(__package__).joinpath("page", "index.html").read_text(encoding="utf-8")


def create_app(config: ServeConfig, cloaker_factory=None) -> FastAPI:
    service = Service(config, cloaker_factory)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.batcher = MicroBatcher(service.run_batch, max_batch=config.max_batch,
                                       max_wait_s=config.max_wait_ms / 1000, max_queue=config.max_queue,
                                       workers=config.workers, metrics=service.metrics)
        service.batcher.start()
        threading.Thread(target=service.load, name="fawkes-load", daemon=True).start()
        yield
        await service.batcher.stop()

    app = FastAPI(title="fawkes-fast", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    _routes(app, service)
    return app


def _routes(app: FastAPI, service: Service) -> None:
    page = _page()

    @app.exception_handler(Problem)
    async def on_problem(request, exc: Problem):
        return problem_response(exc)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request, exc):
        return problem_response(Problem(400, "bad_request", "the request is not valid"))

    @app.exception_handler(Exception)
    async def on_crash(request, exc):  # the body never carries a traceback
        print(f"fawkes-fast serve: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return JSONResponse({"status": "error", "message": "internal error"}, status_code=500)

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        if service.cloaker is None or service.draining:
            return JSONResponse({"status": "not_ready", "draining": service.draining, "error": service.load_error},
                                status_code=503)
        return {"status": "ready", "device": str(service.cloaker.device)}

    @app.get("/v1/info")
    async def info():
        c = service.config
        return {"modes": list(MODES), "default_mode": c.mode, "formats": ["png", "jpeg", "webp"],
                "max_bytes": c.max_bytes, "max_pixels": c.max_pixels, "max_batch": c.max_batch,
                "token_required": service.token is not None, "ready": service.cloaker is not None}

    @app.get("/metrics")
    async def metrics(request: Request):
        service.authorise(request)
        return Response(service.metrics.render(), media_type=service.metrics.content_type)

    @app.post("/v1/cloak")
    async def cloak(request: Request):
        return await handle_cloak(service, request)
