"""`fawkes-fast cloak PATH...`: cloak files and folders, write `<stem>_cloaked.<ext>`, report.

Everything that can be checked is checked before any photo is cloaked: the arguments (extractor
names, model files against their specs, the target, the options), the device, every output
folder's writability and the report path. Each photo is written as soon as its batch is done. The first Ctrl-C finishes the current batch and stops; a second stops at once. Either way
the summary and the report cover every input, and the exit code is 130.
"""
from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager

from ..distributed import RayUnavailable, cloak_jobs_on_ray, import_ray  # imports ray only when a run starts
from ..jobs import (FAILED, Interrupted, SaveOptions, check_report_path, cloak_jobs, judge_rows, make_row,
                    plan_jobs, write_report)
from ..model_files import ModelMissingError
from .errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, UsageError, float_between, int_at_least, int_between
from .summary import print_summary

# bare `--ray`: Ray's own default (address=None): the cluster of RAY_ADDRESS or of this machine, or else a new one
JOIN_OR_START = ""


def add_cloak_options(p) -> None:
    p.add_argument("--mode", default="mid", choices=("low", "mid", "high", "paper"),
                   help="mid (default) protects; low is as visible as a JPEG q80 re-save; high is the joint cloak; "
                        "paper: the DSSIM budget 0.007 (README \"Modes\")")
    p.add_argument("--format", default="png", choices=("png", "jpeg", "webp"))
    p.add_argument("--quality", type=int_between(1, 100), default=95, help="JPEG/WebP quality, 1-100 (default 95)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default: cuda when present)")
    p.add_argument("--batch-size", type=int_at_least(1), default=16, metavar="N",
                   help="photos read, cloaked and written per batch; each photo's faces are still optimised "
                        "on their own, so its pixels do not depend on N (default 16)")
    p.add_argument("--seed", type=int_at_least(0), default=None)
    p.add_argument("--extractor", action="append", dest="extractors", metavar="NAME",
                   help="dlib, sface, facenet, dlib-robust, or a model file with its JSON spec beside it; "
                        "repeat for a joint cloak (default: the mode's: dlib; high: dlib, sface and facenet)")
    p.add_argument("--target", default="max", help="max, average, none, or a target-bank identity")
    p.add_argument("--person", default=None, metavar="KEY",
                   help="the photos are all of one person: their largest faces share one target, chosen by the "
                        "first batch together (protects more than one target per photo)")
    p.add_argument("--diversity", type=float_between(0.0, 1.0), default=None, metavar="S",
                   help="random resize/shift/blur/JPEG each step (0-1; helps transfer to unseen trackers)")
    p.add_argument("--flip", action="store_true", default=None, help="flip-averaged features while optimising")
    p.add_argument("--blur-copy", type=float_between(0.0, 3.0), default=None, metavar="SIGMA",
                   help="also push a Gaussian-blurred copy of each face (LowKey; sigma in chip pixels, 0 off)")
    p.add_argument("--ghost", type=float_between(0.0, 0.5), default=None, metavar="P",
                   help="channel dropout inside the dlib-family models each step (ghost copies; other "
                        "models stay whole; 0 off)")
    p.add_argument("--momentum", type=float_between(0.0, 0.999), default=None, metavar="B1",
                   help="Adam's beta1 (default 0.9)")
    p.add_argument("--steps", type=int_at_least(1), default=None, metavar="N",
                   help="optimiser steps per face (default: the mode's; mid 30)")
    p.add_argument("--strength", type=float_between(0.01, 10.0), default=None, metavar="S",
                   help="the bounded shapes' bound: x JPEG's rounding (mid, default 2.5) or x JND (low, high); "
                        "`--steps 60 --strength 2` is the more robust mid of before 2026-12-04, at twice the time")
    p.add_argument("--keep-metadata", action="store_true",
                   help="keep EXIF (incl. GPS; never the thumbnail or previews) and the ICC profile")
    p.add_argument("--overwrite", action="store_true", help="replace existing *_cloaked outputs (never an input)")
    p.add_argument("--json", dest="json_report", metavar="REPORT", help="write a JSON report here")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--no-judge", dest="judge", action="store_false",
                   help="skip judging how visible each cloak is (butteraugli, SSIMULACRA2; on when installed)")


def add_parser(sub) -> None:
    c = sub.add_parser("cloak", help="cloak the faces in photos")
    c.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (recursed)")
    c.add_argument("-o", "--output", metavar="DIR", help="write outputs here instead of beside inputs")
    add_cloak_options(c)
    c.add_argument("--ray", nargs="?", const=JOIN_OR_START, default=None, metavar="ADDRESS",
                   help="run on Ray: alone, join RAY_ADDRESS's or this machine's cluster, or else start one; "
                        "auto: a running cluster; or the cluster's address. Needs fawkes_fast[ray]")
    c.add_argument("--actors", type=int_at_least(1), default=None, metavar="N",
                   help="with --ray: Cloaker actors (default: one per GPU, or a single actor on a CPU-only cluster)")
    c.set_defaults(func=cmd_cloak)


def on_ray(args) -> bool:
    return getattr(args, "ray", None) is not None  # `demo` has no --ray


def check_device(args):
    """The torch device for --device; a bad name or a missing GPU is a usage error."""
    from ..device import resolve_device

    try:
        return resolve_device(args.device)
    except ValueError as e:
        raise UsageError(str(e)) from None


def cloaker_kwargs(args, device) -> dict:
    options = {k: getattr(args, k) for k in ("diversity", "flip", "blur_copy", "ghost", "momentum", "steps", "strength")
               if getattr(args, k) is not None}
    return dict(mode=args.mode, extractors=tuple(args.extractors) if args.extractors else None, device=device,
                batch_size=args.batch_size, **options)


def make_cloaker(args):
    """The Cloaker for these arguments, checked: a bad device, extractor, model file, spec, target or
    option is a usage error. Its models are not loaded yet (`load_models`). On Ray the actors make
    their own, on their devices: this one, on the CPU, only checks the arguments."""
    from ..cloaker import Cloaker, check_target

    device = "cpu" if on_ray(args) else check_device(args)
    try:
        cloaker = Cloaker(**cloaker_kwargs(args, device))
        check_target(args.target, cloaker.extractor_names)
    except (ValueError, TypeError, FileNotFoundError, KeyError) as e:
        raise UsageError(e.args[0] if isinstance(e, KeyError) and e.args else str(e)) from None  # unquoted
    return cloaker


def load_models(cloaker) -> None:
    """The models loaded before the first photo: a model file that its spec does not describe, or a
    missing model package, is a usage error, not an error row per photo."""
    try:
        cloaker.load_models()
    except (ValueError, FileNotFoundError, ModelMissingError) as e:
        raise UsageError(str(e)) from None


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
                                 address=args.ray or None, actors=args.actors, **run)
    except RayUnavailable as e:
        raise UsageError(str(e)) from None


def _run(args, jobs, cloaker) -> tuple[list[dict], bool]:
    """Cloak the jobs (with `cloaker`, or on Ray); returns the rows and whether the run was interrupted."""
    options = SaveOptions(args.format, args.quality, args.keep_metadata, args.overwrite)
    with _first_ctrl_c_finishes_the_batch() as stop:
        bar = _progress(args, len(jobs))
        run = dict(seed=args.seed, target=args.target, batch_size=args.batch_size,
                   on_row=bar and (lambda row: bar.update(1)), should_stop=stop.is_set)
        try:
            if on_ray(args):
                rows = _cloak_on_ray(args, jobs, options, person=args.person, **run)
            else:
                rows = cloak_jobs(cloaker, jobs, options, person=args.person, **run)
            interrupted = stop.is_set()
        except Interrupted as e:
            rows, interrupted = e.rows, True
        finally:
            if bar is not None:
                bar.close()
    return rows, interrupted


def check_ray(args) -> None:
    """With --ray, Ray Data must be installed: said before anything else is done."""
    if on_ray(args):
        try:
            import_ray()
        except RayUnavailable as e:
            raise UsageError(str(e)) from None


def _judge(args, rows) -> None:
    """How visible each written cloak is, on the file as written: unless --no-judge, when installed."""
    from ..evaluate.judges import missing

    if not args.judge:
        return
    gone = missing()
    if gone:
        print("not judged how visible the cloaks are: " + "; ".join(gone.values()) + " missing", file=sys.stderr)
        return
    judge_rows(rows)


def cmd_cloak(args) -> int:
    check_ray(args)
    cloaker = make_cloaker(args)
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
    if any(j.status is None for j in jobs):
        load_models(cloaker)
    rows, interrupted = _run(args, jobs, cloaker)
    _judge(args, rows)
    print_summary(rows)
    if args.json_report:
        write_report(args.json_report, rows, protect=[j.source for j in jobs])
        print(f"report: {args.json_report}")
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if any(r["status"] in FAILED for r in rows) else EXIT_OK

