"""An independent check of how visible a saved cloak is (issue #16), measured as an outsider would:
skimage's SSIM (never our op), over boxes from dlib's own HOG detector (never our detector or the
cloak's reports), CIEDE2000 colour differences, and the largest change of any pixel.

SSIM follows `tf.image.ssim` (our op's convention) as closely as skimage allows:
  * `gaussian_weights=True, sigma=1.5`: skimage's default truncation (3.5 sigma) gives tf's 11x11 window;
  * `use_sample_covariance=False`: tf's biased (1/N) variances; K1 0.01, K2 0.03, `data_range=255`;
  * skimage filters the whole crop, then drops (11 - 1) / 2 pixels at each side before averaging: the
    window positions that fit inside the box, i.e. tf's VALID padding;
  * `channel_axis=-1` averages the three channels' means; tf averages over pixels then channels, which
    is the same number since every channel has as many pixels.
What remains different: skimage computes in float64 on the crop, tf in float32.
DSSIM = (1 - SSIM) / 2. Both images are the 8-bit pixels decoded from the files by Pillow.

A lossy output is compared with the original encoded the same way (the JPEG's own quantisation tables
and chroma subsampling), so the format's own noise is not counted as cloak.
"""
from __future__ import annotations

import io
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin
from skimage.color import deltaE_ciede2000, rgb2lab
from skimage.metrics import structural_similarity

import fawkes_fast

from .verification import read_pairs

MIN_BOX = 11  # SSIM's window: a smaller box has no VALID position


@dataclass
class FaceCheck:
    box: tuple  # dlib's detection box on the original: left, top, right, bottom (clipped, exclusive)
    box_dssim: float
    mean_de: float  # CIEDE2000 over the box's pixels
    p99_de: float
    max_change: int  # largest |output - reference| over the box, grey levels (any channel)
    region_dssim: float | None = None  # over the cloak's reported region holding this box, when given


@dataclass
class PhotoCheck:
    name: str
    format: str  # of the saved output: PNG, JPEG, WEBP ("pixels" when given decoded)
    faces: list = field(default_factory=list)  # FaceCheck per face dlib finds on the original
    max_change: int = 0  # over the whole photo
    channel_spread: int = 0  # largest max(R,G,B) - min(R,G,B) of the output where the original is grey
    original_is_grey: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def decode(data) -> np.ndarray:
    """uint8 RGB pixels of a file path, bytes, PIL image or array (EXIF orientation applied)."""
    if isinstance(data, np.ndarray):
        img = Image.fromarray(data)
    elif isinstance(data, Image.Image):
        img = data
    else:
        img = _open(data)
    return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))


def _open(data) -> Image.Image:
    return Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)


def reference(original: np.ndarray, saved, quality: int | None = None) -> np.ndarray:
    """The original as the saved file's format would show it uncloaked: itself for a lossless file, else
    the original encoded with the saved JPEG's own quantisation tables and subsampling (a lossy WebP needs
    `quality`, which the file does not record)."""
    if isinstance(saved, np.ndarray):  # pixels already decoded: nothing to re-encode
        return original
    img = _open(saved)
    if img.format == "JPEG":
        kw = {"qtables": img.quantization, "subsampling": JpegImagePlugin.get_sampling(img)}
    elif img.format == "WEBP" and not _lossless_webp(saved):
        if quality is None:
            raise ValueError("a lossy WebP output needs the quality it was saved at")
        kw = {"quality": int(quality)}
    else:
        return original
    buf = io.BytesIO()
    Image.fromarray(original).save(buf, format=img.format, **kw)
    return decode(buf.getvalue())


def _lossless_webp(saved) -> bool:
    if not isinstance(saved, bytes):
        with open(saved, "rb") as f:
            saved = f.read(64)
    return b"VP8L" in saved[:64]


_detector = None
_lock = threading.Lock()


def dlib_boxes(rgb: np.ndarray, upsample: int = 1) -> list[tuple[int, int, int, int]]:
    """Face boxes from dlib's own frontal face detector, clipped to the photo (right/bottom exclusive)."""
    global _detector
    import dlib

    with _lock:
        if _detector is None:
            _detector = dlib.get_frontal_face_detector()
        dets = _detector(np.ascontiguousarray(rgb), upsample)
    h, w = rgb.shape[:2]
    boxes = [(max(d.left(), 0), max(d.top(), 0), min(d.right() + 1, w), min(d.bottom() + 1, h)) for d in dets]
    return [b for b in boxes if b[2] - b[0] >= MIN_BOX and b[3] - b[1] >= MIN_BOX]


def dssim(a: np.ndarray, b: np.ndarray) -> float:
    """DSSIM between two uint8 RGB crops, in tf.image.ssim's convention (see the module's docstring)."""
    s = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                              data_range=255, channel_axis=-1, K1=0.01, K2=0.03)
    return (1.0 - float(s)) / 2.0


def delta_e(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel CIEDE2000 between two uint8 sRGB crops."""
    return deltaE_ciede2000(rgb2lab(a), rgb2lab(b))


def _crop(img: np.ndarray, box) -> np.ndarray:
    l, t, r, b = (int(v) for v in box)
    return img[max(t, 0):b, max(l, 0):r]


def face_check(ref: np.ndarray, out: np.ndarray, box, regions=()) -> FaceCheck:
    """Figures for one face box; `regions` (left, top, right, bottom): the cloak's reported regions, of
    which the one holding the box's centre is measured too."""
    a, o = _crop(ref, box), _crop(out, box)
    de = delta_e(a, o)
    change = int(np.abs(a.astype(np.int16) - o).max())
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    region = next((g for g in regions if g[0] <= cx < g[2] and g[1] <= cy < g[3]), None)
    return FaceCheck(tuple(int(v) for v in box), dssim(a, o), float(de.mean()), float(np.percentile(de, 99)), change,
                     None if region is None else dssim(_crop(ref, region), _crop(out, region)))


def check(original, saved, name: str = "", quality: int | None = None, boxes=None, regions=()) -> PhotoCheck:
    """Measure a saved output (path or bytes; or its decoded pixels) against its original (path, bytes,
    PIL image or array).
    `boxes` defaults to dlib's detections on the original; `regions` as in face_check."""
    orig = decode(original)
    out = decode(saved)
    if out.shape != orig.shape:
        raise ValueError(f"{name}: the output is {out.shape[1]}x{out.shape[0]}, the original {orig.shape[1]}x{orig.shape[0]}")
    ref = reference(orig, saved, quality)
    grey = bool((orig[..., 0] == orig[..., 1]).all() and (orig[..., 1] == orig[..., 2]).all())
    fmt = "pixels" if isinstance(saved, np.ndarray) else _open(saved).format
    res = PhotoCheck(name, fmt, original_is_grey=grey,
                     max_change=int(np.abs(ref.astype(np.int16) - out).max()),
                     channel_spread=int((out.max(2).astype(np.int16) - out.min(2)).max()))
    res.faces = [face_check(ref, out, b, regions) for b in (dlib_boxes(orig) if boxes is None else boxes)]
    return res


def summary(checks: list[PhotoCheck]) -> dict:
    """Figures over every face of `checks`: box DSSIM max/mean, mean and p99 ΔE (worst face), max change."""
    faces = [f for c in checks for f in c.faces]
    if not faces:
        return {"photos": len(checks), "faces": 0}
    col = lambda k: np.array([getattr(f, k) for f in faces], np.float64)  # noqa: E731
    return {"photos": len(checks), "faces": len(faces),
            "box_dssim_max": float(col("box_dssim").max()), "box_dssim_mean": float(col("box_dssim").mean()),
            "mean_de_mean": float(col("mean_de").mean()), "mean_de_max": float(col("mean_de").max()),
            "p99_de_max": float(col("p99_de").max()), "p99_de_mean": float(col("p99_de").mean()),
            "region_dssim_max": max((f.region_dssim for f in faces if f.region_dssim is not None), default=None),
            "max_change": int(max(c.max_change for c in checks))}


def dev_photos(lfw, count: int, seed: int = 0, max_photos: int = 14) -> list:
    """`count` seeded LFW photos named in pairs-dev.txt, one per identity, from identities with at most
    `max_photos` photos (the protection protocol's users have at least 15), each with a face dlib finds."""
    lfw = Path(lfw)
    sizes = {n: int(c) for n, c in (ln.split("\t") for ln in (lfw / "people.tsv").read_text().splitlines()[1:])}
    first: dict = {}
    for p in read_pairs(lfw / "pairs-dev.txt"):
        for name, i in (p.a, p.b):
            if sizes.get(name, 0) <= max_photos:
                first.setdefault(name, i)
    names = sorted(first)
    out = []
    for k in np.random.default_rng(seed).permutation(len(names)):
        path = lfw / names[k] / f"{names[k]}_{first[names[k]]:04d}.jpg"
        if dlib_boxes(decode(path)):
            out.append(path)
        if len(out) == count:
            break
    return out


def cloak_and_check(inputs: dict, mode: str, fmt: str, quality: int = 90, seed: int = 0, out_dir=None,
                    extractors=("dlib",)) -> list[dict]:
    """Cloak `inputs` ({name: path or uint8 RGB}) through the public API, write each output to `out_dir`
    (when given) and check it. One dict per input: name, status, error, file, reported (the cloak's own
    per-face DSSIM), seconds (this call's time per photo), and the PhotoCheck's fields when written."""
    names = list(inputs)
    t0 = time.perf_counter()
    results = fawkes_fast.cloak([inputs[n] for n in names], mode=mode, extractors=tuple(extractors), seed=seed,
                                format=fmt, quality=quality)
    per_photo = (time.perf_counter() - t0) / max(len(names), 1)
    rows = []
    for name, r in zip(names, results):
        row = {"name": name, "status": r.status, "error": r.error, "file": None, "seconds": per_photo,
               "reported": [float(f.dssim) for f in r.faces]}
        if r.status == "cloaked":
            data = r.encoded if r.encoded is not None else _png(r.image)
            if out_dir is not None:
                path = Path(out_dir) / f"{name}_cloaked.{'jpg' if fmt == 'jpeg' else fmt}"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                row["file"], data = str(path), path
            original = inputs[name] if isinstance(inputs[name], np.ndarray) else str(inputs[name])
            row.update(check(original, data, name, quality, regions=[f.region for f in r.faces]).as_dict())
        rows.append(row)
    return rows


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def summary_rows(rows: list[dict]) -> dict:
    """summary() over the checked rows of cloak_and_check, plus how many photos were written."""
    checks = [PhotoCheck(r["name"], r["format"], [FaceCheck(**f) for f in r["faces"]], r["max_change"],
                         r["channel_spread"], r["original_is_grey"]) for r in rows if "faces" in r]
    statuses = [r["status"] for r in rows]
    return {**summary(checks), "inputs": len(rows), "written": statuses.count("cloaked"),
            "statuses": {s: statuses.count(s) for s in sorted(set(statuses))}}
