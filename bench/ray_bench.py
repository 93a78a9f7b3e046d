"""The Ray path's cost (issue #13): overhead against a local run, scaling with actors, and a cost
model per million photos.

    python bench/ray_bench.py [--count 40] [--mode mid] [--actors 1 2] [--batch-size 8]
        [--cpus-per-actor 1] [--num-cpus 2] [--address ADDR] [--device cpu|cuda]
        [--gpu-photos-per-s X --gpus 1 8 64 [--price-per-gpu-hour P]] [--out bench/results/ray.json]

1. Local: one Cloaker with --cpus-per-actor torch threads (what one actor gets) cloaks the photos
   through `jobs.cloak_jobs`, timed with and without building the Cloaker.
2. Ray: a cluster is started (or joined with --address), then `distributed.cloak_paths` cloaks the
   same photos with each actor count, into a fresh folder each time. Every run is checked
   pixel for pixel against the local run.
3. Overhead = Ray with one actor minus local (both including the model load); scaling = wall
   time at 1 actor / at N actors. Each actor count also runs on the first --short photos: the
   difference between the two runs is the steady state (photos/s once the actors are up), and
   what the short run took beyond it is the fixed cost (actors started, models loaded).
4. With --gpu-photos-per-s (the measured per-GPU throughput from bench/RESULTS.md; nothing is
   assumed), the cost model per million photos on each --gpus count:
       hours(N) = (fixed + 1e6 / (N * X * E)) / 3600,   GPU-hours = N * hours(N)
   where fixed = cluster start + the fixed cost at the largest actor count, and E = the
   parallel efficiency there (its steady-state photos/s / (actors x one actor's), at most 1)
   times Ray's cost per photo (one actor's steady photos/s / the local run's, at most 1).
   Use enough photos (a few hundred per actor) for the steady state to mean something.
Photos: the first photo of the first --count LFW identities (../shared/data/lfw, or --lfw).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LFW = ROOT.parent / "shared" / "data" / "lfw"


def lfw_photos(lfw: Path, count: int) -> list[Path]:
    """The first photo of each of the first `count` identities, by name."""
    people = sorted(p for p in lfw.iterdir() if p.is_dir())
    photos = [min(p.glob("*.jpg")) for p in people[:count]]
    if len(photos) < count:
        raise SystemExit(f"{lfw} holds only {len(photos)} identities")
    return photos


def cloaker_kwargs(args) -> dict:
    steps = {"steps": args.steps} if args.steps else {}
    return {"mode": args.mode, "extractors": tuple(args.extractors), "device": args.device,
            "batch_size": args.batch_size, **steps}


def run_local(args, photos, out: Path) -> tuple[dict, list[dict]]:
    import torch

    from fawkes_fast import Cloaker
    from fawkes_fast.jobs import SaveOptions, cloak_jobs, plan_jobs

    torch.set_num_threads(max(1, int(args.cpus_per_actor)))  # what one actor gets
    start = time.perf_counter()
    cloaker = Cloaker(**cloaker_kwargs(args))
    cloaker.pipeline.extractors  # the models load lazily; count their load here
    built = time.perf_counter()
    rows = cloak_jobs(cloaker, plan_jobs(photos, out), SaveOptions(), seed=args.seed, batch_size=args.batch_size)
    done = time.perf_counter()
    return {"wall_s": done - start, "model_load_s": built - start, "cloak_s": done - built,
            "torch_threads": torch.get_num_threads(), "statuses": count_statuses(rows)}, rows


def count_statuses(rows) -> dict:
    counts: dict = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return counts


def same_pixels(local_rows, ray_rows, local_out: Path, ray_out: Path) -> tuple[int, int]:
    """(outputs identical to the local run's, outputs compared)."""
    from PIL import Image

    names = [Path(r["output"]).relative_to(local_out) for r in local_rows if r["status"] == "cloaked"]
    written = {Path(r["output"]).relative_to(ray_out) for r in ray_rows if r["status"] == "cloaked"}
    def pixels(path: Path) -> np.ndarray:
        return np.asarray(Image.open(path))

    same = sum(n in written and np.array_equal(pixels(local_out / n), pixels(ray_out / n)) for n in names)
    return same, len(names)


def start_ray(args) -> float:
    import ray

    start = time.perf_counter()
    if args.address:
        ray.init(address=args.address, log_to_driver=False)
    else:
        ray.init(num_cpus=args.num_cpus, num_gpus=args.num_gpus, include_dashboard=False, log_to_driver=False,
                 object_store_memory=args.object_store_mb * 2**20)
    return time.perf_counter() - start


def run_ray(args, photos, actors: int, out: Path) -> tuple[float, list[dict]]:
    """(wall seconds, rows) of one `cloak_paths` run, actors started and models loaded included."""
    from fawkes_fast.distributed import cloak_paths

    options = cloaker_kwargs(args)
    extra = {k: v for k, v in options.items() if k not in ("mode", "extractors", "device", "batch_size")}
    start = time.perf_counter()
    rows = cloak_paths(photos, out, actors=actors, cpus_per_actor=args.cpus_per_actor, mode=args.mode,
                       extractors=args.extractors, device=args.device, seed=args.seed, batch_size=args.batch_size,
                       **extra)
    return time.perf_counter() - start, rows


def measure_actors(args, photos, actors: int, work: Path, local_rows) -> dict:
    """Two runs, on the first --short photos and on all: their difference is the steady state
    (photos/s once the actors are up), what is left of the short run is the fixed cost."""
    short_wall, _ = run_ray(args, photos[:args.short], actors, work / f"ray{actors}_short")
    wall, rows = run_ray(args, photos, actors, work / f"ray{actors}")
    steady = (len(photos) - args.short) / (wall - short_wall) if wall > short_wall else None
    identical, compared = same_pixels(local_rows, rows, work / "local", work / f"ray{actors}")
    return {"actors": actors, "wall_s": wall, "photos_per_s": len(photos) / wall, "short_wall_s": short_wall,
            "steady_photos_per_s": steady, "fixed_s": short_wall - args.short / steady if steady else None,
            "identical": identical, "compared": compared, "statuses": count_statuses(rows)}


def cost_model(args, fixed_s: float, summary: dict) -> dict | None:
    """Hours and GPU-hours per million photos on each GPU count (see the module docstring)."""
    if not args.gpu_photos_per_s or "efficiency" not in summary:
        return None
    efficiency = summary["efficiency"] * min(1.0, summary["steady_vs_local"])
    rows = []
    for n in args.gpus:
        hours = (fixed_s + 1e6 / (n * args.gpu_photos_per_s * efficiency)) / 3600
        row = {"gpus": n, "hours": hours, "gpu_hours": n * hours}
        if args.price_per_gpu_hour:
            row["cost"] = n * hours * args.price_per_gpu_hour
        rows.append(row)
    return {"per_gpu_photos_per_s": args.gpu_photos_per_s, "throughput_source": args.throughput_source,
            "fixed_s": fixed_s, "efficiency": efficiency, "photos": 1_000_000, "rows": rows}


def summarise(local: dict, count: int, startup_s: float, runs: list[dict]) -> dict:
    one = next((r for r in runs if r["actors"] == 1), None)
    most = max(runs, key=lambda r: r["actors"])
    summary = {"ray_start_s": startup_s, "fixed_s": most["fixed_s"]}
    if one is not None:
        summary["overhead_s"] = one["wall_s"] - local["wall_s"]
        summary["overhead_ratio"] = one["wall_s"] / local["wall_s"]
        summary["scaling"] = {r["actors"]: one["wall_s"] / r["wall_s"] for r in runs}
        if one["steady_photos_per_s"] and most["steady_photos_per_s"]:  # start-up left out
            steady = most["steady_photos_per_s"] / one["steady_photos_per_s"]
            summary["steady_scaling"] = steady
            summary["efficiency"] = min(1.0, steady / most["actors"])
            # one actor's steady photos/s against the local run's (Ray's cost per photo)
            summary["steady_vs_local"] = one["steady_photos_per_s"] / (count / local["cloak_s"])
    return summary


def report(result: dict) -> str:
    local, s = result["local"], result["summary"]
    lines = [f"photos: {result['config']['count']}, mode {result['config']['mode']}, {result['machine']}",
             f"local: {local['wall_s']:.2f} s ({local['model_load_s']:.2f} s model load, "
             f"{local['cloak_s']:.2f} s cloaking, {local['torch_threads']} torch threads)",
             f"ray start: {s['ray_start_s']:.2f} s"]
    for r in result["ray"]:
        steady = "-" if r["steady_photos_per_s"] is None else f"{r['steady_photos_per_s']:.2f}"
        fixed = "-" if r["fixed_s"] is None else f"{r['fixed_s']:.1f}"
        lines.append(f"ray, {r['actors']} actor(s): {r['wall_s']:.2f} s, {r['photos_per_s']:.2f} photos/s "
                     f"(steady {steady} photos/s, fixed {fixed} s), "
                     f"{r['identical']}/{r['compared']} outputs identical to the local run")
    if "overhead_s" in s:
        lines.append(f"overhead (1 actor - local): {s['overhead_s']:.2f} s ({s['overhead_ratio']:.2f}x); scaling "
                     + ", ".join(f"{a} actors {x:.2f}x" for a, x in s["scaling"].items())
                     + (f"; steady-state scaling {s['steady_scaling']:.2f}x, efficiency {s['efficiency']:.2f}"
                        if "steady_scaling" in s else ""))
    model = result.get("cost_model")
    if model:
        lines.append(f"per million photos at {model['per_gpu_photos_per_s']} photos/s per GPU "
                     f"({model['throughput_source']}), fixed {model['fixed_s']:.0f} s, "
                     f"efficiency {model['efficiency']:.2f}:")
        lines += [f"  {r['gpus']:>4} GPUs: {r['hours']:.2f} h, {r['gpu_hours']:.1f} GPU-hours"
                  + (f", cost {r['cost']:.2f}" if "cost" in r else "") for r in model["rows"]]
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lfw", type=Path, default=LFW)
    ap.add_argument("--count", type=int, default=40, help="photos (default 40)")
    ap.add_argument("--short", type=int, default=None, help="photos of the short run (default: a quarter)")
    ap.add_argument("--mode", default="mid")
    ap.add_argument("--steps", type=int, default=None, help="override the mode's steps (quick checks)")
    ap.add_argument("--extractor", action="append", dest="extractors", default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--cpus-per-actor", type=float, default=1)
    ap.add_argument("--address", default=None, help="join this cluster instead of starting a local one")
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local cluster (default: all)")
    ap.add_argument("--num-gpus", type=int, default=None, help="GPUs of the local cluster (default: all)")
    ap.add_argument("--object-store-mb", type=int, default=200)
    ap.add_argument("--gpu-photos-per-s", type=float, default=None,
                    help="measured photos/s of one GPU (from bench/RESULTS.md) for the cost model")
    ap.add_argument("--throughput-source", default="", help="where that figure comes from, for the record")
    ap.add_argument("--gpus", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--price-per-gpu-hour", type=float, default=None)
    ap.add_argument("--work", type=Path, default=None, help="folder for the outputs (default: a temp folder)")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here")
    args = ap.parse_args(argv)
    args.extractors = args.extractors or ["dlib"]
    args.short = args.short or max(1, args.count // 4)
    if not 0 < args.short < args.count:
        ap.error("--short must be between 1 and --count - 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import ray

    photos = lfw_photos(args.lfw, args.count)
    work = Path(tempfile.mkdtemp(prefix="ray_bench_", dir=args.work))
    local, local_rows = run_local(args, photos, work / "local")
    startup = start_ray(args)
    try:
        runs = [measure_actors(args, photos, n, work, local_rows) for n in args.actors]
    finally:
        ray.shutdown()
    summary = summarise(local, len(photos), startup, runs)
    result = {"machine": f"{platform.node()}, {platform.processor() or platform.machine()}, ray {ray.__version__}",
              "time": time.strftime("%Y-%m-%d %H:%M:%S"), "config": vars(args) | {"count": len(photos)},
              "local": local, "ray": runs, "summary": summary,
              "cost_model": cost_model(args, startup + (summary["fixed_s"] or 0.0), summary)}
    print(report(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1, default=str))
        print(f"wrote {args.out}")
    print(f"outputs in {work}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
