"""README figure (issues #16, #22): before/after face crops for each mode, each with its measured visibility.

    python bench/figure_modes.py [--out docs/modes.png]

Rows: the bundled astronaut (skimage.data.astronaut, public domain) at 512 px and halved, and `--faces`
seeded GAN faces (0 by default: images from ../shared must not enter the repository). Columns: the original, then
the cloak of each mode saved as PNG. Under each cloaked crop: the two judges over the face (butteraugli,
SSIMULACRA2; fawkes_fast.evaluate.judges) in plain words against the photo's JPEG re-saves, and the DSSIM
over dlib's own face box (fawkes_fast.evaluate.budget).
The crops are shown at their own resolution (nearest-neighbour), so nothing smooths the cloak away.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fawkes_fast.evaluate.budget import cloak_and_check, decode  # noqa: E402
from fawkes_fast.evaluate.judges import judge_face  # noqa: E402
from fawkes_fast.optimize.modes import MODES  # noqa: E402

GAN = ROOT.parent / "shared" / "data" / "gan-faces"


def photos(gan: Path, faces: int, seed: int) -> dict:
    """The astronaut at her own 512 px and halved (a face of about 100 px, as LFW's), then `faces` seeded GAN
    faces: those come from ../shared, whose images must not enter the repository, so the committed figure
    (docs/modes.png) is made with none."""
    import skimage.data
    from PIL import Image

    astronaut = skimage.data.astronaut()
    out = {"astronaut": astronaut,
           "astronaut, halved": np.asarray(Image.fromarray(astronaut).resize((256, 256), Image.LANCZOS))}
    files = sorted(Path(gan).glob("*.jpg")) if faces else []
    if faces and not files:
        raise SystemExit(f"no GAN faces in {gan} (pass --gan, or --faces 0)")
    for i in sorted(np.random.default_rng(seed).choice(len(files), size=min(faces, len(files)), replace=False)):
        out[files[i].stem] = decode(files[i])
    return out


def crop(img: np.ndarray, box, grow: float = 1.4) -> np.ndarray:
    """A square around the face box, `grow` times its size, clipped to the photo."""
    l, t, r, b = box
    cx, cy, half = (l + r) / 2, (t + b) / 2, grow * max(r - l, b - t) / 2
    y0, y1 = int(max(cy - half, 0)), int(min(cy + half, img.shape[0]))
    x0, x1 = int(max(cx - half, 0)), int(min(cx + half, img.shape[1]))
    return img[y0:y1, x0:x1]


def figure(inputs: dict, modes: list[str], out: Path, seed: int = 0) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tmp = tempfile.TemporaryDirectory()
    rows = {m: {r["name"]: r for r in cloak_and_check(inputs, m, "png", seed=seed, out_dir=Path(tmp.name) / m)}
            for m in modes}
    fig, axes = plt.subplots(len(inputs), len(modes) + 1, figsize=(2.6 * (len(modes) + 1), 3.2 * len(inputs)),
                             squeeze=False, layout="constrained")
    for i, (name, rgb) in enumerate(inputs.items()):
        face = max((f for m in modes for f in rows[m][name].get("faces", [])), key=lambda f: f["box_dssim"],
                   default=None)
        box = face["box"] if face else (0, 0, rgb.shape[1], rgb.shape[0])
        axes[i, 0].imshow(crop(rgb, box), interpolation="nearest")
        axes[i, 0].set_title(f"{name}: original", fontsize=9)
        for j, m in enumerate(modes, 1):
            r = rows[m][name]
            ax = axes[i, j]
            if r["status"] != "cloaked":
                ax.set_title(f"{m}: {r['status']}", fontsize=9)
                continue
            cloaked = decode(r["file"])
            ax.imshow(crop(cloaked, box), interpolation="nearest")
            f = next((f for f in r["faces"] if tuple(f["box"]) == tuple(box)), None)
            ax.set_title(f"{m} ({MODES[m].shape})", fontsize=9)
            if f:
                v = judge_face(rgb, cloaked, box)
                q = v.like()
                ax.set_xlabel(f"butteraugli {v.butteraugli:.2f}, SSIMULACRA2 {v.ssimulacra2:.1f}\n"
                              + (f"like a JPEG q{q} re-save" if q else f"beyond a JPEG q{min(v.resaves)} re-save")
                              + f"\nbox DSSIM {f['box_dssim']:.4f}", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([]); ax.set_yticks([])
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    tmp.cleanup()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gan", default=str(GAN))
    ap.add_argument("--faces", type=int, default=0, help="seeded GAN faces besides the astronaut (never commit them)")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "docs" / "modes.png"))
    args = ap.parse_args()
    print(figure(photos(Path(args.gan), args.faces, args.seed), args.modes.split(","), Path(args.out), args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
