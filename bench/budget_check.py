"""Independent check of the visibility budget on saved outputs (issue #16).

    python bench/budget_check.py --photos 20 --modes low,mid,high --formats png,jpeg --tag new
    python bench/budget_check.py --photos 5 --modes mid --tag old        # before the core's change

Cloaks seeded LFW dev photos (fawkes_fast.evaluate.budget.dev_photos) and the bundled astronaut through
the public API, saves each as PNG and as JPEG (--quality, default 90), and measures every face that
dlib's own detector finds on the original with skimage: DSSIM over the face box (JPEG: against the
original's own JPEG at the same quantisation and subsampling), over the cloak's reported region, mean
and 99th-percentile CIEDE2000 ΔE over the box, and the largest change of any pixel. Writes
--out/TAG_MODE.json and --out/TAG.md, one table row per mode and format. The seconds per photo are those of
this run, on whatever machine and load it had.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fawkes_fast.evaluate.budget import cloak_and_check, dev_photos, summary_rows  # noqa: E402
from fawkes_fast.optimize.modes import settings_for  # noqa: E402

LFW = ROOT.parent / "shared" / "data" / "lfw"
HEAD = ("| mode | ρ | format | written / inputs | faces | box DSSIM max / mean | region DSSIM max | "
        "mean ΔE (mean / worst face) | p99 ΔE (worst face) | max change | s/photo |")


def inputs(lfw: Path, photos: int, seed: int, astronaut: bool = True) -> dict:
    """{name: path or RGB}: `photos` LFW dev photos and the bundled astronaut."""
    out = {p.stem: p for p in dev_photos(lfw, photos, seed)} if photos else {}
    if astronaut:
        import skimage.data

        out["astronaut"] = skimage.data.astronaut()
    return out


def row(mode: str, fmt: str, s: dict, seconds: float) -> str:
    rho = settings_for(mode).rho
    if not s.get("faces"):
        return f"| {mode} | {rho} | {fmt} | {s['written']} / {s['inputs']} | 0 | — | — | — | — | — | {seconds:.2f} |"
    region = "—" if s["region_dssim_max"] is None else f"{s['region_dssim_max']:.4f}"
    return (f"| {mode} | {rho} | {fmt} | {s['written']} / {s['inputs']} | {s['faces']} | "
            f"{s['box_dssim_max']:.4f} / {s['box_dssim_mean']:.4f} | {region} | "
            f"{s['mean_de_mean']:.2f} / {s['mean_de_max']:.2f} | {s['p99_de_max']:.1f} | {s['max_change']} | {seconds:.2f} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lfw", default=str(LFW))
    ap.add_argument("--photos", type=int, default=20, help="LFW dev photos (plus the astronaut)")
    ap.add_argument("--modes", default="low,mid,high")
    ap.add_argument("--formats", default="png,jpeg")
    ap.add_argument("--quality", type=int, default=90)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="new", help="file prefix: TAG_MODE.json, TAG.md")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "budget"))
    ap.add_argument("--save", metavar="DIR", help="keep the cloaked files here (default: a temporary folder)")
    args = ap.parse_args()
    if args.photos and not (Path(args.lfw) / "people.tsv").is_file():
        ap.error(f"no LFW at {args.lfw} (pass --lfw, or --photos 0 for the astronaut alone)")
    photos = inputs(Path(args.lfw), args.photos, args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [HEAD, "|---|---|---|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        files = Path(args.save or tmp)
        for mode in args.modes.split(","):
            record = {"mode": mode, "rho": settings_for(mode).rho, "quality": args.quality, "seed": args.seed,
                      "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      "machine": platform.machine(), "formats": {}}
            for fmt in args.formats.split(","):
                rows = cloak_and_check(photos, mode, fmt, args.quality, args.seed, files / f"{mode}_{fmt}")
                s = summary_rows(rows)
                record["formats"][fmt] = {"summary": s, "photos": rows}
                lines.append(row(mode, fmt, s, rows[0]["seconds"] if rows else 0.0))
                print(lines[-1], flush=True)
            (out / f"{args.tag}_{mode}.json").write_text(json.dumps(record, indent=1))
    (out / f"{args.tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
