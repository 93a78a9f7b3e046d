"""Colour limits compared (issue #16 item 2): what each way of keeping a cloak's colour invisible costs.

For the first photo of N seeded LFW users (the transfer probe's users), cloak at `mid` with each technique
and measure, on the saved PNG, the visibility (skimage box DSSIM and CIEDE2000 over dlib's own boxes:
fawkes_fast.evaluate.budget) and the strength (native dlib's cosine between the clean and the cloaked photo,
and whether its 0.6 rule still pairs them; lower is better for the user):

    hinge       the shipped limit: a hinge on CIE76 ΔE (mean per budget box > 0.9, any pixel > 4)
    tied        no hinge; the gradient is tied across R, G and B (the grey-photo path applied to colour
                photos), so the change is nearly the same in each channel: mostly lightness
    tied+hinge  both
    none        no colour limit (colour_penalty=0)

    python bench/colour_techniques.py [--users 10] [--out bench/results/colour_techniques.md]
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

TECHNIQUES = {"hinge": ({}, False), "tied": ({"colour_penalty": 0.0}, True),
              "tied+hinge": ({}, True), "none": ({"colour_penalty": 0.0}, False)}


@contextlib.contextmanager
def tied_channels(on: bool):
    """Make the optimiser treat every face as a grey photo's (one gradient for R, G and B)."""
    import fawkes_fast.cloaker as cloaker_mod

    real = cloaker_mod.optimise
    if on:
        cloaker_mod.optimise = lambda *a, gray=None, **k: real(*a, gray=[True] * len(gray), **k)
    try:
        yield
    finally:
        cloaker_mod.optimise = real


def measure(name: str, paths: list[Path], tracker, seed: int = 0) -> dict:
    from fawkes_fast import Cloaker
    from fawkes_fast.evaluate import budget
    from fawkes_fast.evaluate.trackers import cached_features
    from fawkes_fast.io.images import decode_image

    options, tied = TECHNIQUES[name]
    with tied_channels(tied):
        res = Cloaker(mode="mid", **options).cloak([str(p) for p in paths], seed=seed, format="png")
    ok = [(p, r) for p, r in zip(paths, res) if r.status == "cloaked"]
    checks = [budget.check(str(p), r.encoded, p.stem) for p, r in ok]
    clean = cached_features(tracker, [p for p, _ in ok])
    cos, match = [], []
    for c, (_, r) in zip(clean, ok):
        f = tracker.embed_raw(decode_image(r.encoded))
        if f is None or not np.all(np.isfinite(c)):
            continue
        cos.append(float(c @ f / (np.linalg.norm(c) * np.linalg.norm(f))))
        match.append(bool(tracker.distance(c[None], f[None])[0, 0] < tracker.threshold))
    return {"technique": name, "cloaked": len(ok), "of": len(paths), **budget.summary(checks),
            "cosine": float(np.mean(cos)), "matched": float(np.mean(match))}


def main() -> int:
    from transfer_probe import LFW, photos

    from fawkes_fast.evaluate.trackers import get_tracker

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=10)
    ap.add_argument("--techniques", default=",".join(TECHNIQUES))
    ap.add_argument("--out", default=str(HERE / "results" / "colour_techniques.md"))
    args = ap.parse_args()
    paths = photos(LFW, args.users, 1, 0)
    tracker = get_tracker("dlib", LFW)
    lines = ["| technique | cloaked | box DSSIM max | mean ΔE2000 (mean / worst face) | p99 ΔE2000, worst face | "
             "native dlib cosine | still matched |", "|---|---|---|---|---|---|---|"]
    for name in args.techniques.split(","):
        r = measure(name, paths, tracker)
        lines.append(f"| `{name}` | {r['cloaked']}/{r['of']} | {r['box_dssim_max']:.4f} | {r['mean_de_mean']:.2f} / "
                     f"{r['mean_de_max']:.2f} | {r['p99_de_max']:.1f} | {r['cosine']:.3f} | {100 * r['matched']:.0f}% |")
        print(lines[-1], flush=True)
    Path(args.out).write_text("# Colour limits compared (`bench/colour_techniques.py`)\n\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
