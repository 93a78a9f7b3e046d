"""Full LFW verification (pairs-dev.txt, 10-fold) through the full pipeline, per extractor.

    python bench/lfw_verification.py [--extractor dlib sface] [--pairs N] [--flip] [--out bench/results/verification.md]
"""
from __future__ import annotations

import argparse
import time
from datetime import date
from pathlib import Path

from fawkes_fast.evaluate.verification import pair_distances, read_pairs, subset, ten_fold_accuracy
from fawkes_fast.pipeline import FacePipeline

ROOT = Path(__file__).resolve().parents[1]
LFW = ROOT.parent / "shared" / "data" / "lfw"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--extractor", nargs="+", default=["dlib", "sface"])
    ap.add_argument("--pairs", type=int, default=0, help="evenly spread subset (0 = all)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--flip", action="store_true", help="flip-averaged features (test-time augmentation)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "verification.md"))
    args = ap.parse_args()
    pairs = read_pairs(LFW / "pairs-dev.txt")
    if args.pairs:
        pairs = subset(pairs, args.pairs)
    t = time.time()
    dist, same, missing = pair_distances(FacePipeline(tuple(args.extractor), device=args.device, flip=args.flip), pairs, LFW)
    secs = time.time() - t
    lines = [f"### LFW verification, full pipeline — {date.today()}", "",
             f"{len(pairs)} pairs of pairs-dev.txt ({int(same.sum())} same, {int((~same).sum())} different), "
             f"10-fold; {missing} photos without a detected face count as wrong; {secs:.0f} s on {args.device}; "
             f"flip averaging {'on' if args.flip else 'off'}.", "",
             "| extractor | accuracy (mean ± std over folds) |", "|---|---|"]
    for k, name in enumerate(args.extractor):
        acc, std = ten_fold_accuracy(dist[k], same)
        lines.append(f"| {name} | {acc * 100:.2f}% ± {std * 100:.2f} |")
    print("\n".join(lines))
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
