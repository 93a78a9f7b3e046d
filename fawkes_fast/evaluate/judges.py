"""How visible a cloak is, judged the way image-codec engineers judge "visually lossless" (issue #22).

Two outside judges, never used by the optimiser (a cloak tuned against its judge would fool it):
  * butteraugli (Debian's `butteraugli` package, its CLI): a max-norm perceptual distance, lower is
    better; below about 1 nobody sees a difference;
  * SSIMULACRA2 (PyPI `ssimulacra2`): higher is better; about 90 is visually lossless.
Both look at the face: the detection box grown by GROW of its side on each side. The scale they are
read on is the same photo re-saved as JPEG (Pillow's defaults) at RESAVE_QUALITIES, judged over the
same crop, so a cloak can be said to be "about as visible as re-saving as JPEG q70".
"""
from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

GROW = 0.3  # of the box's side, added on each side: the face with its hairline, ears and chin
RESAVE_QUALITIES = (95, 90, 80, 70, 50)


def missing() -> dict[str, str]:
    """{judge: what to install} for each judge that cannot run here."""
    out = {}
    if shutil.which("butteraugli") is None:
        out["butteraugli"] = "the `butteraugli` command (Debian: apt-get install butteraugli)"
    try:
        import ssimulacra2  # noqa: F401
    except ImportError:
        out["ssimulacra2"] = "the `ssimulacra2` Python package (pip install ssimulacra2)"
    return out


def require() -> None:
    """Raise a clear error naming what to install when a judge is missing."""
    gone = missing()
    if gone:
        raise RuntimeError("visibility judges missing: " + "; ".join(gone.values()))


def face_window(box, height: int, width: int, grow: float = GROW) -> tuple[int, int, int, int]:
    """The box (left, top, right, bottom) grown by `grow` of its width/height on each side, clipped."""
    l, t, r, b = (float(v) for v in box)
    gw, gh = grow * (r - l), grow * (b - t)
    return (max(0, int(round(l - gw))), max(0, int(round(t - gh))),
            min(width, int(round(r + gw))), min(height, int(round(b + gh))))


def jpeg_resave(rgb: np.ndarray, quality: int) -> np.ndarray:
    """The photo saved as JPEG at `quality` with Pillow's defaults (4:2:0), decoded again."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=int(quality))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def scores(reference: np.ndarray, distorted: np.ndarray) -> tuple[float, float]:
    """(butteraugli, SSIMULACRA2) of two uint8 RGB crops of one size."""
    import ssimulacra2

    with tempfile.TemporaryDirectory(prefix="fawkes-judge-") as tmp:
        a, b = Path(tmp) / "reference.png", Path(tmp) / "distorted.png"
        Image.fromarray(np.ascontiguousarray(reference)).save(a)
        Image.fromarray(np.ascontiguousarray(distorted)).save(b)
        run = subprocess.run(["butteraugli", str(a), str(b)], capture_output=True, text=True, timeout=600)
        if run.returncode != 0:
            raise RuntimeError(f"butteraugli failed: {run.stderr.strip() or run.stdout.strip()}")
        return float(run.stdout.split()[0]), float(ssimulacra2.compute_ssimulacra2(str(a), str(b)))


@dataclass
class Visibility:
    window: tuple  # the judged crop: left, top, right, bottom
    butteraugli: float
    ssimulacra2: float
    # JPEG quality -> (butteraugli, SSIMULACRA2) of the same photo re-saved at it, over the same crop
    resaves: dict = field(default_factory=dict)

    def like(self) -> int | None:
        """The highest re-save quality whose re-save is at least as visible as the cloak by both judges
        (None: the cloak is more visible than every re-save measured)."""
        ok = [q for q, (b, s) in self.resaves.items() if self.butteraugli <= b and self.ssimulacra2 >= s]
        return max(ok) if ok else None

    def words(self) -> str:
        """In plain words, against the re-saves: the reader need know no metric."""
        q = self.like()
        qs = sorted(self.resaves)
        if q is None:
            return f"more visible than re-saving the photo as JPEG quality {qs[0]}"
        if q == qs[-1]:
            return f"no more visible than re-saving the photo as JPEG quality {q}"
        return f"about as visible as re-saving the photo as JPEG quality {q}"

    def as_dict(self) -> dict:
        d = asdict(self)
        d["resaves"] = {str(q): list(v) for q, v in self.resaves.items()}
        d["like_jpeg_quality"], d["in_words"] = self.like(), self.words()
        return d


def judge_face(original: np.ndarray, output: np.ndarray, box, qualities=RESAVE_QUALITIES) -> Visibility:
    """Judge one face of `output` (uint8 RGB, as saved and decoded) against `original`, next to the
    original's own JPEG re-saves, over the face window of `box`."""
    if original.shape != output.shape:
        raise ValueError(f"the output is {output.shape}, the original {original.shape}")
    l, t, r, b = face_window(box, *original.shape[:2])
    crop = lambda a: a[t:b, l:r]  # noqa: E731
    ref = crop(original)
    bu, ss = scores(ref, crop(output))
    resaves = {int(q): scores(ref, crop(jpeg_resave(original, q))) for q in qualities}
    return Visibility((l, t, r, b), bu, ss, resaves)


def summary(faces: list[dict]) -> dict:
    """Pooled figures over judged faces (Visibility.as_dict rows): each judge's mean and worst, the
    re-saves' means, and per re-save quality the share of faces no more visible than it by both judges
    (face by face) and whether the means are."""
    if not faces:
        return {"faces": 0}
    bu = np.array([f["butteraugli"] for f in faces])
    ss = np.array([f["ssimulacra2"] for f in faces])
    out = {"faces": len(faces), "butteraugli_mean": float(bu.mean()), "butteraugli_max": float(bu.max()),
           "ssimulacra2_mean": float(ss.mean()), "ssimulacra2_min": float(ss.min()), "resaves": {}}
    for q in faces[0]["resaves"]:
        rb = np.array([f["resaves"][q][0] for f in faces])
        rs = np.array([f["resaves"][q][1] for f in faces])
        out["resaves"][q] = {"butteraugli_mean": float(rb.mean()), "ssimulacra2_mean": float(rs.mean()),
                             "share_within": float(((bu <= rb) & (ss >= rs)).mean()),
                             "mean_within": bool(bu.mean() <= rb.mean() and ss.mean() >= rs.mean())}
    return out


def judge_result(result, original: np.ndarray) -> None:
    """Fill each face report's `visibility` of a cloaked CloakResult, judged on the saved file (its
    encoded bytes when a format was given) against the `original` pixels."""
    if result.status != "cloaked":
        return
    output = result.image
    if result.encoded is not None:
        output = np.asarray(Image.open(io.BytesIO(result.encoded)).convert("RGB"))
    for face in result.faces:
        face.visibility = judge_face(original, output, face.box).as_dict()
