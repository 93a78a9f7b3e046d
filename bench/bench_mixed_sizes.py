"""Faces of different sizes in one padded batch (the CUDA default) against one batch per working size.

    python bench/bench_mixed_sizes.py --device cuda --photos 32 [--json OUT.json]

LFW photos are scaled to a spread of sides (so their faces land in different working sizes) and
cloaked in one call with `batch_across_photos=True`, once with `mixed_sizes` off (a batch per size)
and once on (one batch, padded). Reports photos per second, the optimiser calls each made, and
how far each moved the faces (the mean distance to the target in our extractor's features, before
and after, from the reports), so a speed-up that costs protection shows.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIDES = (160, 192, 224, 250, 288, 320, 400)


def photos(lfw: Path, n: int) -> list[np.ndarray]:
    """n one-face LFW photos (the first photo of the first identities by name), at SIDES in turn."""
    names = sorted(p.name for p in lfw.iterdir() if p.is_dir())[:n]
    out = []
    for i, name in enumerate(names):
        img = Image.open(lfw / name / f"{name}_0001.jpg").convert("RGB")
        out.append(np.asarray(img.resize((SIDES[i % len(SIDES)],) * 2, Image.BILINEAR)))
    return out


def run(cloaker, images, mixed: bool, steps: int | None) -> dict:
    import fawkes_fast.cloaker as cloaker_module
    import torch

    calls = []
    real = cloaker_module.optimise

    def counted(*a, **k):
        calls.append(len(a[1]))
        return real(*a, **k)

    cloaker.mixed_sizes = mixed
    opts = {"steps": steps} if steps else {}
    cloaker_module.optimise = counted
    try:
        cloaker.cloak(images[:2], seed=0, **opts)  # warm-up: models, kernels, allocator
        calls.clear()
        if cloaker.device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        results = cloaker.cloak(images, seed=0, **opts)
        if cloaker.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t
    finally:
        cloaker_module.optimise = real
    faces = [f for r in results for f in r.faces]
    moved = [f.distances[next(iter(f.distances))]["to_target"] for f in faces]
    return {"mixed_sizes": mixed, "seconds": seconds, "photos_per_s": len(images) / seconds,
            "optimiser_calls": len(calls), "faces_per_call": calls,
            "cloaked": sum(r.status == "cloaked" for r in results), "photos": len(images),
            "to_target_before": float(np.mean([m[0] for m in moved])),
            "to_target_after": float(np.mean([m[1] for m in moved]))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--photos", type=int, default=32)
    ap.add_argument("--steps", type=int, default=None, help="override the mode's step cap (a smoke run)")
    ap.add_argument("--shared", default=str(ROOT.parent / "shared"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import fawkes_fast

    images = photos(Path(args.shared) / "data" / "lfw", args.photos)
    cloaker = fawkes_fast.Cloaker(mode="mid", device=args.device, batch_size=args.photos, batch_across_photos=True)
    rows = [run(cloaker, images, mixed, args.steps) for mixed in (False, True)]
    for r in rows:
        print(f"mixed_sizes={r['mixed_sizes']}: {r['photos_per_s']:.2f} photos/s, {r['optimiser_calls']} optimiser "
              f"calls {r['faces_per_call']}, {r['cloaked']}/{r['photos']} cloaked, to target "
              f"{r['to_target_before']:.3f} -> {r['to_target_after']:.3f}")
    print(f"padded / per size: {rows[1]['photos_per_s'] / rows[0]['photos_per_s']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": args.device, "rows": rows}, indent=1))
    return 0 if all(r["cloaked"] == r["photos"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
