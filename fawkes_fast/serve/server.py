"""Run the app under uvicorn, draining gracefully on SIGTERM or Ctrl-C.

First signal: new requests get 503 (Retry-After) while those in flight finish, for up to
--drain-s seconds; then uvicorn shuts down. A second signal stops at once.
"""
from __future__ import annotations

import asyncio
import sys
import threading
import webbrowser

import uvicorn

from .app import create_app
from .config import ServeConfig


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, service):
        super().__init__(config)
        self.service = service
        self._loop = None

    async def startup(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig, frame) -> None:
        if self.service.draining or self.should_exit:
            return super().handle_exit(sig, frame)  # second signal: stop now
        print("fawkes-fast serve: draining (new requests get 503)", file=sys.stderr, flush=True)
        self.service.begin_drain()
        if self._loop is None:  # not started yet: nothing in flight
            return super().handle_exit(sig, frame)
        # a signal handler may interrupt the loop anywhere: hand over through the thread-safe door
        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._drain()))

    async def _drain(self) -> None:
        finished = await self.service.drained(self.service.config.drain_s)
        if not finished:
            print(f"fawkes-fast serve: {self.service.in_flight} request(s) still running after "
                  f"{self.service.config.drain_s:g} s; stopping", file=sys.stderr, flush=True)
        self.should_exit = True


def page_url(config: ServeConfig) -> str:
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::", "") else config.host
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
    uv = uvicorn.Config(app, host=config.host, port=config.port, log_level="warning", access_log=False,
                        timeout_graceful_shutdown=5, server_header=False)  # after our own drain
    server = DrainingServer(uv, app.state.service)
    print(f"fawkes-fast serve: {page_url(config)} (loading models; /readyz says when ready)",
          file=sys.stderr, flush=True)
    if config.open_browser:
        _open_when_up(server, page_url(config))
    server.run()
    return 0 if server.started else 1
