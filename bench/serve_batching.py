"""What batching can buy on this machine, without HTTP: 8 LFW photos (`mid`) cloaked by one warm Cloaker

    python bench/serve_batching.py [--photos 8] [--mode mid]

1. sequential: one photo per call (the server's default: pixels do not depend on batch-mates);
2. two workers: two threads, each cloaking every other photo one at a time (same torch threads);
3. batched: `Cloaker(batch_across_photos=True)`, all photos in one call.
Prints each time, its ratio to sequential and how many photos kept the sequential run's pixels.
Take figures only on a quiet machine.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_common import lfw_photos  # noqa: E402


def main(argv=None) -> int:
    from fawkes_fast.cloaker import Cloaker
    from fawkes_fast.io.images import load_image

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photos", type=int, default=8)
    ap.add_argument("--mode", default="mid")
    args = ap.parse_args(argv)
    photos = [load_image(b) for b in lfw_photos(args.photos)]
    n = len(photos)

    def digest(r):
        return hashlib.sha256(r.image.tobytes()).hexdigest() if r.image is not None else r.status

    one = Cloaker(mode=args.mode)
    one.cloak(photos[0], seed=0, steps=2)  # warm
    t = time.perf_counter()
    seq = [digest(one.cloak(p, seed=i)[0]) for i, p in enumerate(photos)]
    t_seq = time.perf_counter() - t

    two = [None] * n

    def worker(idx):
        for i in idx:
            two[i] = digest(one.cloak(photos[i], seed=i)[0])

    t = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(range(k, n, 2),)) for k in range(2)]
    [th.start() for th in threads]
    [th.join() for th in threads]
    t_two = time.perf_counter() - t

    together = Cloaker(mode=args.mode, batch_across_photos=True)
    together.cloak(photos[0], seed=0, steps=2)
    t = time.perf_counter()
    bat = [digest(r) for r in together.cloak(photos, seed=list(range(n)))]
    t_bat = time.perf_counter() - t

    print(f"torch threads {torch.get_num_threads()}, {n} photos, {args.mode}")
    for name, secs, got in (("sequential", t_seq, seq), ("two workers", t_two, two), ("batched", t_bat, bat)):
        same = sum(a == b for a, b in zip(seq, got))
        print(f"{name:12s} {secs:6.1f} s  {t_seq / secs:4.2f}x  same pixels as sequential: {same}/{n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
