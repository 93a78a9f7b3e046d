#!/usr/bin/env python
"""Benchmarks of the fused kernels vs their PyTorch peers (same data, same run).

SSIM forward+backward vs pytorch-msssim (and fused-ssim on CUDA when importable); tanh-space
Adam step vs torch.optim.Adam (foreach / fused) with the tanh map in autograd.
Prints a table and writes bench/RESULTS-kernels.md (or --out). torch threads are left at default.

    python bench/bench_kernels.py [--quick] [--device cpu|cuda|all] [--out PATH]
    python bench/bench_kernels.py --floors --device cuda --json OUT.json   # bench/gpu_check.sh

--floors times SSIM forward+backward and the tanh-Adam step at the issue's sizes against their
memory floors: bytes that must move / the copy bandwidth measured in the same run.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import fawkes_fast.ops as ops  # noqa: E402

try:
    import pytorch_msssim
except ImportError:  # pragma: no cover
    pytorch_msssim = None
try:
    from fused_ssim import fused_ssim
except Exception:  # pragma: no cover
    fused_ssim = None


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


class Time(float):
    """Median wall time in ms (a float) that also carries the best (minimum) time."""

    best: float


def timeit(fn, device, min_time=0.4, max_reps=200, warmup=2):
    """Median wall time (ms) of fn() over repeated calls; `.best` holds the minimum."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    t_start = time.perf_counter()
    while len(times) < max_reps and (len(times) < 3 or time.perf_counter() - t_start < min_time):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    t = Time(statistics.median(times))
    t.best = min(times)
    return t


def machine():
    name = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                name = line.split(":", 1)[1].strip()
    except Exception:
        pass
    s = f"{name}, {os.cpu_count()} logical cores, torch {torch.__version__}, {torch.get_num_threads()} torch threads"
    try:
        s += ", load average at start %.2f" % os.getloadavg()[0]
    except OSError:
        pass
    if torch.cuda.is_available():
        s += f"; GPU {torch.cuda.get_device_name()}"
    return s


def _pair(shape, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g) * 255
    y = (x + torch.randn(shape, generator=g) * 15).clamp(0, 255)
    return x.to(device), y.to(device)


def bench_ssim(shape, device, rows, quick, label=None):
    label = label or device
    x, y = _pair(shape, device)
    big = x.numel() > 5e6
    kw = dict(min_time=0.2 if quick else 0.5, max_reps=20 if big else 200)

    def ours():
        xr = x.detach().requires_grad_()
        ops.ssim(xr, y).sum().backward()

    def ours_fwd():
        with torch.no_grad():
            ops.ssim(x, y)

    t_ours = timeit(ours, device, **kw)
    t_fwd = timeit(ours_fwd, device, **kw)
    peers = {}
    if pytorch_msssim is not None:
        def msssim():
            xr = x.detach().requires_grad_()
            pytorch_msssim.ssim(xr, y, data_range=255, size_average=False).sum().backward()
        peers["pytorch-msssim"] = timeit(msssim, device, **kw)
    if fused_ssim is not None and device == "cuda":
        xs, ys = x / 255, y / 255

        def fused():
            xr = xs.detach().requires_grad_()
            fused_ssim(xr, ys, padding="valid").backward()
        try:
            peers["fused-ssim"] = timeit(fused, device, **kw)
        except Exception as e:  # pragma: no cover
            print("fused_ssim failed:", e)
    name = "x".join(map(str, shape))
    for peer, tp in peers.items():
        rows.append(("SSIM fwd+bwd", label, name, t_ours, peer, tp, tp / t_ours))
    if not peers:
        rows.append(("SSIM fwd+bwd", label, name, t_ours, "-", float("nan"), float("nan")))
    rows.append(("SSIM fwd only", label, name, t_fwd, "-", float("nan"), float("nan")))


def bench_adam(shape, device, rows, quick, gbs, label=None):
    label = label or device
    g = torch.Generator().manual_seed(1)
    B = shape[0]
    x0 = (torch.rand(shape, generator=g) * 200 + 25).to(device)
    grad = (torch.randn(shape, generator=g) * 0.01).to(device)
    w = ops.image_to_tanh(x0).contiguous()
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    x = ops.tanh_to_image(w)
    step = torch.full((B,), 10.0, device=device)
    lr = torch.full((B,), 0.01, device=device)
    kw = dict(min_time=0.2 if quick else 0.5, max_reps=100)

    def ours():
        ops.tanh_adam_step(w, m, v, x, grad, step, lr)

    t_ours = timeit(ours, device, **kw)
    name = "x".join(map(str, shape))
    n = w.numel()
    gbs.append((label, name, t_ours, 32 * n / (t_ours * 1e-3) / 1e9))
    for variant in ("foreach", "fused"):
        w_ref = w.clone().requires_grad_()
        try:
            opt = torch.optim.Adam([w_ref], lr=0.01, **{variant: True})
        except (RuntimeError, ValueError, TypeError) as e:
            print(f"torch.optim.Adam({variant}=True) unsupported here: {e}")
            continue

        def torch_step():
            opt.zero_grad(set_to_none=True)
            xr = ops.tanh_to_image(w_ref)
            xr.backward(grad)
            opt.step()
            return xr

        try:
            tp = timeit(torch_step, device, **kw)
        except RuntimeError as e:  # pragma: no cover
            print(f"torch.optim.Adam({variant}=True) failed: {e}")
            continue
        rows.append(("tanh-Adam step", label, name, t_ours, f"torch Adam {variant} + autograd tanh", tp, tp / t_ours))


# bytes per pixel / element that must move at the least
SSIM_FLOOR_BYTES = 12  # fwd+bwd fused at the limit: read x and y once, write dx
SSIM_OURS_BYTES = 20  # ours: the forward reads x, y; the backward reads x, y again and writes dx
ADAM_FLOOR_BYTES = 32  # read w, m, v, grad; write w, m, v, x


def copy_bandwidth(device, n=1 << 26):
    """Achievable bytes/s of a device-to-device copy of n float32 (read + write counted)."""
    a = torch.empty(n, device=device)
    b = torch.empty_like(a)
    t = timeit(lambda: b.copy_(a), device, min_time=0.2, max_reps=50)
    return 2 * 4 * n / (t.best * 1e-3)


def bench_floors(device, ssim_shape, adam_shape, quick=True):
    """One dict: SSIM and tanh-Adam times, achieved bandwidth and their ratio to the floor."""
    bw = copy_bandwidth(device, 1 << (26 if device == "cuda" else 22))
    rows, gbs = [], []
    bench_ssim(ssim_shape, device, rows, quick)
    bench_adam(adam_shape, device, rows, quick, gbs)
    px = torch.Size(ssim_shape).numel()
    t_ssim = next(r[3] for r in rows if r[0] == "SSIM fwd+bwd")
    floor_ssim = SSIM_FLOOR_BYTES * px / bw * 1e3
    _, _, t_adam, _ = gbs[0]
    floor_adam = ADAM_FLOOR_BYTES * torch.Size(adam_shape).numel() / bw * 1e3
    peers = {r[4]: round(r[5].best, 4) for r in rows if r[0] == "SSIM fwd+bwd" and r[4] != "-"}
    return {
        "device": machine(), "copy_bandwidth_GBps": round(bw / 1e9, 1),
        "ssim": {"shape": list(ssim_shape), "ours_ms": round(t_ssim.best, 4), "ours_median_ms": round(t_ssim, 4),
                 "peers_ms": peers, "floor_ms": round(floor_ssim, 4),
                 "floor_with_recompute_ms": round(SSIM_OURS_BYTES * px / bw * 1e3, 4),
                 "over_floor": round(t_ssim.best / floor_ssim, 2), "goal_ms": 0.1},
        "tanh_adam": {"shape": list(adam_shape), "ours_ms": round(t_adam.best, 4),
                      "achieved_GBps": round(ADAM_FLOOR_BYTES * torch.Size(adam_shape).numel() / (t_adam.best * 1e-3) / 1e9, 1),
                      "floor_ms": round(floor_adam, 4), "over_floor": round(t_adam.best / floor_adam, 2), "goal_over_floor": 1.5},
    }


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="shorter timing loops")
    ap.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    ap.add_argument("--single-thread-too", action="store_true",
                    help="also time the CPU cases with torch.set_num_threads(1) (useful on a shared machine)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "kernels.md"))
    ap.add_argument("--floors", action="store_true", help="time the issue's sizes against their memory floors")
    ap.add_argument("--ssim-shape", type=int, nargs=4, default=[64, 3, 224, 224])
    ap.add_argument("--adam-shape", type=int, nargs=4, default=[128, 3, 150, 150])
    ap.add_argument("--json", help="with --floors: write the results here")
    args = ap.parse_args(argv)
    if args.floors:
        device = "cuda" if args.device == "all" else args.device
        res = bench_floors(device, tuple(args.ssim_shape), tuple(args.adam_shape), args.quick)
        print(json.dumps(res, indent=1))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=1)
        return
    devices = ["cpu"] if args.device == "cpu" else []
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append("cuda")
    if args.device == "all":
        devices = ["cpu"] + [d for d in devices if d != "cpu"]
    rows, gbs = [], []
    machine_line = machine()
    runs = []
    for device in devices:
        runs.append((device, device, None))
        if device == "cpu" and args.single_thread_too:
            runs.append((device, "cpu, 1 thread", 1))
    default_threads = torch.get_num_threads()
    for device, label, threads in runs:
        torch.set_num_threads(threads or default_threads)
        ssim_shapes = [(1, 3, 150, 150), (8, 3, 150, 150), (1, 3, 1000, 1000)]
        if device == "cuda":
            ssim_shapes += [(64, 3, 224, 224), (1, 3, 3000, 4000)]
        for shape in ssim_shapes:
            bench_ssim(shape, device, rows, args.quick, label)
            print(rows[-2] if len(rows) > 1 else rows[-1], flush=True)
        for shape in [(1, 3, 150, 150), (128, 3, 150, 150)]:
            bench_adam(shape, device, rows, args.quick, gbs, label)
            print(rows[-1], flush=True)
    torch.set_num_threads(default_threads)

    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## Fused kernels (fawkes_fast._C)",
        "",
        f"Machine: {machine_line}. Date: {when}. Extension loaded: {ops.HAS_EXTENSION}.",
        "Median wall time per call (best-of-run in brackets: the machine may be shared); SSIM = forward + backward of `ssim(x, y).sum()` w.r.t. x (y fixed);",
        "tanh-Adam = one in-place step of all images (peer: tanh map forward+backward in autograd +",
        "`torch.optim.Adam.step`). Speed-up = peer median / our median [peer best / our best].",
        "",
        "| op | device | shape | ours (ms) | peer | peer (ms) | speed-up |",
        "|---|---|---|---:|---|---:|---:|",
    ]
    for op, dev, shape, t, peer, tp, r in rows:
        tp_s = f"{tp:.3f} [{tp.best:.3f}]" if tp == tp else "-"
        r_s = f"{r:.1f}x [{tp.best / t.best:.1f}x]" if r == r else "-"
        lines.append(f"| {op} | {dev} | {shape} | {t:.3f} [{t.best:.3f}] | {peer} | {tp_s} | {r_s} |")
    if gbs:
        lines += ["", "tanh-Adam effective bandwidth (32 B/element moved: read w, m, v, grad; write w, m, v, x;",
                  "the floor without the x write is 28 B/element):", "",
                  "| device | shape | ours (ms) | GB/s |", "|---|---|---:|---:|"]
        for dev, shape, t, bw in gbs:
            lines.append(f"| {dev} | {shape} | {t:.3f} [{t.best:.3f}] | {bw:.1f} [{bw * t / t.best:.1f}] |")
    text = "\n".join(lines) + "\n"
    print(text)
    with open(args.out, "w") as f:
        f.write(text)
    print("wrote", args.out)


# ------------------------------------------------ pytest-benchmark entry points (opt-in):
#   pytest bench/bench_kernels.py --benchmark-only
def test_bench_ssim_fwd_bwd_ours(benchmark):
    x, y = _pair((1, 3, 150, 150), "cpu")

    def run():
        xr = x.detach().requires_grad_()
        ops.ssim(xr, y).sum().backward()
    benchmark(run)


def test_bench_ssim_fwd_bwd_msssim(benchmark):
    import pytest

    if pytorch_msssim is None:
        pytest.skip("pytorch-msssim not installed")
    x, y = _pair((1, 3, 150, 150), "cpu")

    def run():
        xr = x.detach().requires_grad_()
        pytorch_msssim.ssim(xr, y, data_range=255, size_average=False).sum().backward()
    benchmark(run)


def test_bench_tanh_adam_ours(benchmark):
    w = torch.zeros(8, 3, 150, 150)
    m, v, x, g = torch.zeros_like(w), torch.zeros_like(w), torch.zeros_like(w), torch.randn_like(w)
    benchmark(ops.tanh_adam_step, w, m, v, x, g, torch.full((8,), 5.0), torch.full((8,), 0.01))


if __name__ == "__main__":
    main()
