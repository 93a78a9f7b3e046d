"""The face batch: one object that carries a call's faces from detection to the saved file.

The pipeline builds it (crops, each extractor's warp matrices, regions, clean features); target
selection adds the targets; the optimiser reads the crops and writes the cloaked ones back; the
finaliser pastes them and the reports read everything from here. No step re-derives another's work.
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch


def content_seed(seed: int, rgb: np.ndarray) -> int:
    """A photo's own random seed: the caller's seed mixed with the photo's pixels, so the same
    photo and seed give the same cloak in any batch, worker or machine."""
    h = hashlib.sha256(repr(rgb.shape).encode())
    h.update(memoryview(np.ascontiguousarray(rgb)).cast("B"))  # no copy of a big photo
    digest = h.digest()
    return int(np.random.SeedSequence([seed % 2**63, int.from_bytes(digest[:8], "little")]).generate_state(1)[0])


@dataclass
class Photo:
    """One loaded photo with at least one face."""

    index: int  # position in the caller's list
    rgb: np.ndarray  # uint8 HxWx3
    info: object  # fawkes_fast.io.images.ImageInfo
    faces: list  # fawkes_fast.faces.detect.Face, largest first
    seed: int  # the caller's seed for this photo: it draws the target candidates
    first: int = 0  # index of its first face in the batch
    person: str | None = None  # who the largest face is: one person's photos share one target (eq. 3)

    @functools.cached_property
    def own_seed(self) -> int:
        """The seed of this photo's random draws: the caller's seed mixed with its pixels."""
        return content_seed(self.seed, self.rgb)

    @property
    def face_range(self) -> range:
        return range(self.first, self.first + len(self.faces))

    @property
    def grayscale(self) -> bool:
        return bool((self.rgb[..., 0] == self.rgb[..., 1]).all() and (self.rgb[..., 1] == self.rgb[..., 2]).all())


@dataclass
class FaceBatch:
    """Every face of a call, flattened photo by photo (face i belongs to `owner[i]`)."""

    photos: list[Photo]
    regions: list  # per face: pipeline.Region, the square the cloak may touch
    boxes: list[np.ndarray]  # per face: (K, 4) its budget boxes (faces.budget) in working-crop pixels
    crops: list[torch.Tensor]  # per face: (3, work, work) float working crop of the original
    mats: list[torch.Tensor]  # per extractor: (n, 2, 3) chip -> working-crop affine
    clean: list[torch.Tensor]  # per extractor: (n, D) clean normalised features
    owner: list[int] = field(default_factory=list)  # per face: position of its photo in `photos`
    targets: list[torch.Tensor] | None = None  # per extractor: (n, D) features to move towards
    target_names: list[str | None] = field(default_factory=list)  # per face
    untargeted: bool = False
    cloaked: list[torch.Tensor] | None = None  # per face: the optimiser's best crop
    steps: list[int] = field(default_factory=list)  # per face: Adam steps taken

    def __len__(self) -> int:
        return len(self.crops)

    def face_seed(self, i: int) -> int:
        photo = self.photos[self.owner[i]]
        return int(np.random.SeedSequence([photo.own_seed, i - photo.first]).generate_state(1)[0])

    def groups(self, photos_per_group: int, across_photos: bool, max_faces: int = 32,
               mixed_sizes: bool = False) -> list[list[int]]:
        """Faces optimised together, at most `max_faces`: of one working size, or with `mixed_sizes`
        of any (largest first, so a group pads its crops as little as it can; see `select`). Without
        `across_photos` a group never mixes photos, so a photo's pixels cannot depend on its
        neighbours (CPU and GPU kernels are not bit-identical across batch sizes); with it, up to
        `photos_per_group` consecutive photos share groups."""
        span = photos_per_group if across_photos else 1
        buckets: dict[tuple, list[int]] = {}
        for i, region in enumerate(self.regions):
            buckets.setdefault((0 if mixed_sizes else region.work, self.owner[i] // span), []).append(i)
        if mixed_sizes:
            buckets = {k: sorted(idx, key=lambda i: -self.regions[i].work) for k, idx in buckets.items()}
        return [idx[s:s + max_faces] for idx in buckets.values() for s in range(0, len(idx), max_faces)]

    def select(self, idx: list[int]):
        """(stacked crops, per-extractor mats, targets, clean, sizes) of the faces `idx`. Crops of
        different sizes are zero-padded on the right and bottom to the largest (the mats are in crop
        pixels, so they still cut the same chips); `sizes` then gives each face's own side, else None."""
        sides = [self.crops[i].shape[-1] for i in idx]
        side = max(sides)
        pad = torch.nn.functional.pad
        x0 = torch.stack([self.crops[i] if s == side else pad(self.crops[i], (0, side - s, 0, side - s))
                          for i, s in zip(idx, sides)])
        pick = (lambda ts: [t[idx] for t in ts])  # noqa: E731
        return x0, pick(self.mats), pick(self.targets), pick(self.clean), (sides if min(sides) < side else None)
