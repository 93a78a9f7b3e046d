"""`fawkes-fast evaluate --original DIR --cloaked DIR [--extractor dlib ...] [--report report.html|report.md]`

Estimates how well your cloaked photos protect you, using no third-party photos (see
fawkes_fast.evaluate.user_check). Prints a table; optionally writes an HTML or Markdown report
with before/after thumbnails and a plot of the feature shift per photo.
"""
from __future__ import annotations

import base64
import importlib.util
import io
import json
from pathlib import Path

import numpy as np

from PIL import Image

from ..io.files import write_atomic
from ..io.images import load_image
from .errors import UsageError


def add_parser(subparsers):
    p = subparsers.add_parser("evaluate", help="estimate your protection from original + cloaked photos")
    p.add_argument("--original", required=True, metavar="DIR", help="folder of your original photos")
    p.add_argument("--cloaked", required=True, metavar="DIR", help="folder of their cloaked versions (x.jpg -> x_cloaked.png)")
    p.add_argument("--extractor", action="append", dest="extractors", metavar="NAME",
                   help="dlib, sface, dlib-robust or facenet (those the target bank holds; repeatable; default dlib)")
    p.add_argument("--population", type=int, default=100, help="other identities the simulated tracker knows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report", metavar="PATH", help="write report.html or report.md (thumbnails + plot)")
    p.add_argument("--json", dest="json_out", metavar="PATH", help="write the numbers as JSON")
    p.set_defaults(func=run)
    return p


def _write_text(path, text: str) -> None:
    write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def _thumb(path, side=112) -> bytes:
    img = Image.fromarray(load_image(str(path)))
    img.thumbnail((side, side))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _plot(results) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    for r in results:
        if r.shift:
            ax.plot(range(1, len(r.shift) + 1), r.shift, "o-", label=f"{r.extractor} (same-person < {r.threshold:.2f})")
            ax.axhline(r.threshold, ls=":", lw=1, color=ax.lines[-1].get_color())
    ax.set_xlabel("photo"); ax.set_ylabel("feature shift original→cloaked"); ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO(); fig.savefig(buf, format="png", dpi=100); plt.close(fig)
    return buf.getvalue()


def _pct(v):
    return "n/a" if v is None else f"{100 * v:.0f}%"


def write_report(path, pairs, results, text_table: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plot = _plot(results)
    html = path.suffix.lower() in (".html", ".htm")
    summary = [(r.extractor, r.photos, _pct(r.protection_loo), _pct(r.protection_same), _pct(r.protection_match),
                f"{np.mean(r.shift):.3f}" if r.shift else "n/a") for r in results]
    head = ["extractor", "photos", "protection (leave-one-out)", "same-photo", "matching", "mean shift"]
    if html:
        uri = lambda b, m: f"data:{m};base64,{base64.b64encode(b).decode()}"  # noqa: E731
        rows = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in s) + "</tr>" for s in summary)
        thumbs = "".join(f"<tr><td>{p.original.name}</td><td><img src='{uri(_thumb(p.original), 'image/jpeg')}'></td>"
                         f"<td><img src='{uri(_thumb(p.cloaked), 'image/jpeg')}'></td></tr>" for p in pairs)
        _write_text(path,
            "<!doctype html><meta charset='utf-8'><title>fawkes-fast protection report</title>"
            "<style>body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:4px}table{border-collapse:collapse}</style>"
            "<h1>Protection estimate</h1><p>A simulated tracker (linear classifier on the target bank's other people plus "
            "your cloaked photos' features) tries to recognise your original photos. Protection = share NOT recognised.</p>"
            f"<table><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr>{rows}</table>"
            f"<h2>Feature shift</h2><img src='{uri(plot, 'image/png')}'>"
            f"<h2>Photos</h2><table><tr><th>photo</th><th>original</th><th>cloaked</th></tr>{thumbs}</table>")
        return
    files = path.parent / (path.stem + "_files")
    files.mkdir(parents=True, exist_ok=True)
    (files / "shift.png").write_bytes(plot)
    lines = ["# Protection estimate", "", "A simulated tracker (linear classifier on the target bank's other people plus "
             "your cloaked photos' features) tries to recognise your original photos. Protection = share NOT recognised.",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in s) + " |" for s in summary]
    lines += ["", f"![feature shift]({files.name}/shift.png)", "", "| photo | original | cloaked |", "|---|---|---|"]
    for i, p in enumerate(pairs):
        (files / f"{i}_original.jpg").write_bytes(_thumb(p.original))
        (files / f"{i}_cloaked.jpg").write_bytes(_thumb(p.cloaked))
        lines.append(f"| {p.original.name} | ![]({files.name}/{i}_original.jpg) | ![]({files.name}/{i}_cloaked.jpg) |")
    _write_text(path, "\n".join(lines) + "\n")


def require_eval_extra(report: bool) -> None:
    """The `eval` extra, checked before any work: scikit-learn always, matplotlib for --report (it
    used to fail after the whole evaluation, with the table printed and no report)."""
    needed = {"sklearn": "scikit-learn", **({"matplotlib": "matplotlib"} if report else {})}
    missing = [pip for module, pip in needed.items() if importlib.util.find_spec(module) is None]
    if missing:
        what = "--report needs" if missing == ["matplotlib"] else "evaluate needs"
        raise UsageError(f"{what} {' and '.join(missing)}, from the eval extra: "
                         f"pip install \"fawkes_fast[eval]\" (or pip install {' '.join(missing)})")


def run(args) -> int:
    require_eval_extra(bool(args.report))
    from ..evaluate.user_check import check, table

    try:
        pairs, results = check(args.original, args.cloaked, tuple(args.extractors or ("dlib",)),
                               population=args.population, seed=args.seed)
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(str(e)) from None
    text = table(results)
    print(f"{len(pairs)} photo pairs; simulated tracker: {results[0].population} other identities from the target bank")
    print(text)
    if args.report:
        write_report(args.report, pairs, results, text)
        print(f"report: {args.report}")
    if args.json_out:
        _write_text(args.json_out, json.dumps({"pairs": [[str(p.original), str(p.cloaked)] for p in pairs],
                                                   "results": [r.__dict__ for r in results]}, indent=1))
    return 0
