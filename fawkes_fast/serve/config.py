"""Options of `fawkes-fast serve` (see fawkes_fast/cli/serve.py)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from pathlib import Path

from ..optimize.modes import MODES as CLOAK_MODES

MODES = tuple(CLOAK_MODES)  # low, mid, high, paper (optimize/modes.py; torch-free)
FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"  # loopback: exposing the service is an explicit choice
    port: int = 8000
    device: str | None = None
    mode: str = "mid"  # default when a request does not name one
    extractors: tuple | None = None  # None: each mode's own (optimize/modes.MODE_EXTRACTORS: `high` is joint)
    max_batch: int = 8  # photos per Cloaker.cloak call
    max_wait_ms: float = 25.0  # how long the first request of a batch waits for company
    max_queue: int = 64  # requests waiting for a batch (bodies in and decoded); more get 429
    max_bytes: int = 20_000_000
    max_pixels: int = 50_000_000
    max_pixels_in_flight: int = 200_000_000  # decoded pixels held at once (3 bytes each); more get 429
    body_timeout_s: float = 120.0  # the whole body must arrive within this; then 408
    min_body_rate: float = 8000.0  # bytes/s on average after the first few seconds; slower gets 408
    timeout_s: float = 120.0  # per request, from the body's arrival, queue wait included; then 504
    drain_s: float = 60.0  # on SIGTERM, how long in-flight requests may take to finish
    token_file: str | None = None
    workers: int = 1  # batches running at once (each holds the models' compute in turn)
    torch_threads: int = 0  # torch's threads; 0: sized from the usable cores and --workers
    allow_hosts: tuple = ()  # Host header values served besides the bind host and loopback names
    batch_across_photos: bool = False  # one optimisation for a batch's photos: faster, but pixels depend on batch-mates
    open_browser: bool = False

    def token(self) -> str | None:
        """The bearer token from --token-file (surrounding whitespace ignored)."""
        if not self.token_file:
            return None
        token = Path(self.token_file).read_text().strip()
        if not token:
            raise ValueError(f"token file {self.token_file} is empty")
        return token


def _positive(kind):
    def parse(text):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
        return value
    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = ServeConfig()
    p.add_argument("--host", default=d.host, help="interface to bind (default loopback only)")
    p.add_argument("--port", type=int, default=d.port)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--mode", default=d.mode, choices=MODES, help="default mode of a request")
    p.add_argument("--extractor", action="append", dest="extractors", metavar="NAME",
                   help="dlib, sface, facenet, dlib-robust or a model file, for every mode; repeat for a joint cloak "
                        "(default: each mode's own, dlib for low/mid/paper and dlib + sface + facenet for high)")
    p.add_argument("--max-batch", type=_positive(int), default=d.max_batch, help="photos per batch")
    p.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms,
                   help="how long a batch waits for more requests")
    p.add_argument("--max-queue", type=_positive(int), default=d.max_queue,
                   help="requests allowed to wait for a batch once their body is in; more get 429 with Retry-After")
    p.add_argument("--max-bytes", type=_positive(int), default=d.max_bytes, help="largest request body")
    p.add_argument("--max-pixels", type=_positive(int), default=d.max_pixels, help="largest image (w*h)")
    p.add_argument("--max-pixels-in-flight", type=_positive(int), default=d.max_pixels_in_flight,
                   help="decoded pixels the server holds at once, queued or being cloaked; more get 429")
    p.add_argument("--body-timeout-s", type=_positive(float), default=d.body_timeout_s,
                   help="time allowed for a whole request body (then 408)")
    p.add_argument("--min-body-rate", type=_positive(float), default=d.min_body_rate, metavar="BYTES_PER_S",
                   help="slowest average upload accepted after the first 10 s (then 408)")
    p.add_argument("--timeout-s", type=_positive(float), default=d.timeout_s,
                   help="per-request deadline from the body's arrival, queue included (then 504)")
    p.add_argument("--drain-s", type=_positive(float), default=d.drain_s,
                   help="on SIGTERM, time allowed for in-flight requests")
    p.add_argument("--token-file", default=None, metavar="F",
                   help="require 'Authorization: Bearer <token in F>' on /v1/cloak and /metrics")
    p.add_argument("--workers", type=_positive(int), default=d.workers, help="batches running at once")
    p.add_argument("--torch-threads", type=_positive(int), default=None, metavar="N",
                   help="torch's threads (default: the usable cores less one, shared by the workers, at least 1)")
    p.add_argument("--allow-host", action="append", dest="allow_hosts", metavar="NAME",
                   help="also serve requests whose Host header names NAME (repeat; '*' turns the check off); "
                        "the bind host, localhost, 127.0.0.1 and ::1 are always served")
    p.add_argument("--batch-across-photos", action="store_true",
                   help="optimise a batch's photos together: about 1.65x the photos per second on a 2-core CPU, "
                        "but a photo's pixels then depend on which requests share its batch")
    p.add_argument("--open", dest="open_browser", action="store_true", help="open the page in a browser")


def from_args(args: argparse.Namespace) -> ServeConfig:
    names = {f.name for f in fields(ServeConfig)}
    values = {k: v for k, v in vars(args).items() if k in names and v is not None}
    for name in ("extractors", "allow_hosts"):
        if name in values:
            values[name] = tuple(values[name])
    return ServeConfig(**values)
