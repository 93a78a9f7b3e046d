"""LFW verification with the full pipeline (our detector -> our warp -> our torch extractor).

pairs file: "name i j" is a same-person pair, "name1 i name2 j" a different-person pair.
Accuracy is the standard 10-fold protocol: the threshold is chosen on nine folds and scored
on the tenth. The face nearest the photo's centre is the subject. A photo where no face is
found makes its pair count as answered wrong.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Pair:
    a: tuple[str, int]
    b: tuple[str, int]

    @property
    def same(self) -> bool:
        return self.a[0] == self.b[0]


def read_pairs(path) -> list[Pair]:
    pairs = []
    for line in Path(path).read_text().splitlines():
        f = line.split()
        if line.startswith("#") or len(f) not in (3, 4):
            continue
        if len(f) == 3:
            pairs.append(Pair((f[0], int(f[1])), (f[0], int(f[2]))))
        else:
            pairs.append(Pair((f[0], int(f[1])), (f[2], int(f[3]))))
    return pairs


def subset(pairs: list[Pair], n: int) -> list[Pair]:
    """n pairs spread evenly over the list, half same, half different."""
    same = [p for p in pairs if p.same]
    diff = [p for p in pairs if not p.same]
    pick = lambda xs, k: [xs[i] for i in np.linspace(0, len(xs) - 1, k).astype(int)]  # noqa: E731
    return pick(same, n // 2) + pick(diff, n - n // 2)


def central_face(boxes: np.ndarray, shape) -> int:
    """LFW photos are centred on their subject; other faces in the photo are bystanders."""
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    return int(np.argmin(np.linalg.norm(centres - np.array([shape[1], shape[0]]) / 2, axis=1)))


def pair_distances(pipeline, pairs: list[Pair], lfw: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """(distances per extractor (E, P), same (P,), photos without a face). inf where a face is missing."""
    from ..io.images import load_image

    cache: dict[tuple[str, int], list[np.ndarray] | None] = {}

    def feats(key):
        if key not in cache:
            img = load_image(Path(lfw) / key[0] / f"{key[0]}_{key[1]:04d}.jpg")
            sets = pipeline.embed(img)
            cache[key] = [s.features[central_face(s.boxes, img.shape)] for s in sets] if len(sets[0]) else None
        return cache[key]

    n_ext = len(pipeline.extractors)
    dist = np.full((n_ext, len(pairs)), np.inf)
    for i, p in enumerate(pairs):
        fa, fb = feats(p.a), feats(p.b)
        if fa is not None and fb is not None:
            dist[:, i] = [np.linalg.norm(x - y) for x, y in zip(fa, fb)]
    missing = sum(v is None for v in cache.values())
    return dist, np.array([p.same for p in pairs]), missing


def _accuracy(dist, same, thr) -> float:
    return float(((dist < thr) == same).mean())


def ten_fold_accuracy(dist: np.ndarray, same: np.ndarray, folds: int = 10) -> tuple[float, float]:
    """(mean, std) accuracy over folds; thresholds chosen on the other folds."""
    order = np.arange(len(dist))
    parts = np.array_split(order, folds)
    finite = dist[np.isfinite(dist)]
    grid = np.unique(np.concatenate([finite, [0.0]])) if len(finite) else np.array([0.0])
    accs = []
    for k in range(folds):
        test = parts[k]
        train = np.setdiff1d(order, test)
        scores = [_accuracy(dist[train], same[train], t + 1e-9) for t in grid]
        thr = grid[int(np.argmax(scores))] + 1e-9
        # a missing face is a wrong answer, whatever the threshold says
        correct = ((dist[test] < thr) == same[test]) & np.isfinite(dist[test])
        accs.append(correct.mean())
    return float(np.mean(accs)), float(np.std(accs))
