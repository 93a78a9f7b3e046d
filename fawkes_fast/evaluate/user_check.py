"""Estimate a user's own protection without third-party photos (`fawkes-fast evaluate`).

The tracker is a transfer-learning recogniser, which sees features only. Its population is the
target bank's stored features of other people (a seeded sample of `population` identities; bank
identities that fall within the same-person distance of the user's originals are left out, as they
may be the user). It is trained as a linear classifier (logistic regression) on that population
plus the features of the user's *cloaked* photos; the user's *original* photos are the queries.

Two query rules are reported:
  * leave-one-out (headline): original i is queried against a tracker trained without cloaked i, as a
    tracker would meet a new clean photo of the user, not the clean twin of an uploaded one;
  * same-photo: all cloaked photos in training (stricter: the twin of the query is in the training set).
Plus similarity matching: an original counts as recognised if any other cloaked photo lies within
the bank's same-person distance. Features come from our own torch pipeline (the bank's space).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io.images import IMAGE_SUFFIXES


@dataclass
class PhotoPair:
    original: Path
    cloaked: Path


@dataclass
class ExtractorResult:
    extractor: str
    photos: int  # pairs where both photos had a face
    protection_loo: float | None
    protection_same: float | None
    protection_match: float | None
    shift: list = field(default_factory=list)  # per pair: ||f(cloaked) - f(original)||
    recognised_loo: list = field(default_factory=list)  # per pair: was original i recognised (LOO)
    threshold: float = 0.0
    population: int = 0


def list_images(folder) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def pair_photos(original_dir, cloaked_dir) -> list[PhotoPair]:
    """Match photos by name: 'x.jpg' <-> 'x_cloaked.png' (or the same stem)."""
    cloaked = {}
    for p in list_images(cloaked_dir):
        stem = p.stem[:-len("_cloaked")] if p.stem.endswith("_cloaked") else p.stem
        cloaked.setdefault(stem, p)
    pairs = [PhotoPair(o, cloaked[o.stem]) for o in list_images(original_dir) if o.stem in cloaked]
    if not pairs:
        raise ValueError(f"no photo in {cloaked_dir} matches a photo in {original_dir} by name "
                         "(expected 'name.jpg' and 'name_cloaked.png' or the same stem)")
    return pairs


def _embed_all(pipe, paths) -> np.ndarray:
    from ..io.images import load_image

    out = []
    for p in paths:
        sets = pipe.embed(load_image(str(p)))
        out.append(sets[0].features[0] if len(sets[0]) else np.full(sets[0].features.shape[1], np.nan, np.float32))
    return np.stack(out)


def _population(bank, ext, user_orig, size, seed):
    cent = bank.centroids(ext)
    thr = bank.thresholds[ext]
    u = user_orig.mean(0); u = u / np.linalg.norm(u)
    near = np.linalg.norm(cent - u, axis=1) <= thr
    near |= (np.linalg.norm(user_orig[:, None] - cent[None], axis=2) <= thr).mean(0) >= 0.5
    ids = np.flatnonzero(~near)
    ids = np.random.default_rng(seed).choice(ids, size=min(size, len(ids)), replace=False)
    mask = np.isin(bank.owner, ids)
    return bank.features[ext][mask], bank.owner[mask], int(near.sum())


def check_extractor(pairs, ext: str, population: int = 100, seed: int = 0, pipe=None, bank=None) -> ExtractorResult:
    from sklearn.linear_model import LogisticRegression

    from ..pipeline import FacePipeline
    from ..targets.bank import load_bank

    bank = bank or load_bank()
    bank.require([ext])
    pipe = pipe or FacePipeline((ext,))
    orig = _embed_all(pipe, [p.original for p in pairs])
    clo = _embed_all(pipe, [p.cloaked for p in pairs])
    ok = np.isfinite(orig).all(1) & np.isfinite(clo).all(1)
    orig, clo = orig[ok], clo[ok]
    thr = float(bank.thresholds[ext])
    res = ExtractorResult(ext, int(ok.sum()), None, None, None, threshold=thr)
    if not ok.any():
        return res
    X, y, _ = _population(bank, ext, orig, population, seed)
    res.population = len(np.unique(y))
    U = int(y.max()) + 1

    def fit(cloaked):
        return LogisticRegression(C=10.0, max_iter=2000).fit(np.concatenate([X, cloaked]), np.r_[y, [U] * len(cloaked)])

    res.protection_same = float((fit(clo).predict(orig) != U).mean())
    n = len(orig)
    if n >= 2:
        rec = [bool(fit(np.delete(clo, i, 0)).predict(orig[i:i + 1])[0] == U) for i in range(n)]
        res.recognised_loo = rec
        res.protection_loo = 1.0 - float(np.mean(rec))
        d = np.linalg.norm(orig[:, None] - clo[None], axis=2)
        np.fill_diagonal(d, np.inf)
        res.protection_match = float((d.min(1) >= thr).mean())
    res.shift = np.linalg.norm(clo - orig, axis=1).round(4).tolist()
    return res


def check(original_dir, cloaked_dir, extractors=("dlib",), population: int = 100, seed: int = 0):
    pairs = pair_photos(original_dir, cloaked_dir)
    return pairs, [check_extractor(pairs, e, population, seed) for e in extractors]


def table(results) -> str:
    rows = [f"{'extractor':<10} {'photos':>6} {'protection LOO':>15} {'same-photo':>11} {'matching':>9} {'mean shift':>11} {'thr':>6}"]
    f = lambda v: "n/a" if v is None else f"{100 * v:.0f}%"  # noqa: E731
    for r in results:
        shift = f"{np.mean(r.shift):.3f}" if r.shift else "n/a"
        rows.append(f"{r.extractor:<10} {r.photos:>6} {f(r.protection_loo):>15} {f(r.protection_same):>11} "
                    f"{f(r.protection_match):>9} {shift:>11} {r.threshold:>6.3f}")
    return "\n".join(rows)
