"""`fawkes-fast demo`: cloak scikit-image's public-domain astronaut portrait, write a side-by-side."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..io.images import load_image
from ..io.save import OUTPUT_SUFFIXES, save_image_atomic
from .cloak import add_cloak_options, cmd_cloak


def add_parser(sub) -> None:
    d = sub.add_parser("demo", help="cloak scikit-image's astronaut portrait")
    d.add_argument("-o", "--output", metavar="DIR", default="fawkes-demo")
    add_cloak_options(d)
    d.set_defaults(func=cmd_demo)


def _print_face_figures(report: Path) -> None:
    """What a person would see: the face's DSSIM over its box, its colour change and, when it was
    judged, how visible it is next to re-saving the photo as JPEG, in plain words."""
    for row in json.loads(report.read_text()) if report.exists() else []:
        for f in row.get("faces") or []:
            if f.get("delta_e") is None:
                continue
            print(f"face at {[round(v) for v in f['box']]}: DSSIM over the face box {f['dssim']:.4f}, "
                  f"mean colour difference ΔE2000 {f['delta_e']:.2f} (99th percentile {f['delta_e_p99']:.2f})")
            v = f.get("visibility")
            if v:
                q70 = v["resaves"]["70"]
                print(f"  how visible: {v['in_words']} (butteraugli {v['butteraugli']:.2f}, SSIMULACRA2 "
                      f"{v['ssimulacra2']:.1f}; the photo re-saved as JPEG q70: {q70[0]:.2f}, {q70[1]:.1f})")


def cmd_demo(args) -> int:
    from skimage import data  # scikit-image loads slowly: only for the demo

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    original = out / "astronaut.png"
    save_image_atomic(original, data.astronaut(), overwrite=True)
    args.paths, args.output, args.overwrite = [str(original)], None, True
    if not args.json_report:
        args.json_report = str(out / "report.json")
    code = cmd_cloak(args)
    cloaked = out / f"astronaut_cloaked{OUTPUT_SUFFIXES[args.format]}"
    _print_face_figures(Path(args.json_report))
    if cloaked.exists():
        side = np.concatenate([data.astronaut(), load_image(cloaked)], axis=1)
        save_image_atomic(out / "astronaut_side_by_side.png", side, overwrite=True)
        print(f"wrote {cloaked} and {out / 'astronaut_side_by_side.png'}")
    return code
