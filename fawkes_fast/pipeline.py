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

from . import extractors as extractor_registry
from .batch import FaceBatch, Photo
from .device import resolve_device
from .faces.warp import warp_batch
from .faces.budget import budget_boxes, whole_boxes
from .faces.detect import FaceDetector
from .faces.yunet import add_points_needed

REGION_MULTIPLE = 16
REGION_MARGIN = 6  # px beyond the chips' footprint: SSIM window half-width plus bilinear support
MAX_CHIP_SCALE = 1.5  # working pixels per chip pixel: above it bilinear sampling would alias


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

    def boxes_in_work(self, boxes: np.ndarray) -> np.ndarray:
        """(K, 4) photo-pixel boxes as whole working-crop pixels, clipped to the crop."""
        return whole_boxes(boxes, self.work, self.work, offset=(self.x0, self.y0), scale=self.work / self.side)

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
                self._detector = FaceDetector(kind=self.detector_kind, min_face=self.min_face)
            return self._detector

    @property
    def extractors(self):
        with self._lock:
            if self._extractors is None:
                self._extractors = [extractor_registry.load(n, self.device) for n in self.extractor_names]
            return self._extractors

    def detect(self, image: np.ndarray):
        """Faces largest first, with the extra landmarks any extractor aligns on (YuNet's five
        points for SFace, as OpenCV's own pipeline; a face YuNet misses keeps dlib's)."""
        faces = self.detector.detect(image)
        if faces:
            add_points_needed(image, faces, [e.points for e in self.extractors])
        return faces

    def regions(self, faces) -> tuple[list[Region], list[list[np.ndarray]]]:
        """Per face: its region, and per extractor the chip->working-crop affine."""
        regions, mats = [], []
        exts = self.extractors
        for face in faces:
            chip = [e.chip_matrix(face) for e in exts]
            region = face_region(chip, [e.chip_size for e in exts], self.max_work)
            regions.append(region)
            mats.append([work_matrices(c, region) for c in chip])
        return regions, mats

    @staticmethod
    def chips(crops: torch.Tensor, mats: torch.Tensor, ext) -> torch.Tensor:
        """(B, 3, S, S) chips from same-sized working crops (one chip per crop)."""
        return warp_batch(crops, mats, ext.chip_size)

    def batch_features(self, crops: list[torch.Tensor], mats: list[torch.Tensor], regions, max_faces: int,
                       flip: bool = False, owners: list[int] | None = None) -> list[torch.Tensor]:
        """Per extractor, (n, D) features of working crops, computed in same-sized groups; with
        `owners`, never mixing photos (CPU kernels are not batch-invariant, and a photo's clean
        features must not depend on the other photos of its call)."""
        exts = self.extractors
        out = [torch.empty(len(crops), e.dim, device=self.device) for e in exts]
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(regions):
            groups.setdefault((owners[i] if owners is not None else 0, r.work), []).append(i)
        with torch.no_grad():
            for idx in groups.values():
                for s in range(0, len(idx), max_faces):
                    part = idx[s:s + max_faces]
                    x = torch.stack([crops[i] for i in part])
                    for k, e in enumerate(exts):
                        out[k][part] = e.features(self.chips(x, mats[k][part], e), flip=flip)
        return out

    def build_batch(self, photos: list[Photo], max_faces: int = 32) -> FaceBatch:
        """Crops, warp matrices, regions and clean features of every face of `photos`."""
        regions, mats, owner, boxes = [], [[] for _ in self.extractors], [], []
        n = 0
        for p_i, photo in enumerate(photos):
            photo.first, n = n, n + len(photo.faces)
            face_regions, face_mats = self.regions(photo.faces)
            for face, region, m in zip(photo.faces, face_regions, face_mats):
                regions.append(region)
                boxes.append(region.boxes_in_work(budget_boxes(face.box)))
                owner.append(p_i)
                for k in range(len(self.extractors)):
                    mats[k].append(m[k])
        crops = [crop_region(photos[o].rgb, r, self.device) for o, r in zip(owner, regions)]
        mats_t = [torch.as_tensor(np.stack(m), dtype=torch.float32, device=self.device) for m in mats]
        clean = self.batch_features(crops, mats_t, regions, max_faces, owners=owner)
        return FaceBatch(photos=photos, regions=regions, boxes=boxes, crops=crops, mats=mats_t, clean=clean,
                         owner=owner)

    def features(self, image: np.ndarray, faces) -> list[np.ndarray]:
        """Per extractor, (n, D) normalised features of the given faces of a photo."""
        if not faces:
            return [np.zeros((0, e.dim), np.float32) for e in self.extractors]
        regions, mats = self.regions(faces)
        crops = [crop_region(image, r, self.device) for r in regions]
        mats_t = [torch.as_tensor(np.stack([m[k] for m in mats]), dtype=torch.float32, device=self.device)
                  for k in range(len(self.extractors))]
        feats = self.batch_features(crops, mats_t, regions, max_faces=1, flip=self.flip)
        return [f.cpu().numpy().astype(np.float32) for f in feats]

    def embed(self, image: np.ndarray) -> list[FaceSet]:
        """One FaceSet per extractor for a photo (faces largest first)."""
        faces = self.detect(image)
        boxes = np.array([f.box for f in faces], np.float64).reshape(-1, 4)
        marks = np.array([f.landmarks for f in faces], np.float64).reshape(-1, 5, 2)
        return [FaceSet(boxes, marks, f, e.name) for e, f in zip(self.extractors, self.features(image, faces))]
