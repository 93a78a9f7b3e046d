"""One POST /v1/cloak, from its options and body to its answer (see app.py for the routes)."""
from __future__ import annotations

import asyncio
import sys
import time

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartParser

from .batcher import Job
from .config import FORMATS, MODES
from .limits import ClientLeft, Problem, check_declared_length, check_header, decode, read_body
from .responses import problem_response, result_response

OPTIONS = ("mode", "format", "quality", "seed", "target")


def parse_options(query, default_mode: str) -> tuple[str, str, int, int | None, str]:
    unknown = sorted(set(query) - set(OPTIONS))
    if unknown:
        raise Problem(400, "bad_request", f"unknown option(s): {', '.join(unknown)} (known: {', '.join(OPTIONS)})")
    mode = query.get("mode", default_mode)
    fmt = query.get("format", "png").lower().replace("jpg", "jpeg")
    if mode not in MODES:
        raise Problem(400, "bad_request", f"mode must be one of {', '.join(MODES)}")
    if fmt not in FORMATS:
        raise Problem(400, "bad_request", f"format must be one of {', '.join(FORMATS)}")
    try:
        quality = int(query.get("quality", 95))
        seed = int(query["seed"]) if "seed" in query else None
    except ValueError:
        raise Problem(400, "bad_request", "quality and seed must be whole numbers") from None
    if not 1 <= quality <= 100 or (seed is not None and not 0 <= seed < 2**32):
        raise Problem(400, "bad_request", "quality must be in 1..100 and seed in 0..2^32-1")
    target = query.get("target", "max")
    if not target or len(target) > 200 or not target.isprintable():
        raise Problem(400, "bad_request", "target must be max, average, none or a target bank identity's name")
    return mode, fmt, quality, seed, target


async def _single(body: bytes):
    yield body


async def read_upload(service, request: Request) -> bytes:
    """The image bytes: the raw body, or the multipart field `file`. Size capped before reading;
    the read has its own deadline and minimum rate (see limits.read_body)."""
    check_declared_length(request.headers, service.body_limits.max_bytes)
    service.metrics.uploads.inc()
    try:
        body = await read_body(request.receive, service.body_limits)
    finally:
        service.metrics.uploads.dec()
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        return body
    try:
        form = await MultiPartParser(request.headers, _single(body), max_files=1, max_fields=8).parse()
    except Exception:  # noqa: BLE001 - a malformed form is the client's error
        raise Problem(400, "bad_request", "the multipart body could not be parsed") from None
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise Problem(400, "bad_request", "the multipart body has no file field named 'file'")
    data = await upload.read()
    await form.close()
    return data


async def _until_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def wait_result(service, request: Request, job: Job, deadline: float):
    """The batch's (result, batch size); 504 at the deadline; None if the client left first."""
    future = service.submit(job)
    watcher = asyncio.ensure_future(_until_disconnect(request))
    try:
        timeout = max(deadline - time.monotonic(), 0)
        done, _ = await asyncio.wait({future, watcher}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not future.done():  # the deadline, the client left, or shutdown cancelled this handler
            service.batcher.abandon(job)
    if future in done and not future.cancelled():
        return future.result()
    if watcher in done:
        return None
    raise Problem(504, "timeout", f"the photo was not cloaked within the {service.config.timeout_s:g} s deadline")


async def _answer(service, request: Request):
    service.authorise(request)
    service.refuse_if_unavailable()
    cfg = service.config
    mode, fmt, quality, seed, target = parse_options(request.query_params, cfg.mode)
    service.check_target(target, mode)
    data = await read_upload(service, request)
    arrived = time.monotonic()
    pixels = check_header(data, cfg.max_pixels)  # header only: cheap, before any pixel is decoded
    reservation = service.admit(pixels)  # from here on the request counts against the limits
    job = None
    try:
        rgb = await asyncio.to_thread(decode, data)
        del data
        seed = service.new_seed() if seed is None else seed
        job = Job(rgb, (mode, fmt, quality, target), seed, on_release=reservation.release)
        del rgb
        outcome = await wait_result(service, request, job, arrived + cfg.timeout_s)
    finally:
        if job is None or job.batch is None:  # else its running batch gives the pixels back when done
            reservation.release()
    if outcome is None:
        return None
    result, batch_size = outcome
    want_json = "application/json" in request.headers.get("accept", "")
    return result_response(result, fmt=fmt, seed=seed, batch_size=batch_size, want_json=want_json)


def _stopped() -> Problem:
    return Problem(503, "shutting_down", "the server stopped before this photo was done (its --drain-s ran out)",
                   {"Connection": "close"})


async def handle_cloak(service, request: Request):
    started = time.monotonic()
    task = asyncio.current_task()
    service.track(task)
    try:
        response = await _answer(service, request)
        status = response.headers.get("x-fawkes-status", "ok") if response is not None else "disconnected"
    except Problem as p:
        response, status = problem_response(p), p.status
    except ClientLeft:  # the client left while sending its body
        response, status = None, "disconnected"
    except asyncio.CancelledError:
        if not service.stopping:
            raise
        task.uncancel()  # the drain ran out and cancelled this handler: answer, as JSON, and go
        response, status = problem_response(_stopped()), "shutting_down"
    except Exception as e:  # noqa: BLE001 - logged; the client hears a plain 500
        print(f"fawkes-fast serve: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        response = problem_response(Problem(500, "error", "internal error"))
        status = "error"
    finally:
        service.untrack(task)
    code = response.status_code if response is not None else 499
    service.metrics.count(code, status, time.monotonic() - started)
    return response if response is not None else problem_response(Problem(499, "disconnected", "client left"))
