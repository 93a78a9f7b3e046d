"""`fawkes-fast`: cloak photos, run the demo, check your protection, build models, serve.

    fawkes-fast cloak PATH... [-o DIR] [--mode low|mid|high|paper] [--format png|jpeg|webp] ...
    fawkes-fast demo [-o DIR]
    fawkes-fast evaluate --original DIR --cloaked DIR [--extractor NAME ...] [--report PATH]
    fawkes-fast models build | train-robust
    fawkes-fast serve [--host H] [--port P] ...

Exit codes: 0 done (every photo cloaked, without a face, already there or skipped); 1 a photo
failed (error or over_budget); 2 a usage error (bad arguments, nothing to do); 130 interrupted.
"""
from __future__ import annotations

import argparse
import os
import sys

from . import cloak, demo, evaluate, models, serve
from .errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, UsageError


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fawkes-fast", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    for command in (cloak, demo, evaluate, models, serve):
        command.add_parser(sub)
    return ap


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse has printed the usage error (or --help)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    try:
        return args.func(args)
    except UsageError as e:
        print(f"fawkes-fast {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - a user sees one line, not a traceback
        if os.environ.get("FAWKES_FAST_TRACEBACK") == "1":
            raise
        print(f"fawkes-fast {args.command}: {type(e).__name__}: {e}\n"
              "(set FAWKES_FAST_TRACEBACK=1 to see where it came from)", file=sys.stderr)
        return EXIT_FAILED

