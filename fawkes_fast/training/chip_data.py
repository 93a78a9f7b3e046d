"""Aligned face chips for training: cut once from photo folders, stored compactly.

A chip file (.npz) holds each chip JPEG-encoded (quality 95 by default) plus the source paths, so a
training set of thousands of faces fits in tens of MB and can travel to a GPU machine that
has no face detector. Only chips are stored, never the photos.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import torch

from ..faces.warp import warp_chips
from ..faces.detect import FaceDetector
from ..faces.yunet import add_points_needed
from ..io.images import ImageError, load_image
from ..io.images import IMAGE_SUFFIXES



def list_photos(folders, holdout_min: int | None = None) -> list[Path]:
    """Photos under `folders` (recursive, sorted). With `holdout_min`, skip identity
    sub-folders holding >= that many photos (LFW layout: one folder per person), which keeps
    the identities an evaluation uses as tracker classes out of training."""
    out = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"no such photo folder: {folder}")
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if holdout_min:
            per_dir: dict[Path, int] = {}
            for p in files:
                per_dir[p.parent] = per_dir.get(p.parent, 0) + 1
            files = [p for p in files if p.parent == folder or per_dir[p.parent] < holdout_min]
        out += files
    return out


def data_hash(paths) -> str:
    """sha256 of the sorted relative-looking path list (names only, so machines agree)."""
    h = hashlib.sha256()
    for p in sorted(f"{Path(p).parent.name}/{Path(p).name}" for p in paths):
        h.update(p.encode() + b"\n")
    return h.hexdigest()


def cut_chips(paths, ext, log=print) -> tuple[torch.Tensor, list[str]]:
    """(N, 3, S, S) uint8 chips of the largest face of each photo, for `ext`'s template."""
    det = FaceDetector(kind="hog")
    chips, kept = [], []
    for i, p in enumerate(paths):
        try:
            rgb = load_image(str(p))
        except ImageError as e:
            log(f"  skipped {p}: {e}")
            continue
        faces = det.detect(rgb)  # largest first
        if not faces:
            continue
        add_points_needed(rgb, faces[:1], [ext.points])  # the chip the runtime cuts (SFace: YuNet's points)
        M = ext.chip_matrix(faces[0])[None]
        img = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float()
        chips.append(warp_chips(img, M, ext.chip_size)[0].round().clamp(0, 255).to(torch.uint8))
        kept.append(str(p))
        if (i + 1) % 500 == 0:
            log(f"  chips: {i + 1}/{len(paths)} photos, {len(kept)} faces")
    if not chips:
        raise ValueError("no face found in any training photo")
    return torch.stack(chips), kept


def seeded_subset(chips: torch.Tensor, sources: list[str], n: int, seed: int = 0):
    """n chips picked with a seeded permutation, kept in their original order."""
    idx = torch.randperm(len(chips), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return chips[idx], [sources[i] for i in idx]


def save_chips(path, chips: torch.Tensor, sources: list[str], template: str, quality: int = 95) -> None:
    from PIL import Image

    blobs = []
    for c in chips:
        buf = io.BytesIO()
        Image.fromarray(c.permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=quality)
        blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
    offsets = np.cumsum([0] + [len(b) for b in blobs])
    np.savez(path, data=np.concatenate(blobs), offsets=offsets, sources=np.array(sources),
             template=np.array(template), size=np.array(chips.shape[-1]))


def load_chips(path, template: str, size: int) -> tuple[torch.Tensor, list[str]]:
    from PIL import Image

    z = np.load(path)
    if str(z["template"]) != template or int(z["size"]) != size:
        raise ValueError(f"{path}: chips are {z['template']}/{int(z['size'])}, the extractor needs {template}/{size}")
    data, off = z["data"], z["offsets"]
    chips = [np.asarray(Image.open(io.BytesIO(data[a:b].tobytes())).convert("RGB")) for a, b in zip(off[:-1], off[1:])]
    return torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2).contiguous(), [str(s) for s in z["sources"]]
