"""The table `fawkes-fast cloak` prints: one line per file, its reason under it, then the totals.

File names come from the disk and may hold anything: an ANSI escape would colour the terminal, a
newline would break the table, undecodable bytes (surrogates) would crash the print. So every
character that is not printable is shown escaped (``\\x1b``, ``\\n``, ``\\u202e``).
"""
from __future__ import annotations

from pathlib import Path

from ..jobs import FAILED


def printable(text: str) -> str:
    """`text` with each non-printable character (controls, bidi overrides, surrogates) escaped."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for c in str(text))


def looks_like(faces) -> str:
    """The most visible face's verdict, short: "JPEG q70" (about as visible as a q70 re-save), "> q50"
    (more visible than every re-save judged), "-" when not judged."""
    seen = [f["visibility"] for f in faces if f.get("visibility")]
    if not seen:
        return "-"
    known = [v["like_jpeg_quality"] for v in seen]
    if None in known:
        return f"> q{min(int(q) for q in seen[0]['resaves'])}"
    return f"JPEG q{min(known)}"


def print_summary(rows, file=None) -> None:
    print(f"\n{'file':<40} {'status':<11} {'faces':>5} {'max DSSIM':>9} {'looks like':>10} {'s':>6}", file=file)
    for r in rows:
        dssim = max((f["dssim"] for f in r["faces"]), default=float("nan"))
        seconds = "-" if r["seconds"] is None else f"{r['seconds']:.1f}"
        name = printable(Path(r["source"]).name)[:40]
        print(f"{name:<40} {r['status']:<11} {len(r['faces']):>5} {dssim:>9.4f} {looks_like(r['faces']):>10} "
              f"{seconds:>6}", file=file)
        if r["status"] in FAILED or r["status"] == "skipped":
            print(f"    {printable(r['reason'])}", file=file)
    counts = {s: sum(r["status"] == s for r in rows) for s in
              ("cloaked", "no_face", "exists", "skipped", "over_budget", "error")}
    print(f"{counts['cloaked']} cloaked, {counts['no_face']} without a face, {counts['exists']} already there, "
          f"{counts['skipped']} skipped, {counts['over_budget']} over the budget (not written), "
          f"{counts['error']} failed", file=file)
    if any(f.get("visibility") for r in rows for f in r["faces"]):
        print("looks like: the cloak is about as visible as re-saving the photo as JPEG at that quality "
              "(butteraugli and SSIMULACRA2 over the face; the report has the figures)", file=file)
    if counts["exists"]:
        print("outputs that already existed were left alone; --overwrite replaces them", file=file)
