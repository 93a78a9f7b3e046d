"""Digest of cloaks on fixed LFW photos and seeds: proves a refactor left every pixel as it was.

    python bench/cloak_digest.py --out before.json      # on the old code
    python bench/cloak_digest.py --compare before.json  # on the new code: exit 1 on any difference
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw"


def photos(count: int) -> list[Path]:
    people = [line.split("\t") for line in (SHARED / "people.tsv").read_text().splitlines()[1:]]
    names = sorted(p[0] for p in people if len(p) == 2 and p[1].isdigit() and int(p[1]) >= 4)
    return [SHARED / n / f"{n}_0001.jpg" for n in names[:count]]


def digest(count: int, modes) -> dict:
    import fawkes_fast

    out = {}
    files = photos(count)
    for mode in modes:
        for i, f in enumerate(files):
            r = fawkes_fast.cloak(str(f), mode=mode, seed=i)[0]
            key = f"{mode}/{f.name}"
            out[key] = hashlib.sha256(r.image.tobytes()).hexdigest() if r.image is not None else r.status
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=int, default=10)
    ap.add_argument("--modes", nargs="+", default=["low", "mid", "high"])
    ap.add_argument("--out")
    ap.add_argument("--compare")
    a = ap.parse_args()
    got = digest(a.photos, a.modes)
    if a.out:
        Path(a.out).write_text(json.dumps(got, indent=1))
    if a.compare:
        want = json.loads(Path(a.compare).read_text())
        diff = [k for k in want if got.get(k) != want[k]]
        print(f"{len(want) - len(diff)}/{len(want)} identical" + (f"; differ: {diff}" if diff else ""))
        return 1 if diff else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
