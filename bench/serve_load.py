"""Load test of `fawkes-fast serve` on loopback, against sequential `Cloaker.cloak` in the same run.

    python bench/serve_load.py [--photos 8] [--requests 32] [--concurrency 1 4 16] [--mode mid]
                               [--max-batch 8] [--max-wait-ms 25] [--device cpu] [--batch-across-photos]
                               [--background-load 0 2] [--torch-threads 0 2] [--no-direct] [--json OUT.json]

For each background load (N processes spinning on the CPU, started before and stopped after, each
ending itself within --load-limit-s) and each torch thread count (0: the server's own sizing):
1. Direct: one warm Cloaker in this process, with the same thread count, cloaks the requests one by
   one (PNG, seed per request). Skipped with --no-direct.
2. Served: a real server (subprocess, free loopback port, same mode) is started; the first request
   after /readyz is timed alone, then the same requests are sent at each concurrency; p50/p95/p99
   latency and throughput per level.
Goals (issue #14): throughput at concurrency 16 >= 1.5x direct; p99 at concurrency 1 <= 1.2x direct p99.
Take figures for the record only on a quiet machine, or say what else ran.
"""
from __future__ import annotations

import argparse
import contextlib
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_common import SHARED, latency_summary, lfw_photos, timed_post, write_json  # noqa: E402

# a CPU burner that stops by itself, so no run can leave one behind
BURN = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"


@contextlib.contextmanager
def background_load(processes: int, limit_s: float):
    burners = [subprocess.Popen([sys.executable, "-c", BURN, str(limit_s)]) for _ in range(processes)]
    try:
        yield
    finally:
        for p in burners:
            p.kill()
            p.wait()


def thread_count(requested: int) -> int:
    from fawkes_fast.serve.threads import torch_threads, usable_cores

    return requested or torch_threads(1, usable_cores())


def direct(photos: list[bytes], requests: int, mode: str, device, threads: int) -> dict:
    import torch

    from fawkes_fast import Cloaker

    torch.set_num_threads(thread_count(threads))  # what the server would use
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


def one_setting(args, photos: list[bytes], load: int, threads: int) -> dict:
    from fawkes_fast.serve.launch import spawn

    row = {"background_load": load, "torch_threads": thread_count(threads), "threads_auto": not threads}
    flags = ["--mode", args.mode, "--timeout-s", str(args.timeout_s), "--max-batch", str(args.max_batch),
             "--max-wait-ms", str(args.max_wait_ms), "--max-queue", str(max(64, 2 * max(args.concurrency)))]
    flags += ["--device", args.device] if args.device else []
    flags += ["--batch-across-photos"] if args.batch_across_photos else []
    flags += ["--torch-threads", str(threads)] if threads else []
    with background_load(load, args.load_limit_s):
        if not args.no_direct:
            print(f"direct: {args.requests} sequential Cloaker.cloak calls ({args.mode}, {row['torch_threads']} "
                  f"thread(s), background load {load})", flush=True)
            row["direct"] = direct(photos, args.requests, args.mode, args.device, threads)
        t = time.perf_counter()
        with spawn(flags) as server:
            row["ready_s"] = round(time.perf_counter() - t, 2)
            row["first"] = served(server.url, photos, 1, 1)  # the first request after start, alone
            row["served"] = []
            for c in args.concurrency:
                print(f"served: {args.requests} requests at concurrency {c} ({row['torch_threads']} thread(s), "
                      f"background load {load})", flush=True)
                row["served"].append(served(server.url, photos, args.requests, c))
    return row


def run(args) -> dict:
    from fawkes_fast.serve.threads import usable_cores

    photos = lfw_photos(args.photos, Path(args.shared))
    record = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
              "usable_cores": usable_cores(), "mode": args.mode, "photos": len(photos), "requests": args.requests,
              "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms,
              "batch_across_photos": args.batch_across_photos, "runs": []}
    for load in args.background_load:
        for threads in args.torch_threads:
            record["runs"].append(one_setting(args, photos, load, threads))
            write_json(args.json_out, record)  # after each setting: a long run keeps what it measured
    return record


def report(record: dict) -> None:
    print(f"\n{'':<42}{'req/s':>8}{'p50 s':>8}{'p95 s':>8}{'p99 s':>8}  cloaked")
    for run in record["runs"]:
        name = f"load {run['background_load']}, {run['torch_threads']} thr{' (auto)' if run['threads_auto'] else ''}"
        rows = ([("direct", run["direct"])] if "direct" in run else []) + [("first after start", run["first"])]
        rows += [(f"served c={s['concurrency']}", s) for s in run["served"]]
        for label, r in rows:
            print(f"{name + ', ' + label:<42}{r['throughput_per_s']:>8.3f}{r['p50_s']:>8.3f}{r['p95_s']:>8.3f}"
                  f"{r['p99_s']:>8.3f}  {r['cloaked']}/{r['requests']}{' codes ' + str(r['codes']) if 'codes' in r else ''}")
        by_c = {s["concurrency"]: s for s in run["served"]}
        if "direct" in run and 16 in by_c:
            print(f"  throughput c=16 / direct: {by_c[16]['throughput_per_s'] / run['direct']['throughput_per_s']:.2f}x"
                  " (goal >= 1.5x)")
        if "direct" in run and 1 in by_c:
            print(f"  p99 c=1 / direct p99: {by_c[1]['p99_s'] / run['direct']['p99_s']:.2f}x (goal <= 1.2x)")


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
    ap.add_argument("--background-load", type=int, nargs="+", default=[0],
                    help="CPU-spinning processes kept running during a setting (one setting per value)")
    ap.add_argument("--load-limit-s", type=float, default=3600, help="each spinning process ends itself by then")
    ap.add_argument("--torch-threads", type=int, nargs="+", default=[0],
                    help="torch threads of the server and of the direct run (0: the server's own sizing)")
    ap.add_argument("--no-direct", action="store_true", help="skip the sequential in-process baseline")
    ap.add_argument("--shared", default=str(SHARED))
    ap.add_argument("--json", dest="json_out", default=None, help="write the record here")
    args = ap.parse_args(argv)
    record = run(args)
    report(record)
    write_json(args.json_out, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
