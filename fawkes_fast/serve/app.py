"""The FastAPI app: /v1/cloak, /healthz, /readyz, /metrics, /v1/info and the page at /.

`create_app(config)` loads the models in a background thread at start-up (so /healthz answers at
once and /readyz says when they are warm). Every request passes the Host/Origin guard first. Every
refusal is JSON {"status", "message"} with the right code; nothing ever answers with a traceback.
"""
from __future__ import annotations

import contextlib
import sys
import threading

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response

from .config import MODES, ServeConfig
from .guard import HostGuard, allowed_hosts
from .limits import Problem
from .page import page_headers, page_html
from .responses import problem_response
from .service import Service
from .service_request import handle_cloak


def create_app(config: ServeConfig, cloaker_factory=None) -> FastAPI:
    service = Service(config, cloaker_factory)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.start_batcher()
        threading.Thread(target=service.load, name="fawkes-load", daemon=True).start()
        yield
        await service.batcher.stop()

    app = FastAPI(title="fawkes-fast", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    app.add_middleware(HostGuard, allowed=allowed_hosts(config.host, config.allow_hosts))
    _routes(app, service)
    return app


def _routes(app: FastAPI, service: Service) -> None:
    page = page_html()
    headers = page_headers(page)

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
        return HTMLResponse(page, headers=headers)

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
                "max_queue": c.max_queue, "max_pixels_in_flight": c.max_pixels_in_flight,
                "body_timeout_s": c.body_timeout_s, "min_body_rate": c.min_body_rate, "workers": c.workers,
                "torch_threads": service.torch_threads,
                "token_required": service.token is not None, "ready": service.cloaker is not None}

    @app.get("/metrics")
    async def metrics(request: Request):
        service.authorise(request)
        return Response(service.metrics.render(), media_type=service.metrics.content_type)

    @app.post("/v1/cloak")
    async def cloak(request: Request):
        return await handle_cloak(service, request)
