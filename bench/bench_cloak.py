"""Cloaking speed against the peer (../shared/peer/peer_step.py), same extractor, inputs, device.

    python bench/bench_cloak.py [--device cpu|cuda] [--batch 1 8] [--photos 3] [--transfer] [--phone] [--out bench/results/cloak.md]

1. One optimisation step at batch B: our engine (warp + extractor + fused SSIM + fused tanh-Adam,
   early stopping off; on CUDA with and without the CUDA graph; a fixed cost per call, such as
   the graph's capture, is reported apart) versus the peer's eager step (pytorch-msssim, torch.optim.Adam) on the
   same extractor module and the same face chips.
2. Seconds per one-face LFW photo in each mode, end to end (load, detect, target, optimise,
   paste, budget check, PNG encode), versus the peer doing the mode's step count.
3. With --phone: seconds per 12 MP JPEG with one face about 1,000 px wide, end to end, by stage.
"""
from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"  # --shared overrides (e.g. a copy carried to a GPU machine)


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, dev, iters):
    fn()
    _sync(dev)
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(dev)
    return (time.perf_counter() - t) / iters


def machine() -> str:
    try:
        model = [l.split(":", 1)[1].strip() for l in subprocess.check_output(["lscpu"], text=True).splitlines()
                 if l.startswith("Model name")][0]
    except Exception:  # noqa: BLE001
        model = platform.processor()
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{model}, {torch.get_num_threads()} threads{gpu}, torch {torch.__version__}"


def lfw_faces(pipe, n):
    """n one-face LFW photos whose face regions share a working size (so they batch)."""
    from fawkes_fast.io.images import load_image

    lfw = SHARED / "data" / "lfw"
    names = sorted(p.name for p in lfw.iterdir() if p.is_dir())
    by_size = {}
    for name in names:
        img = load_image(next((lfw / name).glob("*.jpg")))
        faces = pipe.detect(img)
        if len(faces) == 1:
            group = by_size.setdefault(pipe.regions(faces)[0][0].work, [])
            group.append((img, faces))
            if len(group) == n:
                return group
    return max(by_size.values(), key=len)


def bench_step(pipe, photos, batch, dev, iters):
    from peer_step import make_peer_step

    from fawkes_fast.faces.budget import budget_boxes
    from fawkes_fast.optimize.engine import optimise
    from fawkes_fast.optimize.modes import settings_for
    from fawkes_fast.pipeline import crop_region

    ext = pipe.extractors[0]
    sel = [photos[i % len(photos)] for i in range(batch)]
    crops, mats, boxes = [], [], []
    for img, faces in sel:
        regions, m = pipe.regions(faces)
        crops.append(crop_region(img, regions[0], dev))
        mats.append(m[0][0])
        boxes.append(regions[0].boxes_in_work(budget_boxes(faces[0].box)))  # the product's budget terms
    x0 = torch.stack(crops)
    mat = torch.as_tensor(np.stack(mats), dtype=torch.float32, device=dev)
    target = torch.nn.functional.normalize(torch.randn(batch, ext.dim, device=dev), dim=1)
    # per step: the difference between whole optimise() calls of 3*iters and iters steps, so a fixed
    # cost per call (CUDA-graph warm-up and capture) is reported apart; on CUDA the eager engine is
    # timed too, to show what the graph buys
    def call(graph, steps):
        settings = settings_for("mid", steps=steps, patience=10 ** 9)
        run = lambda: optimise([ext], x0, [mat], [target], settings, graph=graph, boxes=boxes)  # noqa: E731
        return min(timed(run, dev, 1) for _ in range(3))  # the best of 3: one-off capture costs vary

    ours = {}
    for graph in ((True, False) if dev.type == "cuda" else (False,)):
        short, long = call(graph, iters), call(graph, 3 * iters)
        step = (long - short) / (2 * iters)
        ours[graph] = (step, max(short - (iters + 1) * step, 0.0))
    with torch.no_grad():
        chips = pipe.chips(x0, mat, ext)
    peer = make_peer_step(ext.features, chips.contiguous(), target, budget=0.007)
    theirs = timed(peer, dev, iters)
    return ours, theirs


def bench_photo(photos, dev, mode, peer_step_s, extractors=None, **options):
    """extractors None: the mode's own (`high`: dlib + sface + facenet)."""
    from fawkes_fast import Cloaker
    from fawkes_fast.optimize.modes import MODES

    cloaker = Cloaker(mode=mode, device=dev, extractors=extractors, **options)
    cloaker.cloak(photos[0][0], seed=0, steps=2)  # warm-up: models loaded, caches built
    times, steps = [], []
    for img, _ in photos:
        t = time.perf_counter()
        (r,) = cloaker.cloak(img, seed=0, format="png")
        _sync(dev)
        times.append(time.perf_counter() - t)
        steps.append(r.faces[0].steps)
    return float(np.mean(times)), float(np.mean(steps)), MODES[mode].steps * peer_step_s


def phone_photo(seed: int = 0) -> bytes:
    """A phone-sized JPEG (4000x3000, 12 MP, q92) with one face about 1,000 px wide: a StyleGAN2 face
    upscaled 3.4x (Lanczos) on a blurred, stretched copy of itself."""
    import io

    from PIL import Image, ImageFilter

    files = sorted((SHARED / "data" / "gan-faces").glob("*.jpg"))
    face = Image.open(files[seed % len(files)]).convert("RGB")
    canvas = face.resize((4000, 3000), Image.BILINEAR).filter(ImageFilter.GaussianBlur(40))
    big = face.resize((1750, 1750), Image.LANCZOS)
    canvas.paste(big, (1100, 600))
    buf = io.BytesIO()
    canvas.save(buf, "JPEG", quality=92)
    return buf.getvalue()


def bench_phone(dev, mode: str = "mid", photos: int = 2) -> tuple[float, dict]:
    """Seconds per phone-sized photo, end to end from JPEG bytes to the JPEG written (q92), and where
    they went (cProfile's cumulative seconds of the stages, for the last photo)."""
    import cProfile
    import pstats

    from fawkes_fast import Cloaker

    cloaker = Cloaker(mode=mode, device=dev)
    data = [phone_photo(i) for i in range(photos)]
    cloaker.cloak(data[0], seed=0, steps=2, format="jpeg", quality=92)  # warm-up
    times = []
    for i, d in enumerate(data):
        prof = cProfile.Profile() if i == len(data) - 1 else None
        t = time.perf_counter()
        if prof:
            prof.enable()
        (r,) = cloaker.cloak(d, seed=0, format="jpeg", quality=92)
        if prof:
            prof.disable()
        times.append(time.perf_counter() - t)
        assert r.status == "cloaked", (r.status, r.error)
    stats = pstats.Stats(prof).stats
    stages = {"load + detect": "_load_and_detect", "optimise": "_optimise", "paste, encode, check": "finalize_photo",
              "reports": "face_reports"}
    where = {label: max((v[3] for k, v in stats.items() if k[2] == fn), default=0.0) for label, fn in stages.items()}
    return float(np.mean(times)), where


TRANSFER_VARIANTS = [("dlib, flip", ("dlib",), {"flip": True}),
                     ("dlib, diversity 1", ("dlib",), {"diversity": 1.0}),
                     ("dlib-robust", ("dlib-robust",), {}),
                     ("dlib-robust, diversity 1", ("dlib-robust",), {"diversity": 1.0}),
                     ("dlib + dlib-robust", ("dlib", "dlib-robust"), {})]


def main():
    global SHARED
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--photos", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "cloak.md"))
    ap.add_argument("--shared", default=str(SHARED), help="folder holding peer/ and data/lfw/")
    ap.add_argument("--transfer", action="store_true", help="also time the transfer options (issue #6)")
    ap.add_argument("--phone", action="store_true", help="also time a 12 MP photo end to end (issue #24)")
    args = ap.parse_args()
    SHARED = Path(args.shared)
    sys.path.insert(0, str(SHARED / "peer"))
    dev = torch.device(args.device)

    from fawkes_fast.optimize.modes import extractors_for
    from fawkes_fast.pipeline import FacePipeline

    pipe = FacePipeline(("dlib",), device=dev)
    photos = lfw_faces(pipe, max(args.photos, max(args.batch)))
    lines = [f"### Cloaking vs peer ({dev.type}) — {date.today()}, {machine()}", "",
             "| what | fawkes_fast | peer | peer / ours |", "|---|---|---|---|"]
    peer1 = None
    for b in args.batch:
        ours, theirs = bench_step(pipe, photos, b, dev, args.iters)
        peer1 = theirs if b == 1 else peer1
        for graph, (t, fixed) in ours.items():
            how = {True: ", CUDA graph", False: ", eager" if dev.type == "cuda" else ""}[graph]
            lines.append(f"| one step, dlib, batch {b}{how} (+ {fixed * 1e3:.0f} ms once per call) | "
                         f"{t * 1e3:.2f} ms | {theirs * 1e3:.2f} ms | {theirs / t:.2f}× |")
            print(lines[-1], flush=True)
    for mode in ("low", "mid", "high"):
        secs, steps, peer = bench_photo(photos[:args.photos], dev, mode, peer1)
        exts = " + ".join(extractors_for(mode))
        theirs = (f"{peer:.2f} s (mode's max steps × peer step) | {peer / secs:.2f}×" if exts == "dlib"
                  else "— (the peer cloaks with dlib alone) | —")
        lines.append(f"| `{mode}` one-face photo ({exts}), end to end ({steps:.0f} steps used) | {secs:.2f} s | "
                     f"{theirs} |")
        print(lines[-1], flush=True)
    if args.phone:  # issue #24: a 12 MP photo
        secs, where = bench_phone(dev)
        parts = ", ".join(f"{k} {v:.2f} s" for k, v in where.items())
        lines.append(f"| `mid` 12 MP JPEG, one face about 1,000 px wide, end to end ({parts}) | {secs:.2f} s | — | — |")
        print(lines[-1], flush=True)
    if args.transfer:  # issue #6: what the transfer options cost, `mid`, against plain dlib
        base = bench_photo(photos[:args.photos], dev, "mid", peer1, ("dlib",))[0]
        for label, exts, opts in TRANSFER_VARIANTS:
            secs, steps, _ = bench_photo(photos[:args.photos], dev, "mid", peer1, exts, **opts)
            lines.append(f"| `mid` photo, {label} ({steps:.0f} steps used) | {secs:.2f} s | plain dlib {base:.2f} s | "
                         f"{secs / base:.2f}× the time |")
            print(lines[-1], flush=True)
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
