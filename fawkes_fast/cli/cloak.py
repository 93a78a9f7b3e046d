"""`fawkes-fast cloak PATH...`: cloak files and folders, write `<stem>_cloaked.<ext>`, report.

Everything that can be checked is checked before any work: the arguments, the device, every
output folder's writability and the report path. Each photo is written as soon as its batch is
done. The first Ctrl-C finishes the current batch and stops; a second stops at once. Either way
the summary and the report cover every input, and the exit code is 130.
"""
from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

from ..distributed import RayUnavailable, cloak_jobs_on_ray  # imports ray only when a run starts
from ..jobs import (FAILED, Interrupted, SaveOptions, check_report_path, cloak_jobs, make_row, plan_jobs,
                    write_report)
from .errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, UsageError, float_between, int_at_least, int_between


def add_cloak_options(p) -> None:
    p.add_argument("--mode", default="mid", choices=("low", "mid", "high"))
    p.add_argument("--format", default="png", choices=("png", "jpeg", "webp"))
    p.add_argument("--quality", type=int_between(1, 100), default=95, help="JPEG/WebP quality, 1-100 (default 95)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default: cuda when present)")
    p.add_argument("--batch-size", type=int_at_least(1), default=16, metavar="N",
                   help="photos cloaked together (all their faces); each batch is written when done (default 16)")
    p.add_argument("--seed", type=int_at_least(0), default=None)
    p.add_argument("--extractor", action="append", dest="extractors", metavar="NAME",
                   help="dlib, sface, dlib-robust, or a model file; repeat for a joint cloak (default dlib)")
    p.add_argument("--target", default="max", help="max, average, none, or a target-bank identity")
    p.add_argument("--diversity", type=float_between(0.0, 1.0), default=None, metavar="S",
                   help="random resize/shift/blur/JPEG each step (0-1; helps transfer to unseen trackers)")
    p.add_argument("--flip", action="store_true", default=None, help="flip-averaged features while optimising")
    p.add_argument("--blur-copy", type=float_between(0.0, 3.0), default=None, metavar="SIGMA",
                   help="also push a Gaussian-blurred copy of each face (LowKey; sigma in chip pixels, 0 off)")
    p.add_argument("--ghost", type=float_between(0.0, 0.5), default=None, metavar="P",
                   help="channel dropout inside dlib-family models each step (ghost copies; 0 off)")
    p.add_argument("--momentum", type=float_between(0.0, 0.999), default=None, metavar="B1",
                   help="Adam's beta1 (default 0.9)")
    p.add_argument("--keep-metadata", action="store_true",
                   help="keep EXIF (incl. GPS; never the thumbnail or previews) and the ICC profile")
    p.add_argument("--overwrite", action="store_true", help="replace existing *_cloaked outputs (never an input)")
    p.add_argument("--json", dest="json_report", metavar="REPORT", help="write a JSON report here")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def add_parser(sub) -> None:
    c = sub.add_parser("cloak", help="cloak the faces in photos")
    c.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (recursed)")
    c.add_argument("-o", "--output", metavar="DIR", help="write outputs here instead of beside inputs")
    add_cloak_options(c)
    c.add_argument("--ray", nargs="?", const="auto", default=None, metavar="ADDRESS",
                   help="run on a Ray cluster (auto, or the cluster's address); needs fawkes_fast[ray]")
    c.add_argument("--actors", type=int_at_least(1), default=None, metavar="N",
                   help="with --ray: Cloaker actors (default: one per GPU, else per CPU)")
    c.set_defaults(func=cmd_cloak)


def check_device(args):
    """The torch device for --device; a bad name or a missing GPU is a usage error."""
    from ..device import resolve_device

    try:
        return resolve_device(args.device)
    except ValueError as e:
        raise UsageError(str(e)) from None


def cloaker_kwargs(args, device) -> dict:
    transfer = {k: getattr(args, k) for k in ("diversity", "flip", "blur_copy", "ghost", "momentum")
                if getattr(args, k) is not None}
    return dict(mode=args.mode, extractors=tuple(args.extractors or ("dlib",)), device=device,
                batch_size=args.batch_size, **transfer)


def make_cloaker(args):
    """The Cloaker for these arguments; a bad device, extractor or option is a usage error."""
    from ..cloaker import Cloaker

    try:
        return Cloaker(**cloaker_kwargs(args, check_device(args)))
    except (ValueError, TypeError, FileNotFoundError, KeyError) as e:
        raise UsageError(str(e).strip("'\"")) from None


@contextmanager
def _first_ctrl_c_finishes_the_batch():
    """While inside: the first Ctrl-C sets the returned event (the run stops after the current
    batch); a second raises KeyboardInterrupt. Outside the main thread, Ctrl-C is left alone."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def on_sigint(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("\nstopping after the current batch (Ctrl-C again to stop now)", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def _progress(args, total: int):
    if args.quiet:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="photo", desc="cloaking", file=sys.stderr)


def _cloak_on_ray(args, jobs, options, **run) -> list[dict]:
    """The same jobs on a Ray cluster (fawkes_fast.distributed); the device is the actors'."""
    try:
        return cloak_jobs_on_ray(jobs, options, cloaker_kwargs=cloaker_kwargs(args, args.device),
                                 address=args.ray, actors=args.actors, **run)
    except RayUnavailable as e:
        raise UsageError(str(e)) from None


def _run(args, jobs) -> tuple[list[dict], bool]:
    """Cloak the jobs; returns the rows and whether the run was interrupted."""
    options = SaveOptions(args.format, args.quality, args.keep_metadata, args.overwrite)
    with _first_ctrl_c_finishes_the_batch() as stop:
        bar = _progress(args, len(jobs))
        run = dict(seed=args.seed, target=args.target, batch_size=args.batch_size,
                   on_row=bar and (lambda row: bar.update(1)), should_stop=stop.is_set)
        try:
            if getattr(args, "ray", None):  # `demo` has no --ray
                rows = _cloak_on_ray(args, jobs, options, **run)
            else:
                cloaker = make_cloaker(args) if any(j.status is None for j in jobs) else None
                rows = cloak_jobs(cloaker, jobs, options, **run)
            interrupted = stop.is_set()
        except Interrupted as e:
            rows, interrupted = e.rows, True
        finally:
            if bar is not None:
                bar.close()
    return rows, interrupted


def print_summary(rows, file=None) -> None:
    print(f"\n{'file':<40} {'status':<11} {'faces':>5} {'max DSSIM':>9} {'s':>6}", file=file)
    for r in rows:
        dssim = max((f["dssim"] for f in r["faces"]), default=float("nan"))
        seconds = "-" if r["seconds"] is None else f"{r['seconds']:.1f}"
        print(f"{Path(r['source']).name[:40]:<40} {r['status']:<11} {len(r['faces']):>5} {dssim:>9.4f} {seconds:>6}",
              file=file)
        if r["status"] in FAILED or r["status"] == "skipped":
            print(f"    {r['reason']}", file=file)
    counts = {s: sum(r["status"] == s for r in rows) for s in
              ("cloaked", "no_face", "exists", "skipped", "over_budget", "error")}
    print(f"{counts['cloaked']} cloaked, {counts['no_face']} without a face, {counts['exists']} already there, "
          f"{counts['skipped']} skipped, {counts['over_budget']} over the budget (not written), "
          f"{counts['error']} failed", file=file)
    if counts["exists"]:
        print("outputs that already existed were left alone; --overwrite replaces them", file=file)


def cmd_cloak(args) -> int:
    if getattr(args, "ray", None) is None:  # on Ray, the actors' machines decide
        check_device(args)
    try:
        jobs = plan_jobs(args.paths, args.output, args.format, args.overwrite)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if not jobs or all(j.status == "skipped" for j in jobs):
        print_summary([make_row(j, j.status, j.reason) for j in jobs])
        raise UsageError("no images to cloak")
    if args.json_report:
        try:
            check_report_path(args.json_report, [j.source for j in jobs] + [j.output for j in jobs if j.output])
        except ValueError as e:
            raise UsageError(str(e)) from None
    rows, interrupted = _run(args, jobs)
    print_summary(rows)
    if args.json_report:
        write_report(args.json_report, rows, protect=[j.source for j in jobs])
        print(f"report: {args.json_report}")
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if any(r["status"] in FAILED for r in rows) else EXIT_OK

