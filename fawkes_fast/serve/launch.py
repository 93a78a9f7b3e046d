"""Start a real `fawkes-fast serve` as a subprocess on a free loopback port (tests, benchmarks).

    with spawn(["--mode", "low"]) as server:
        urllib.request.urlopen(server.url + "/readyz")
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, args, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = tempfile.NamedTemporaryFile(prefix="fawkes-serve-", suffix=".log", delete=False)
        cmd = [sys.executable, "-m", "fawkes_fast.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               *args]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def _get(self, path: str) -> int:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return 0

    def wait_ready(self, timeout: float = 600) -> "ServerProcess":
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            if self._get("/readyz") == 200:
                return self
            time.sleep(0.2)
        raise TimeoutError(f"the server was not ready within {timeout:g} s:\n{self.log()[-3000:]}")

    def stop(self, sig=signal.SIGTERM, timeout: float = 120) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        os.unlink(self._log.name)


def spawn(args=(), *, env: dict | None = None, ready: bool = True, timeout: float = 600) -> ServerProcess:
    """A started server; with `ready`, once its models are loaded (GET /readyz is 200)."""
    server = ServerProcess(list(args), env)
    try:
        return server.wait_ready(timeout) if ready else server
    except BaseException:
        server.stop(signal.SIGKILL)
        raise


# ----------------------------------------------------------------------------- sample inputs

def astronaut_png(size: int = 256) -> bytes:
    """scikit-image's public-domain astronaut portrait (one face), as PNG bytes."""
    import numpy as np
    from PIL import Image
    from skimage import data

    from ..io.images import encode_image

    img = Image.fromarray(data.astronaut()).resize((size, size), Image.LANCZOS)
    return encode_image(np.asarray(img), "png")


def gradient_png(width: int = 200, height: int = 150) -> bytes:
    """A plain colour gradient: an image with no face."""
    import numpy as np

    from ..io.images import encode_image

    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    rgb = np.concatenate([np.broadcast_to(x, (height, width, 1)), np.broadcast_to(y, (height, width, 1)),
                          np.full((height, width, 1), 128, np.float32)], axis=2)
    return encode_image(rgb.astype(np.uint8), "png")


def corrupt_png(good: bytes) -> bytes:
    """A PNG whose header reads fine but whose pixel data stops half way."""
    return good[: len(good) // 2]
