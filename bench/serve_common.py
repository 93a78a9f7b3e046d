"""Shared by bench/serve_load.py and bench/serve_soak.py: photos, one timed request, summaries."""
from __future__ import annotations

import json
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def lfw_photos(count: int, shared: Path = SHARED) -> list[bytes]:
    """The first photo of the first `count` LFW identities (sorted) with a face the detector finds;
    the astronaut at several sizes where LFW is absent."""
    lfw = shared / "data" / "lfw"
    if not lfw.is_dir():
        from fawkes_fast.serve.launch import astronaut_png

        print(f"{lfw} is absent: using the astronaut at {count} sizes", flush=True)
        return [astronaut_png(256 + 16 * i) for i in range(count)]
    from fawkes_fast.io.images import load_image
    from fawkes_fast.pipeline import FacePipeline

    detector, photos = FacePipeline(), []  # keep photos whose face the detector finds: "good" photos
    for person in sorted(p for p in lfw.iterdir() if p.is_dir()):
        data = (person / f"{person.name}_0001.jpg").read_bytes()
        if detector.detect(load_image(data)):
            photos.append(data)
        if len(photos) == count:
            break
    return photos


def require_loopback(url: str) -> str:
    host = urlparse(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"refusing {url}: these benchmarks run on loopback only")
    return url.rstrip("/")


def timed_post(client, url: str, body: bytes, params: dict) -> tuple[float, int, str]:
    """(seconds, HTTP code, X-Fawkes-Status) of one POST /v1/cloak."""
    t = time.perf_counter()
    r = client.post(url + "/v1/cloak", content=body, params=params)
    return time.perf_counter() - t, r.status_code, r.headers.get("x-fawkes-status", "")


def latency_summary(seconds: list[float], wall: float) -> dict:
    s = np.asarray(seconds, dtype=float)
    p50, p95, p99 = np.percentile(s, [50, 95, 99]) if len(s) else (np.nan,) * 3
    return {"requests": len(s), "wall_s": round(wall, 3), "throughput_per_s": round(len(s) / wall, 4),
            "p50_s": round(float(p50), 4), "p95_s": round(float(p95), 4), "p99_s": round(float(p99), 4)}


def write_json(path: str | None, record: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(record, indent=1))
        print(f"wrote {path}")
