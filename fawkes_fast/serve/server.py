"""Run the app under uvicorn, draining gracefully on SIGTERM or Ctrl-C.

First signal: new requests get 503 (Retry-After) while those in flight finish. Whatever is still in
flight a little before --drain-s is up gets a JSON 503, its batch stops at the optimiser's next step,
and uvicorn shuts down, so the process exits within --drain-s (give or take a step). A second
signal does the same at once.
"""
from __future__ import annotations

import asyncio
import sys
import threading
import webbrowser

import uvicorn

from . import threads
from .app import create_app
from .config import ServeConfig
from .guard import WILDCARD_BINDS


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, service):
        super().__init__(config)
        self.service = service
        self._loop = None

    async def startup(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig, frame) -> None:
        if self._loop is None:  # not started yet: nothing in flight
            self.service.begin_drain()
            return super().handle_exit(sig, frame)
        # a signal handler may interrupt the loop anywhere: hand over through the thread-safe door
        if self.service.draining or self.should_exit:  # second signal: stop now
            self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._stop(0.0)))
            return
        print("fawkes-fast serve: draining (new requests get 503)", file=sys.stderr, flush=True)
        self.service.begin_drain()
        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._drain()))

    async def _drain(self) -> None:
        drain_s = self.service.config.drain_s
        if not await self.service.drained(drain_s - drain_reserve(drain_s)):
            print(f"fawkes-fast serve: {self.service.in_flight} request(s) still running near the end of "
                  f"--drain-s {drain_s:g} s; answering them 503 and stopping", file=sys.stderr, flush=True)
            await self._stop(drain_reserve(drain_s) / 2)
        self.should_exit = True

    async def _stop(self, answer_s: float) -> None:
        await self.service.stop_in_flight(max(answer_s, 0.5))  # the handlers answer 503 and return
        self.should_exit = True


def drain_reserve(drain_s: float) -> float:
    """Seconds kept at the end of --drain-s to answer what is left, stop its batch and exit."""
    return min(2.0, drain_s / 4)


def page_url(config: ServeConfig) -> str:
    host = "127.0.0.1" if config.host in WILDCARD_BINDS else config.host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{config.port}/"


def _open_when_up(server: uvicorn.Server, url: str) -> None:
    def wait_and_open():
        while not server.started and not server.should_exit:
            threading.Event().wait(0.1)
        if server.started:
            webbrowser.open(url)
    threading.Thread(target=wait_and_open, daemon=True).start()


def run(config: ServeConfig) -> int:
    try:
        config.token()  # a missing or empty token file is a clear error, not a traceback
    except (OSError, ValueError) as e:
        print(f"fawkes-fast serve: token file: {e}", file=sys.stderr)
        return 2
    app = create_app(config)
    service = app.state.service
    service.torch_threads = threads.apply(config.torch_threads, config.workers)  # before any thread uses torch
    uv = uvicorn.Config(app, host=config.host, port=config.port, log_level="warning", access_log=False,
                        timeout_graceful_shutdown=1, server_header=False)  # after our own drain has answered all
    server = DrainingServer(uv, service)
    print(f"fawkes-fast serve: {page_url(config)} (loading models; /readyz says when ready; "
          f"{service.torch_threads} torch thread(s) for {config.workers} worker(s))", file=sys.stderr, flush=True)
    if config.host in WILDCARD_BINDS and not config.allow_hosts:
        print("fawkes-fast serve: listening on every interface, but only Host names localhost/127.0.0.1/::1 "
              "are served; add --allow-host NAME for the names other machines use", file=sys.stderr, flush=True)
    if config.open_browser:
        _open_when_up(server, page_url(config))
    server.run()
    return 0 if server.started else 1
