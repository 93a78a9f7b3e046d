"""How visible each mode's cloak is, by the two judges, next to the photos' JPEG re-saves (issue #22).

    python bench/visibility.py [--modes low,mid,high] [--lfw-photos 10] [--gan-faces 5] [--out DIR]

Photo sets: `--lfw-photos` seeded LFW photos (250 px, faces of about 110 px), the same photos upscaled
2x (Lanczos), and `--gan-faces` seeded StyleGAN2 faces (512 px, faces of about 300 px). Each photo is
cloaked through the public API and saved as PNG; butteraugli and SSIMULACRA2 judge each face (dlib's
box grown by 30% per side) against the original, and the original's JPEG re-saves alike. Native dlib's
clean-to-cloaked cosine says how far the cloak moved the tracker (lower is stronger). One JSON per
(set, mode) and a Markdown table go to --out.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fawkes_fast.evaluate import judges  # noqa: E402
from fawkes_fast.evaluate.budget import decode, dev_photos, dlib_boxes  # noqa: E402
from fawkes_fast.evaluate.report import replace_block  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"


def photo_sets(lfw: Path, gan: Path, lfw_photos: int, gan_faces: int, seed: int) -> dict[str, dict]:
    """{set name: {photo name: uint8 RGB}}."""
    sets = {}
    if lfw_photos:
        small = {p.stem: decode(p) for p in dev_photos(lfw, lfw_photos, seed)}
        sets["lfw"] = small
        sets["lfw_2x"] = {n: np.asarray(Image.fromarray(x).resize((2 * x.shape[1], 2 * x.shape[0]), Image.LANCZOS))
                          for n, x in small.items()}
    if gan_faces:
        files = sorted(Path(gan).glob("*.jpg"))
        pick = sorted(np.random.default_rng(seed).choice(len(files), size=min(gan_faces, len(files)), replace=False))
        sets["gan_512"] = {files[i].stem: decode(files[i]) for i in pick}
    return sets


def measure(photos: dict, spec: dict, seed: int, tracker) -> dict:
    import fawkes_fast

    spec = dict(spec)
    mode = spec.pop("mode", "mid")
    names = list(photos)
    t0 = time.perf_counter()
    results = fawkes_fast.cloak([photos[n] for n in names], mode=mode, seed=seed, format="png", **spec)
    secs = (time.perf_counter() - t0) / max(len(names), 1)
    faces, cos, statuses = [], [], []
    for n, r in zip(names, results):
        statuses.append(r.status)
        if r.status != "cloaked":
            continue
        out = decode(r.encoded)
        boxes = dlib_boxes(photos[n])
        if not boxes:
            continue
        faces.append({"photo": n, "dssim": max(f.dssim for f in r.faces),
                      **judges.judge_face(photos[n], out, boxes[0]).as_dict()})
        a, b = tracker.embed_raw(photos[n]), tracker.embed_raw(out)
        if a is not None and b is not None:
            cos.append(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)))
    return {"faces": faces, "summary": judges.summary(faces), "native_dlib_cosine": float(np.mean(cos)) if cos else None,
            "statuses": statuses, "seconds_per_photo": secs}


def table(results: list[dict]) -> str:
    lines = ["| photos | mode | butteraugli mean (max) | SSIMULACRA2 mean (min) | re-save q80 / q70 (butteraugli / SSIMULACRA2) "
             "| faces within q80 / q70 | native dlib cosine | DSSIM max |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        s = r["summary"]
        if not s.get("faces"):
            lines.append(f"| {r['set']} | `{r['mode']}` | no face judged | | | | | |")
            continue
        rs = s["resaves"]
        lines.append(
            f"| {r['set']} | `{r['mode']}` | {s['butteraugli_mean']:.2f} ({s['butteraugli_max']:.2f}) | "
            f"{s['ssimulacra2_mean']:.1f} ({s['ssimulacra2_min']:.1f}) | "
            f"{rs['80']['butteraugli_mean']:.2f} / {rs['80']['ssimulacra2_mean']:.1f}, "
            f"{rs['70']['butteraugli_mean']:.2f} / {rs['70']['ssimulacra2_mean']:.1f} | "
            f"{100 * rs['80']['share_within']:.0f}% / {100 * rs['70']['share_within']:.0f}% | "
            f"{r['native_dlib_cosine']:.3f} | {max(f['dssim'] for f in r['faces']):.4f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--modes", default="low,mid,high", help="comma list of modes, or JSON specs with --spec")
    ap.add_argument("--spec", action="append", default=[], metavar="NAME=JSON",
                    help='an extra cloak to measure, e.g. dssim_mid=\'{"mode": "mid", "shape": "dssim"}\'')
    ap.add_argument("--lfw", default=str(SHARED / "lfw"))
    ap.add_argument("--gan", default=str(SHARED / "gan-faces"))
    ap.add_argument("--lfw-photos", type=int, default=10)
    ap.add_argument("--gan-faces", type=int, default=5)
    ap.add_argument("--sets", default="lfw,lfw_2x,gan_512")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "visibility"))
    ap.add_argument("--collect", action="store_true", help="only rewrite the table from every JSON in --out")
    ap.add_argument("--readme", metavar="FILE", help="with --collect: the table between <!-- visibility:begin/end -->")
    args = ap.parse_args()
    out = Path(args.out)
    if args.collect:
        order = {s: i for i, s in enumerate(args.sets.split(","))}
        rows = [json.loads(f.read_text()) for f in out.glob("*.json")]
        md = table(sorted(rows, key=lambda r: (order.get(r["set"], 99), r["mode"])))
        (out / "visibility.md").write_text(md)
        print(md)
        if args.readme and not replace_block(args.readme, "visibility", md):
            print(f"{args.readme}: no <!-- visibility:begin --> / <!-- visibility:end --> markers")
        return 0
    judges.require()
    from fawkes_fast.evaluate.trackers import get_tracker

    specs = {m: {"mode": m} for m in args.modes.split(",") if m}
    for kv in args.spec:
        name, _, js = kv.partition("=")
        specs[name] = json.loads(js)
    out.mkdir(parents=True, exist_ok=True)
    tracker = get_tracker("dlib", Path(args.lfw))
    sets = photo_sets(Path(args.lfw), Path(args.gan), args.lfw_photos, args.gan_faces, args.seed)
    results = []
    for set_name in args.sets.split(","):
        for name, spec in specs.items():
            r = measure(sets[set_name], spec, args.seed, tracker)
            r.update(set=set_name, mode=name, spec=spec, machine=platform.machine(),
                     date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
            (out / f"{set_name}_{name}.json").write_text(json.dumps(r, indent=1))
            results.append(r)
            print(table([r]).splitlines()[-1], flush=True)
    md = table(results)
    (out / "visibility.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
