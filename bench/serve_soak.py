"""Soak of `fawkes-fast serve`: many requests mixing good, faceless and corrupt photos, on loopback.

    python bench/serve_soak.py [--requests 1000] [--concurrency 4] [--mode low] [--warmup 100] [--json OUT.json]

Pass (issue #14): every good photo is cloaked (200, X-Fawkes-Status cloaked), every faceless photo
is 200 no_face, every corrupt body is 400/415, the server process is the same one at the end and
still healthy, and its resident memory grew by at most --max-growth-mb after the warm-up requests.
Exit code 1 when any check fails. Take figures for the record only on a quiet machine.
"""
from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_common import SHARED, latency_summary, lfw_photos, timed_post, write_json  # noqa: E402

# kind -> what a correct answer is
EXPECTED = {"good": {(200, "cloaked")}, "faceless": {(200, "no_face")},
            "truncated": {(400, "undecodable")}, "garbage": {(415, "not_an_image")}}
MIX = ("good", "good", "faceless", "good", "truncated", "good", "garbage", "good", "faceless", "truncated")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def bodies(photos: list[bytes]) -> dict[str, list[bytes]]:
    import numpy as np

    from fawkes_fast.serve.launch import corrupt_png, gradient_png

    rng = np.random.default_rng(0)
    return {"good": photos, "faceless": [gradient_png(160 + 8 * i, 120 + 8 * i) for i in range(4)],
            "truncated": [corrupt_png(p) for p in photos],
            "garbage": [rng.integers(0, 256, 2000 + 500 * i, dtype=np.uint8).tobytes() for i in range(4)]}


def send_all(url: str, kinds: list[str], corpus: dict, concurrency: int, offset: int) -> list[dict]:
    import httpx

    clients = [httpx.Client(timeout=3600) for _ in range(concurrency)]

    def one(i):
        kind = kinds[i]
        body = corpus[kind][(offset + i) % len(corpus[kind])]
        seconds, code, status = timed_post(clients[i % concurrency], url, body, {"seed": offset + i})
        return {"kind": kind, "seconds": seconds, "code": code, "status": status,
                "ok": (code, status) in EXPECTED[kind]}

    with ThreadPoolExecutor(concurrency) as pool:
        rows = list(pool.map(one, range(len(kinds))))
    for c in clients:
        c.close()
    return rows


def soak(args) -> dict:
    import httpx

    from fawkes_fast.serve.launch import spawn

    corpus = bodies(lfw_photos(args.photos, Path(args.shared)))
    kinds = [MIX[i % len(MIX)] for i in range(args.requests)]
    warm, rest = kinds[:args.warmup], kinds[args.warmup:]
    flags = ["--mode", args.mode, "--timeout-s", str(args.timeout_s), "--max-batch", str(args.max_batch),
             "--max-queue", "256"]
    with spawn(flags) as server:
        pid = server.pid
        rss_start = rss_mb(pid)
        rows = send_all(server.url, warm, corpus, args.concurrency, 0)
        rss_warm = rss_mb(pid)
        t0 = time.perf_counter()
        rows += send_all(server.url, rest, corpus, args.concurrency, len(warm))
        wall = time.perf_counter() - t0
        rss_end = rss_mb(pid)
        healthy = server.proc.poll() is None and httpx.get(server.url + "/healthz").status_code == 200
    return {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "mode": args.mode,
            "requests": len(rows), "warmup": len(warm), "concurrency": args.concurrency,
            "by_kind": {k: sum(r["kind"] == k for r in rows) for k in EXPECTED},
            "wrong": [r for r in rows if not r["ok"]][:20], "wrong_count": sum(not r["ok"] for r in rows),
            "good_failed": sum(r["kind"] == "good" and not r["ok"] for r in rows),
            "same_process_healthy": healthy,
            "rss_mb": {"start": round(rss_start, 1), "after_warmup": round(rss_warm, 1), "end": round(rss_end, 1)},
            "rss_growth_after_warmup_mb": round(rss_end - rss_warm, 1),
            "after_warmup": latency_summary([r["seconds"] for r in rows[len(warm):]], wall)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=100, help="requests before the memory baseline")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--photos", type=int, default=8)
    ap.add_argument("--mode", default="low", choices=("low", "mid", "high"))
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-growth-mb", type=float, default=50.0)
    ap.add_argument("--timeout-s", type=float, default=600, help="the server's per-request deadline")
    ap.add_argument("--shared", default=str(SHARED))
    ap.add_argument("--json", dest="json_out", default=None, help="write the record here")
    args = ap.parse_args(argv)
    if not 0 <= args.warmup < args.requests:
        ap.error("--warmup must be smaller than --requests")
    record = soak(args)
    passed = (record["wrong_count"] == 0 and record["same_process_healthy"]
              and record["rss_growth_after_warmup_mb"] <= args.max_growth_mb)
    record["passed"] = passed
    s = record["after_warmup"]
    print(f"{record['requests']} requests {record['by_kind']}: {record['wrong_count']} wrong answers "
          f"({record['good_failed']} good photos failed); same process, healthy: {record['same_process_healthy']}")
    print(f"RSS MB {record['rss_mb']}, growth after warm-up {record['rss_growth_after_warmup_mb']} MB "
          f"(limit {args.max_growth_mb}); after warm-up {s['throughput_per_s']} req/s, p99 {s['p99_s']} s")
    for r in record["wrong"][:5]:
        print(f"  wrong: {r}")
    print("PASS" if passed else "FAIL")
    write_json(args.json_out, record)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
