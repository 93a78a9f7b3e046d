"""Transfer probe: how far do cloaks move a native tracker's features? (issue #6, a quick proxy)

    python bench/transfer_probe.py [--users 10 --photos 3] [--case dlib dlib_eot ...] [--out DIR]
                                   [--trackers dlib,sface,facenet]

The protection protocol (bench/protection.py) takes tens of minutes per scenario. This probe
cloaks a few photos per user (same cloaking code and cache as the protocol) and asks each
native tracker (dlib; OpenCV YuNet + SFace; with --trackers, also MTCNN + FaceNet run by TensorFlow) two
questions per photo:

    cosine   between the clean photo's and the cloaked photo's normalised features
    matched  whether the tracker's own same-person rule still pairs the cloaked photo with its
             clean original (dlib: raw distance < 0.6; SFace: our LFW threshold)

A cloak that protects against a tracker must move its features far from the clean ones (low
cosine, few matches). One JSON per case goes to --out; the table is rebuilt from all of them.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LFW = ROOT.parent / "shared" / "data" / "lfw"
MID = {"extractors": ["dlib"], "mode": "mid", "target": "max"}
ROBUST = {**MID, "extractors": ["dlib-robust"]}
TRACKER_NAMES = {"dlib": "dlib", "sface": "SFace", "facenet": "FaceNet"}
CASES = {  # name -> cloak spec (as in fawkes_fast.evaluate.protocol); rows in this order
    "dlib": MID,
    "dlib_flip": {**MID, "flip": True},
    "dlib_eot": {**MID, "diversity": 1.0},
    "dlib_untargeted": {**MID, "target": "none"},
    "dlib_blur": {**MID, "blur_copy": 1.5},  # LowKey's blurred copy
    "dlib_untargeted_blur": {**MID, "target": "none", "blur_copy": 1.5},
    "dlib_ghost": {**MID, "ghost": 0.1},  # DFANet's ghost copies: channel dropout in dlib each step
    "dlib_momentum": {**MID, "momentum": 0.99},  # heavier Adam momentum (MI-FGSM's argument)
    "dlib_robust": ROBUST,
    "dlib_robust_eot": {**ROBUST, "diversity": 1.0},
    "dlib_ensemble": {**MID, "extractors": ["dlib", "dlib-robust"]},
    "dlib_high": {**MID, "mode": "high"},
    "dlib_robust_high": {**ROBUST, "mode": "high"},
    "dlib_rho_0.03": {**MID, "rho": 0.03, "steps": 100},
    "sface": {**MID, "extractors": ["sface"]},  # the tracker's own architecture, for reference
    "sface_eot": {**MID, "extractors": ["sface"], "diversity": 1.0},
}


def photos(lfw: Path, users: int, per_user: int, seed: int) -> list[Path]:
    """The first `per_user` photos of `users` seeded LFW identities with >= 10 photos."""
    from fawkes_fast.evaluate.protocol import _paths, _people

    people = dict(_people(lfw, 10))
    pick = sorted(np.random.default_rng(seed).choice(sorted(people), size=users, replace=False).tolist())
    return [p for n in pick for p in _paths(lfw, n, people[n], per_user)]


def probe(name: str, paths: list[Path], seed: int, trackers=("dlib", "sface"), lfw: Path = LFW) -> dict:
    from fawkes_fast.evaluate.protocol import cloak_photos
    from fawkes_fast.evaluate.trackers import cached_features, get_tracker

    spec = dict(CASES[name])
    steps = spec.pop("steps", None)
    t0 = time.perf_counter()
    cloaked, info = cloak_photos(paths, spec, seed, steps=steps)
    out = {"case": name, "spec": CASES[name], "photos": len(paths), "failed": info["failed"],
           "cloak_seconds": info["seconds"], "dssim_mean": float(np.mean([d for d in info["dssim"] if d is not None]))}
    for tn in trackers:
        tr = get_tracker(tn, lfw)
        clean = cached_features(tr, paths)
        cos, match = [], []
        for c, img in zip(clean, cloaked):
            f = tr.embed_raw(img)
            if f is None or not np.all(np.isfinite(c)):
                continue
            cos.append(float(c @ f / (np.linalg.norm(c) * np.linalg.norm(f))))
            match.append(bool(tr.distance(c[None], f[None])[0, 0] < tr.threshold))
        out[tn] = {"n": len(cos), "cosine": float(np.mean(cos)), "cosine_std": float(np.std(cos)),
                   "matched": float(np.mean(match))}
    out["seconds"] = time.perf_counter() - t0
    return out


def table(folder: Path) -> str:
    order = {c: i for i, c in enumerate(CASES)}
    rows = sorted((json.loads(f.read_text()) for f in folder.glob("*.json") if not f.name.endswith(".record.json")),
                  key=lambda r: (order.get(r["case"], len(order)), r["case"]))
    trackers = [t for t in TRACKER_NAMES if any(t in r for r in rows)]
    lines = ["| case | cloak with | DSSIM | " + " | ".join(f"{TRACKER_NAMES[t]} cosine | {TRACKER_NAMES[t]} matched"
                                                         for t in trackers) + " |",
             "|---|---|---|" + "---|---|" * len(trackers)]
    for r in rows:
        s = r["spec"]
        opts = ", ".join(f"{k} {v}" for k, v in s.items() if k not in ("extractors",)
                         and not (k == "target" and v == "max"))
        cells = [f"{r[t]['cosine']:.3f} ± {r[t]['cosine_std']:.3f} | {100 * r[t]['matched']:.0f}%" if t in r else "— | —"
                 for t in trackers]
        lines.append(f"| `{r['case']}` | {' + '.join(s['extractors'])} ({opts}) | {r['dssim_mean']:.4f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run(cases: list[str], folder: Path, users: int = 10, per_user: int = 3, seed: int = 0, lfw: Path = LFW,
        trackers=("dlib", "sface")) -> None:
    """Probe `cases`, one JSON each in `folder`, and rewrite its README table from every JSON there."""
    if not (Path(lfw) / "people.tsv").is_file():
        sys.exit(f"no LFW at {lfw} (pass --lfw)")
    folder.mkdir(parents=True, exist_ok=True)
    paths = photos(Path(lfw), users, per_user, seed)
    for name in cases:
        r = probe(name, paths, seed, trackers, Path(lfw))
        r.update(date=str(date.today()), machine=platform.machine(), users=users, per_user=per_user)
        (folder / f"{name}.json").write_text(json.dumps(r, indent=1))
        print(f"{name}: " + ", ".join(f"{TRACKER_NAMES[t]} cos {r[t]['cosine']:.3f} matched {r[t]['matched']:.0%}"
                                      for t in trackers) + f" ({r['seconds']:.0f} s)", flush=True)
    (folder / "README.md").write_text(
        f"# Transfer probe ({users} users x {per_user} photos, seed {seed})\n\n"
        "Written by `bench/transfer_probe.py` (or `transfer_variants.py`); see its docstring. "
        "Lower is better for the user.\n\n" + table(folder))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lfw", default=str(LFW))
    ap.add_argument("--users", type=int, default=10)
    ap.add_argument("--photos", type=int, default=3, help="photos per user (the first ones)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--case", nargs="*", default=list(CASES), choices=list(CASES))
    ap.add_argument("--trackers", default="dlib,sface", help="native trackers, of: " + ", ".join(TRACKER_NAMES))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "transfer_probe"))
    args = ap.parse_args()
    run(args.case, Path(args.out), args.users, args.photos, args.seed, Path(args.lfw), tuple(args.trackers.split(",")))


if __name__ == "__main__":
    main()
