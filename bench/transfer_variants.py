"""Transfer probe for robust variants that are not shipped (issue #6 experiments).

    python bench/transfer_variants.py NAME=WEIGHTS.pt [NAME=WEIGHTS.pt ...] [--diversity] [--out DIR]

WEIGHTS.pt is a `models train-robust` float16 state dict (OUT.weights.pt) of dlib's architecture.
Each variant is registered in this process as a built-in named NAME, gets target-bank features
from the bank's own photos and pipeline (models/build_target_bank.py), and is probed exactly like
the shipped options (bench/transfer_probe.py). The bank pass takes about 3 minutes on one core.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "models")]

import transfer_probe as probe  # noqa: E402


def register(variants: dict[str, Path]) -> None:
    """Make each NAME load as dlib's ResNet with WEIGHTS, and give the target bank its features."""
    from build_target_bank import best_threshold, embed_lfw
    from fawkes_fast.extractors import register_builtin
    from fawkes_fast.extractors.builtins import robust_dlib_loader
    from fawkes_fast.targets.bank import load_bank

    for name, weights in variants.items():
        register_builtin(name, robust_dlib_loader(weights.resolve()))
    bank = load_bank()
    names, owner, feats = embed_lfw(tuple(variants), Path(probe.LFW))
    if [str(n) for n in bank.names] != names or len(owner) != len(bank.owner):
        sys.exit("the shipped target bank was built from other photos; rebuild it first (models/README.md)")
    for name, f in feats.items():
        bank.features[name] = f
        bank.thresholds[name] = best_threshold(f, owner)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("variants", nargs="+", metavar="NAME=WEIGHTS.pt")
    ap.add_argument("--diversity", action="store_true", help="also probe each variant with diversity=1")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "transfer_probe" / "variants"))
    args = ap.parse_args()
    variants = {v.split("=", 1)[0]: Path(v.split("=", 1)[1]) for v in args.variants}
    register(variants)
    cases = []
    for name in variants:
        probe.CASES[name] = {**probe.MID, "extractors": [name]}
        cases.append(name)
        if args.diversity:
            probe.CASES[name + "_eot"] = {**probe.MID, "extractors": [name], "diversity": 1.0}
            cases.append(name + "_eot")
    probe.run(cases, Path(args.out))


if __name__ == "__main__":
    main()
