"""Rebuild models/target_bank.npz from LFW (numbers only; no image is stored).

    python models/build_target_bank.py [--lfw ../shared/data/lfw] [--min-images 4] [--per-identity 6]
    python models/build_target_bank.py --add facenet     # one more extractor; the others stay bit-identical

For every LFW identity with at least --min-images photos, the first --per-identity photos
go through our own pipeline (dlib HOG detection, 5-point landmarks, differentiable
alignment, torch extractors); the largest face's L2-normalised features are kept for every
built-in extractor. Each extractor's same-person threshold is the distance that best
separates same-identity from different-identity pairs inside the bank (balanced accuracy).
With --add, only the named extractors are embedded (the same photos: detection does not depend on
the extractor, and the script checks that the identities and photo owners match) and written beside
the bank's existing arrays, which are copied byte for byte.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from fawkes_fast.extractors import builtin_names
from fawkes_fast.io.files import write_atomic
from fawkes_fast.io.images import load_image
from fawkes_fast.pipeline import FacePipeline
from fawkes_fast.targets.bank import TargetBank

HERE = Path(__file__).resolve().parent


def best_threshold(feats: np.ndarray, owner: np.ndarray) -> float:
    """Distance threshold maximising balanced accuracy of same/different-identity pairs."""
    d = np.sqrt(np.maximum(2 - 2 * feats @ feats.T, 0))
    iu = np.triu_indices(len(feats), 1)
    dist, same = d[iu], (owner[:, None] == owner[None])[iu]
    grid = np.linspace(0.01, 1.6, 319)  # dlib-robust's space is ~3x tighter than dlib's
    tpr = np.array([(dist[same] < t).mean() for t in grid])
    tnr = np.array([(dist[~same] >= t).mean() for t in grid])
    return float(grid[np.argmax(tpr + tnr)])


def embed_lfw(extractors, lfw: Path, min_images: int = 4, per_identity: int = 6):
    """(identity names, owner index per photo, {extractor: (N, D) features}) of the bank's photos."""
    people = [line.split("\t") for line in (lfw / "people.tsv").read_text().splitlines()[1:]]
    people = sorted((n, int(c)) for n, c in people if int(c) >= min_images)
    pipe = FacePipeline(tuple(extractors))
    names, owner, feats = [], [], {e: [] for e in extractors}
    t0 = time.time()
    for name, count in people:
        got = 0
        for i in range(1, min(count, per_identity) + 1):
            sets = pipe.embed(load_image(lfw / name / f"{name}_{i:04d}.jpg"))
            if not len(sets[0]):
                continue
            for e, fs in zip(extractors, sets):
                feats[e].append(fs.features[0])
            owner.append(len(names))
            got += 1
        if got:
            names.append(name)
        if len(names) % 50 == 0 and got:
            print(f"{len(names)} identities, {len(owner)} photos, {time.time() - t0:.0f} s", flush=True)
    return names, np.array(owner), {e: np.stack(v) for e, v in feats.items()}


def add_extractors(path: Path, names, owner, feats, thresholds) -> None:
    """Write the bank at `path` again with features for more extractors; its arrays are kept as stored."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    if [str(n) for n in arrays["names"]] != list(names) or not np.array_equal(arrays["owner"], owner):
        raise SystemExit(f"{path} was built from other photos; rebuild it whole (without --add)")
    meta = json.loads(str(arrays["meta"]))
    meta["thresholds"].update(thresholds)
    meta["extractors"] = list(dict.fromkeys(meta.get("extractors", []) + list(feats)))
    arrays["meta"] = np.array(json.dumps(meta))
    arrays.update({f"feat_{k}": v.astype(np.float16) for k, v in feats.items()})

    def write(tmp):
        with open(tmp, "wb") as f:  # a file object: savez would append .npz to the temp name
            np.savez_compressed(f, **arrays)

    write_atomic(path, write)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lfw", default=str(HERE.parent.parent / "shared" / "data" / "lfw"))
    ap.add_argument("--min-images", type=int, default=4)
    ap.add_argument("--per-identity", type=int, default=6)
    ap.add_argument("--add", nargs="+", metavar="EXTRACTOR", help="add these extractors to the existing bank")
    ap.add_argument("--out", default=str(HERE / "target_bank.npz"))
    args = ap.parse_args()

    t0 = time.time()
    extractors = tuple(args.add or builtin_names())
    names, owner, feats = embed_lfw(extractors, Path(args.lfw), args.min_images, args.per_identity)
    thresholds = {e: best_threshold(f, owner) for e, f in feats.items()}
    if args.add:
        add_extractors(Path(args.out), names, owner, feats, thresholds)
    else:
        bank = TargetBank(names=np.array(names), owner=owner, features=feats, thresholds=thresholds)
        bank.save(args.out, meta={"source": "LFW deep-funneled (shared/data/lfw)", "min_images": args.min_images,
                                  "per_identity": args.per_identity, "extractors": list(extractors)})
    print(f"wrote {args.out}: {len(names)} identities, {len(owner)} photos, thresholds {thresholds}, "
          f"{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
