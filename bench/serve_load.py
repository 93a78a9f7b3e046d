"""Load test of `fawkes-fast serve` on loopback, against sequential `Cloaker.cloak` in the same run.

    python bench/serve_load.py [--photos 8] [--requests 32] [--concurrency 1 4 16] [--mode mid]
                               [--max-batch 8] [--max-wait-ms 25] [--device cpu] [--batch-across-photos]
                               [--json OUT.json]

1. Direct: one warm Cloaker in this process cloaks the requests one by one (PNG, seed per request).
2. Served: a real server (subprocess, free loopback port, same mode) answers the same requests at
   each concurrency; p50/p95/p99 latency and throughput per level.
Goals (issue #14): throughput at concurrency 16 >= 1.5x direct; p99 at concurrency 1 <= 1.2x direct p99.
Take figures for the record only on a quiet machine.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_common import SHARED, latency_summary, lfw_photos, timed_post, write_json  # noqa: E402


def direct(photos: list[bytes], requests: int, mode: str, device) -> dict:
    from fawkes_fast import Cloaker

    cloaker = Cloaker(mode=mode, device=device)
    cloaker.cloak(photos[0], seed=0, format="png")  # warm-up, as the server does at start
    seconds, statuses = [], []
    t0 = time.perf_counter()
    for i in range(requests):
        t = time.perf_counter()
        statuses.append(cloaker.cloak(photos[i % len(photos)], seed=i, format="png")[0].status)
        seconds.append(time.perf_counter() - t)
    out = latency_summary(seconds, time.perf_counter() - t0)
    out["cloaked"] = statuses.count("cloaked")
    return out


def served(url: str, photos: list[bytes], requests: int, concurrency: int) -> dict:
    import httpx

    clients = [httpx.Client(timeout=3600) for _ in range(concurrency)]

    def one(i):
        return timed_post(clients[i % concurrency], url, photos[i % len(photos)], {"seed": i, "format": "png"})

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        rows = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - t0
    for c in clients:
        c.close()
    out = latency_summary([s for s, _, _ in rows], wall)
    out["concurrency"] = concurrency
    out["cloaked"] = sum(code == 200 and status == "cloaked" for _, code, status in rows)
    out["codes"] = sorted({code for _, code, _ in rows})
    return out


def run(args) -> dict:
    from fawkes_fast.serve.launch import spawn

    photos = lfw_photos(args.photos, Path(args.shared))
    record = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
              "mode": args.mode, "photos": len(photos), "requests": args.requests,
              "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms,
              "batch_across_photos": args.batch_across_photos}
    print(f"direct: {args.requests} sequential Cloaker.cloak calls ({args.mode})", flush=True)
    record["direct"] = direct(photos, args.requests, args.mode, args.device)
    flags = ["--mode", args.mode, "--timeout-s", str(args.timeout_s), "--max-batch", str(args.max_batch),
             "--max-wait-ms", str(args.max_wait_ms), "--max-queue", str(max(64, 2 * max(args.concurrency)))]
    flags += ["--device", args.device] if args.device else []
    flags += ["--batch-across-photos"] if args.batch_across_photos else []
    with spawn(flags) as server:
        served(server.url, photos, min(2, args.requests), 1)  # warm the connection path
        record["served"] = []
        for c in args.concurrency:
            print(f"served: {args.requests} requests at concurrency {c}", flush=True)
            record["served"].append(served(server.url, photos, args.requests, c))
    return record


def report(record: dict) -> None:
    d = record["direct"]
    print(f"\n{'':<14}{'req/s':>8}{'p50 s':>8}{'p95 s':>8}{'p99 s':>8}  cloaked")
    print(f"{'direct':<14}{d['throughput_per_s']:>8.3f}{d['p50_s']:>8.3f}{d['p95_s']:>8.3f}{d['p99_s']:>8.3f}"
          f"  {d['cloaked']}/{d['requests']}")
    for s in record["served"]:
        print(f"{'served c=' + str(s['concurrency']):<14}{s['throughput_per_s']:>8.3f}{s['p50_s']:>8.3f}"
              f"{s['p95_s']:>8.3f}{s['p99_s']:>8.3f}  {s['cloaked']}/{s['requests']} codes {s['codes']}")
    by_c = {s["concurrency"]: s for s in record["served"]}
    if 16 in by_c:
        print(f"throughput c=16 / direct: {by_c[16]['throughput_per_s'] / d['throughput_per_s']:.2f}x (goal >= 1.5x)")
    if 1 in by_c:
        print(f"p99 c=1 / direct p99: {by_c[1]['p99_s'] / d['p99_s']:.2f}x (goal <= 1.2x)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photos", type=int, default=8, help="distinct LFW photos, reused round-robin")
    ap.add_argument("--requests", type=int, default=32, help="requests per concurrency level (bounded)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--mode", default="mid", choices=("low", "mid", "high"))
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-wait-ms", type=float, default=25)
    ap.add_argument("--device", default=None)
    ap.add_argument("--timeout-s", type=float, default=600, help="the server's per-request deadline")
    ap.add_argument("--batch-across-photos", action="store_true",
                    help="serve with --batch-across-photos (faster; pixels then depend on batch-mates)")
    ap.add_argument("--shared", default=str(SHARED))
    ap.add_argument("--json", dest="json_out", default=None, help="write the record here")
    args = ap.parse_args(argv)
    record = run(args)
    report(record)
    write_json(args.json_out, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
