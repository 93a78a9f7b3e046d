"""Photo -> faces -> regions -> chips -> features: the path `embed` and the engine share.

A face's *region* is the square of photo pixels that any extractor's chip can see,
rounded to a multiple of 16 px so faces of similar size share a batch. The engine
perturbs only region pixels; everything outside stays bit-identical.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

REGION_MULTIPLE = 16
REGION_MARGIN = 6  # px beyond the chips' footprint: SSIM window half-width plus bilinear support
MAX_CHIP_SCALE = 1.5  # working pixels per chip pixel: above it bilinear sampling would alias


def resolve_device(device=None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for, but torch sees no CUDA device")
    return device


def as_list(images) -> list:
    """One image (path, bytes, PIL image, array) or a sequence of them, as a list."""
    if isinstance(images, (str, bytes, np.ndarray)) or hasattr(images, "__fspath__") or hasattr(images, "getpixel"):
        return [images]
    return list(images)


@dataclass
class FaceSet:
    """The faces of one photo, largest first."""

    boxes: np.ndarray  # (n, 4) float: left, top, right, bottom, in pixels
    landmarks: np.ndarray  # (n, 5, 2) float: dlib's 5 points
    features: np.ndarray  # (n, D) float32, L2-normalised
    extractor: str = "dlib"

    def __len__(self) -> int:
        return len(self.boxes)


@dataclass
class Region:
    """A square crop of the photo (may extend past its border) and its working resolution."""

    x0: int
    y0: int
    side: int  # in photo pixels
    work: int  # working side in pixels (== side unless the face is large)

    @property
    def scale(self) -> float:
        return self.side / self.work

    def clipped(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the part inside the photo; right/bottom exclusive."""
        return max(self.x0, 0), max(self.y0, 0), min(self.x0 + self.side, width), min(self.y0 + self.side, height)

    def photo_to_work(self) -> np.ndarray:
        """(3, 3) affine taking photo pixel coordinates to working-crop pixel coordinates."""
        s = 1.0 / self.scale
        # pixel centres: photo (x0 + 0.5 + i*scale - 0.5) <-> work i; F.interpolate uses this convention
        return np.array([[s, 0, (-self.x0 + 0.5) * s - 0.5], [0, s, (-self.y0 + 0.5) * s - 0.5], [0, 0, 1]])


def face_region(chip_mats: list[np.ndarray], chip_sizes: list[int], max_work: int) -> Region:
    """The square region covering every extractor's chip footprint for one face."""
    pts = []
    for m, s in zip(chip_mats, chip_sizes):
        corners = np.array([[0, 0, 1], [s - 1, 0, 1], [0, s - 1, 1], [s - 1, s - 1, 1]], dtype=np.float64)
        pts.append(corners @ np.asarray(m, dtype=np.float64).T)
    pts = np.concatenate(pts)
    lo, hi = pts.min(0) - REGION_MARGIN, pts.max(0) + REGION_MARGIN
    side = int(math.ceil(max(hi - lo) / REGION_MULTIPLE) * REGION_MULTIPLE)
    centre = (lo + hi) / 2
    x0, y0 = (int(math.floor(c - side / 2)) for c in centre)
    # the working crop is as coarse as the extractors allow (speed) but never so fine that
    # their chips would alias when sampled from it (so one batched grid_sample suffices)
    chip_scale = max(math.sqrt(abs(np.linalg.det(np.asarray(m, np.float64)[:, :2]))) for m in chip_mats)
    no_alias = int(side * MAX_CHIP_SCALE / chip_scale) // REGION_MULTIPLE * REGION_MULTIPLE
    work = max(REGION_MULTIPLE, min(side, max_work, no_alias))
    return Region(x0=x0, y0=y0, side=side, work=work)


def crop_region(image: np.ndarray, region: Region, device) -> torch.Tensor:
    """(3, work, work) float crop of a uint8 HxWx3 photo; zeros outside the photo (as dlib's chips)."""
    h, w = image.shape[:2]
    l, t, r, b = region.clipped(h, w)
    out = torch.zeros(3, region.side, region.side, device=device)
    if r > l and b > t:
        patch = torch.from_numpy(np.array(image[t:b, l:r])).to(device)  # a copy: inputs may be read-only
        out[:, t - region.y0:b - region.y0, l - region.x0:r - region.x0] = patch.permute(2, 0, 1).float()
    if region.work != region.side:
        out = F.interpolate(out[None], size=(region.work, region.work), mode="bilinear",
                            antialias=True, align_corners=False)[0]
    return out


def work_matrices(chip_mat: np.ndarray, region: Region) -> np.ndarray:
    """Compose a chip->photo affine with photo->working-crop: chip pixels -> working pixels."""
    m = np.vstack([np.asarray(chip_mat, dtype=np.float64), [0, 0, 1]])
    return (region.photo_to_work() @ m)[:2]


class FacePipeline:
    """A detector plus extractors, loaded lazily and shared by threads."""

    def __init__(self, extractors=("dlib",), device=None, detector="auto", min_face=40, max_work=224,
                 flip: bool = False):
        if isinstance(extractors, str):
            extractors = (extractors,)
        if not extractors:
            raise ValueError("at least one extractor is needed")
        self.extractor_names = tuple(extractors)
        self.device = resolve_device(device)
        self.detector_kind = detector
        self.min_face = min_face
        self.max_work = max_work
        self.flip = flip  # flip-averaged features in features()/embed() (the optimiser never flips)
        self._lock = threading.Lock()
        self._detector = None
        self._extractors = None

    @property
    def detector(self):
        with self._lock:
            if self._detector is None:
                from .faces.detect import FaceDetector

                self._detector = FaceDetector(kind=self.detector_kind, min_face=self.min_face)
            return self._detector

    @property
    def extractors(self):
        with self._lock:
            if self._extractors is None:
                from . import extractors

                self._extractors = [extractors.load(n, self.device) for n in self.extractor_names]
            return self._extractors

    def detect(self, image: np.ndarray):
        return self.detector.detect(image)

    def regions(self, faces) -> tuple[list[Region], list[list[np.ndarray]]]:
        """Per face: its region, and per extractor the chip->working-crop affine."""
        regions, mats = [], []
        exts = self.extractors
        for face in faces:
            chip = [e.chip_matrices(face.landmarks[None])[0] for e in exts]
            region = face_region(chip, [e.chip_size for e in exts], self.max_work)
            regions.append(region)
            mats.append([work_matrices(c, region) for c in chip])
        return regions, mats

    @staticmethod
    def chips(crops: torch.Tensor, mats: torch.Tensor, ext) -> torch.Tensor:
        """(B, 3, S, S) chips from same-sized working crops (one chip per crop)."""
        from .faces.align import warp_batch

        return warp_batch(crops, mats, ext.chip_size)

    def features(self, image: np.ndarray, faces) -> list[np.ndarray]:
        """Per extractor, (n, D) normalised features of the given faces of a photo."""
        exts = self.extractors
        if not faces:
            return [np.zeros((0, e.dim), np.float32) for e in exts]
        regions, mats = self.regions(faces)
        out = [[] for _ in exts]
        with torch.no_grad():
            for region, m in zip(regions, mats):
                crop = crop_region(image, region, self.device)[None]
                for k, e in enumerate(exts):
                    mat = torch.as_tensor(m[k], dtype=torch.float32, device=self.device)[None]
                    out[k].append(e.features(self.chips(crop, mat, e), flip=self.flip).cpu())
        return [torch.cat(f).numpy().astype(np.float32) for f in out]

    def embed(self, image: np.ndarray) -> list[FaceSet]:
        """One FaceSet per extractor for a photo (faces largest first)."""
        faces = self.detect(image)
        boxes = np.array([f.box for f in faces], np.float64).reshape(-1, 4)
        marks = np.array([f.landmarks for f in faces], np.float64).reshape(-1, 5, 2)
        return [FaceSet(boxes, marks, f, e.name) for e, f in zip(self.extractors, self.features(image, faces))]
