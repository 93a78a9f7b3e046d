"""Engine step throughput (face-steps/s) against the peers, in fp32 and reduced precision, and the
feature parity of the reduced-precision extractors. The step half of bench/gpu_check.sh; with
tiny sizes it runs on a CPU (--cpu-smoke there).

    python bench/bench_step.py --device cuda --faces 128 --iters 20 --parity 100 --compile-peer \\
        --shared ../shared --json OUT.json

Step: one `optimise` step at N faces with dlib (early stopping off), the per-step time being the
difference between whole calls of 3*iters and iters steps (so the CUDA graph's capture is not
counted), with the extractor in fp32 and via `with_precision(ext, p)`. Peers, on the same chips:
../shared/peer/peer_step.py's eager step and its torch.compile step, on dlib's eager module.
Parity: cosine of fp32 and reduced-precision dlib features of `--parity` LFW chips (goal >= 0.999).
Exits non-zero when the parity goal is missed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_cloak  # noqa: E402  (lfw_faces, timed, machine)

PARITY_GOAL = 0.999


def step_inputs(pipe, photos, n, dev):
    """Working crops (n, 3, S, S) and their chip matrices, photos repeated to n faces."""
    from fawkes_fast.pipeline import crop_region

    picks = [photos[i % len(photos)] for i in range(n)]
    found = [pipe.regions(faces) for _, faces in picks]
    x0 = torch.stack([crop_region(img, r[0][0], dev) for (img, _), r in zip(picks, found)])
    mat = torch.as_tensor(np.stack([r[1][0][0] for r in found]), dtype=torch.float32, device=dev)
    return x0, mat


def ours_step_s(ext, x0, mat, target, dev, iters):
    """Seconds per engine step (graph on CUDA), from calls of iters and 3*iters steps."""
    from fawkes_fast.optimize.engine import optimise
    from fawkes_fast.optimize.modes import settings_for

    def call(steps):
        settings = settings_for("mid", steps=steps, patience=10 ** 9)
        run = lambda: optimise([ext], x0, [mat], [target], settings)  # noqa: E731
        return min(bench_cloak.timed(run, dev, 1) for _ in range(2))

    return (call(3 * iters) - call(iters)) / (2 * iters)


def peer_steps_s(chips, target, dev, iters, compile_peer):
    """Seconds per step of the peer's eager (and torch.compile) step on dlib's eager module."""
    from peer_step import make_compiled_peer_step, make_peer_step

    from fawkes_fast.extractors.dlib_resnet import read_dlib_resnet

    net = read_dlib_resnet().to(dev)
    extractor = lambda x: F.normalize(net(x), dim=1)  # noqa: E731
    out = {"peer_eager": bench_cloak.timed(make_peer_step(extractor, chips, target), dev, iters)}
    if compile_peer:
        t0 = time.perf_counter()
        step = make_compiled_peer_step(extractor, chips, target)
        for _ in range(3):
            step()
        out["peer_compile_warmup_s"] = time.perf_counter() - t0
        out["peer_compiled"] = bench_cloak.timed(step, dev, iters)
    return out


def lfw_chips(pipe, ext, n, dev):
    """dlib chips of the first face of the first photo of LFW people, until n are found."""
    from fawkes_fast.faces.align import warp_chips
    from fawkes_fast.io.images import load_image

    lfw = bench_cloak.SHARED / "data" / "lfw"
    chips = []
    for person in sorted(p for p in lfw.iterdir() if p.is_dir()):
        img = load_image(next(person.glob("*.jpg")))
        faces = pipe.detect(img)
        if faces:
            t = torch.tensor(img, device=dev).permute(2, 0, 1)[None].float()
            chips.append(warp_chips(t, ext.chip_matrices(faces[0].landmarks[None]), ext.chip_size))
            if len(chips) == n:
                break
    return torch.cat(chips)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--faces", type=int, default=128)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--photos", type=int, default=16, help="distinct photos, repeated to --faces")
    ap.add_argument("--parity", type=int, default=100, help="LFW chips for the feature parity")
    ap.add_argument("--precisions", nargs="+", default=["bf16", "fp16"])
    ap.add_argument("--compile-peer", action="store_true", help="also time the torch.compile peer")
    ap.add_argument("--shared", default=str(bench_cloak.SHARED), help="folder holding peer/ and data/lfw/")
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    bench_cloak.SHARED = Path(args.shared)
    sys.path.insert(0, str(bench_cloak.SHARED / "peer"))
    dev = torch.device(args.device)

    from fawkes_fast.faces.align import warp_batch
    from fawkes_fast.optimize.precision import feature_parity, with_precision
    from fawkes_fast.pipeline import FacePipeline

    pipe = FacePipeline(("dlib",), device=dev)
    ext = pipe.extractors[0]
    res = {"machine": bench_cloak.machine(), "faces": args.faces, "iters": args.iters}
    chips = lfw_chips(pipe, ext, args.parity, dev)
    for p in args.precisions:
        cos = feature_parity(ext, chips, p)
        res[f"parity_{p}"] = {"chips": len(cos), "min": cos.min().item(), "mean": cos.mean().item(),
                              "goal_met": bool(cos.min() >= PARITY_GOAL)}
        print(p, res[f"parity_{p}"], flush=True)

    x0, mat = step_inputs(pipe, bench_cloak.lfw_faces(pipe, args.photos), args.faces, dev)
    target = F.normalize(torch.randn(args.faces, ext.dim, generator=torch.Generator().manual_seed(0)), dim=1).to(dev)
    steps = {"ours_fp32": ours_step_s(ext, x0, mat, target, dev, args.iters)}
    for p in args.precisions:
        steps[f"ours_{p}"] = ours_step_s(with_precision(ext, p), x0, mat, target, dev, args.iters)
    with torch.no_grad():
        peer_chips = warp_batch(x0, mat, ext.chip_size).contiguous()
    steps.update(peer_steps_s(peer_chips, target, dev, args.iters, args.compile_peer))
    for k, s in steps.items():
        if not k.endswith("_s"):
            res[k] = {"ms_per_step": round(s * 1e3, 3), "face_steps_per_s": round(args.faces / s, 1)}
            print(k, res[k], flush=True)
    if "peer_compile_warmup_s" in steps:
        res["peer_compile_warmup_s"] = round(steps["peer_compile_warmup_s"], 1)
    Path(args.json).write_text(json.dumps(res, indent=1))
    missed = [p for p in args.precisions if not res[f"parity_{p}"]["goal_met"]]
    if missed:
        sys.exit(f"feature parity below {PARITY_GOAL} for {missed}")


if __name__ == "__main__":
    main()
