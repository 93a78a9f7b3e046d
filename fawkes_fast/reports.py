"""What a cloak call returns: one CloakResult per input, one FaceReport per face.

The reports are measured on the output pixels, through the same regions and warp matrices as
the batch's clean features, so "before" and "after" are taken exactly alike.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .batch import FaceBatch, Photo
from .pipeline import crop_region

STATUSES = ("cloaked", "no_face", "over_budget", "error")


@dataclass
class FaceReport:
    box: tuple  # left, top, right, bottom (pixels)
    landmarks: list  # dlib's 5 points
    region: tuple  # left, top, right, bottom (exclusive) of the pixels the cloak may touch
    target: str | None  # target identity, None when untargeted
    dssim: float  # the budget's figure: the largest over the face's budget boxes, on the saved pixels/bytes
    steps: int
    # per extractor: {"to_original": before/after, "to_target": before/after}
    distances: dict = field(default_factory=dict)
    region_dssim: float | None = None  # the same over the whole region (diluted; for comparison)
    delta_e: float | None = None  # mean CIEDE2000 colour difference (the largest over the budget boxes)
    delta_e_p99: float | None = None  # its 99th percentile (likewise)
    # with judge=True: butteraugli and SSIMULACRA2 over the face next to the photo's JPEG re-saves, and
    # the verdict in words (fawkes_fast.evaluate.judges.Visibility.as_dict)
    visibility: dict | None = None


@dataclass
class CloakResult:
    image: np.ndarray | None  # uint8 RGB, same size as the input; None unless status == "cloaked"
    status: str  # one of STATUSES
    error: str | None = None
    faces: list = field(default_factory=list)
    source: str | None = None
    encoded: bytes | None = None  # the checked bytes when an output format was given
    info: object = None  # fawkes_fast.io.images.ImageInfo of the input (metadata for --keep-metadata)


def face_reports(pipeline, batch: FaceBatch, photo: Photo, image: np.ndarray, measures: list[dict]) -> list[FaceReport]:
    """Per face of `photo`: feature distances on `image` (the output) and the measures of the
    finaliser (box DSSIM, region DSSIM, colour difference)."""
    idx = list(photo.face_range)
    crops = [crop_region(image, batch.regions[i], pipeline.device) for i in idx]
    after = pipeline.batch_features(crops, [m[idx] for m in batch.mats], [batch.regions[i] for i in idx],
                                    max_faces=len(idx))
    h, w = image.shape[:2]
    reports = []
    for j, i in enumerate(idx):
        dist = {}
        for k, e in enumerate(pipeline.extractors):
            c, a, t = batch.clean[k][i], after[k][j], batch.targets[k][i]
            dist[e.name] = {"to_original": (0.0, float((a - c).norm()))}
            if not batch.untargeted:
                dist[e.name]["to_target"] = (float((c - t).norm()), float((a - t).norm()))
        face = photo.faces[j]
        reports.append(FaceReport(box=tuple(float(v) for v in face.box),
                                  landmarks=np.asarray(face.landmarks).tolist(),
                                  region=batch.regions[i].clipped(h, w), target=batch.target_names[i],
                                  steps=batch.steps[i], distances=dist, **measures[j]))
    return reports
