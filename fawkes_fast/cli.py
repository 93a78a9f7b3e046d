"""`fawkes-fast`: cloak photos, run the demo, build models.

    fawkes-fast cloak PATH... [-o DIR] [--mode low|mid|high] [--format png|jpeg] ...
    fawkes-fast demo [-o DIR]
    fawkes-fast evaluate --original DIR --cloaked DIR [--extractor NAME ...] [--report PATH]
    fawkes-fast models build | train-robust (see fawkes_fast/extractors/cli_models.py)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _cloak_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", default="mid", choices=("low", "mid", "high"))
    p.add_argument("--format", default="png", choices=("png", "jpeg", "webp"))
    p.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality (default 95)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--batch-size", type=int, default=16, help="photos per optimisation batch")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--extractor", action="append", dest="extractors", metavar="NAME",
                   help="dlib, sface, or a model file; repeat for a joint cloak (default dlib)")
    p.add_argument("--target", default="max", help="max, average, none, or a target-bank identity")
    p.add_argument("--diversity", type=float, default=None, metavar="S",
                   help="random resize/shift/blur/JPEG each step (0-1; helps transfer to unseen trackers)")
    p.add_argument("--flip", action="store_true", default=None, help="flip-averaged features while optimising")
    p.add_argument("--keep-metadata", action="store_true", help="keep EXIF (incl. GPS) and ICC profile")
    p.add_argument("--overwrite", action="store_true", help="replace existing *_cloaked outputs")
    p.add_argument("--json", dest="json_report", metavar="REPORT", help="write a JSON report here")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fawkes-fast", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("cloak", help="cloak the faces in photos")
    c.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (recursed)")
    c.add_argument("-o", "--output", metavar="DIR", help="write outputs here instead of beside inputs")
    _cloak_args(c)
    c.set_defaults(func=cmd_cloak)
    d = sub.add_parser("demo", help="cloak scikit-image's astronaut portrait")
    d.add_argument("-o", "--output", metavar="DIR", default="fawkes-demo")
    _cloak_args(d)
    d.set_defaults(func=cmd_demo)
    from .evaluate.cli_evaluate import add_parser as add_evaluate

    add_evaluate(sub)
    from .extractors.cli_models import add_parser as add_models

    add_models(sub)
    return ap


def _report_row(job_source, out, result, seconds) -> dict:
    return {"source": str(job_source), "output": str(out) if out else None, "status": result.status,
            "error": result.error, "seconds": round(seconds, 3),
            "faces": [{"box": f.box, "region": f.region, "target": f.target, "dssim": f.dssim,
                       "steps": f.steps, "distances": f.distances} for f in result.faces]}


def _print_summary(rows) -> None:
    print(f"\n{'file':<40} {'status':<9} {'faces':>5} {'max DSSIM':>9} {'s':>6}")
    for r in rows:
        dss = max((f["dssim"] for f in r["faces"]), default=float("nan"))
        name = Path(r["source"]).name[:40]
        print(f"{name:<40} {r['status']:<9} {len(r['faces']):>5} {dss:>9.4f} {r['seconds']:>6.1f}")
        if r["error"] and r["status"] == "error":
            print(f"    {r['error']}")
    counts = {s: sum(r["status"] == s for r in rows) for s in ("cloaked", "no_face", "error")}
    print(f"{counts['cloaked']} cloaked, {counts['no_face']} without a face, {counts['error']} failed")


def _save(result, out: Path, args, protect) -> None:
    from .io.images import save_image_atomic

    info = result.info
    keep = args.keep_metadata and info is not None
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image_atomic(out, result.image, format=args.format, quality=args.quality,
                      exif=info.exif if keep else None, icc_profile=info.icc_profile if keep else None,
                      overwrite=args.overwrite, protect=protect)


def _run_cloak(jobs, args) -> list[dict]:
    from . import Cloaker
    from .cloaker import CloakResult

    transfer = {k: v for k, v in (("diversity", args.diversity), ("flip", args.flip)) if v is not None}
    cloaker = Cloaker(mode=args.mode, extractors=tuple(args.extractors or ("dlib",)), device=args.device, **transfer)
    protect = [j.source for j in jobs]
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), unit="photo", desc="cloaking", file=sys.stderr)
    rows = []
    for s in range(0, len(jobs), args.batch_size):
        chunk = jobs[s:s + args.batch_size]
        todo, rows_chunk = [], {}
        for j in chunk:  # refuse up front what could never be written
            if j.output.exists() and not args.overwrite:
                rows_chunk[j.source] = CloakResult(None, "error", f"{j.output} exists (use --overwrite)")
            else:
                todo.append(j)
        t0 = time.perf_counter()
        results = cloaker.cloak([j.source for j in todo], seed=args.seed, target=args.target,
                                format=args.format, quality=args.quality) if todo else []
        seconds = (time.perf_counter() - t0) / max(len(todo), 1)
        for j, r in zip(todo, results):
            if r.status == "cloaked":
                try:  # written as soon as its batch is done: an interrupted run keeps it
                    _save(r, j.output, args, protect)
                except Exception as e:  # noqa: BLE001
                    r = CloakResult(None, "error", f"{type(e).__name__}: {e}", r.faces)
            rows_chunk[j.source] = r
        for j in chunk:
            r = rows_chunk[j.source]
            rows.append(_report_row(j.source, j.output if r.status == "cloaked" else None, r,
                                    seconds if j in todo else 0.0))
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return rows


def cmd_cloak(args) -> int:
    from .io.outputs import plan_outputs

    jobs = plan_outputs(args.paths, args.output, args.format)
    if not jobs:
        print("no images found", file=sys.stderr)
        return 2
    rows = _run_cloak(jobs, args)
    _print_summary(rows)
    if args.json_report:
        Path(args.json_report).write_text(json.dumps(rows, indent=1))
    return 1 if any(r["status"] == "error" for r in rows) else 0


def cmd_demo(args) -> int:
    import numpy as np
    from skimage import data

    from .io.images import save_image_atomic
    from .io.outputs import SUFFIX_OF_FORMAT

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    original = out / "astronaut.png"
    save_image_atomic(original, data.astronaut(), overwrite=True)
    args.paths, args.overwrite = [str(original)], True
    code = cmd_cloak(args)
    cloaked = out / f"astronaut_cloaked{SUFFIX_OF_FORMAT[args.format]}"
    if cloaked.exists():
        from .io.images import load_image

        side = np.concatenate([data.astronaut(), load_image(cloaked)], axis=1)
        save_image_atomic(out / "astronaut_side_by_side.png", side, overwrite=True)
        print(f"wrote {cloaked} and {out / 'astronaut_side_by_side.png'}")
    return code


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
