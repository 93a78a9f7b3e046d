"""Target selection, eq. 3 of the paper: among K random public identities, the one whose
centroid is farthest from the user's nearest photo, in every extractor's feature space."""
from __future__ import annotations

import numpy as np

from .bank import TargetBank

STRATEGIES = ("max", "average", "none")


def candidate_scores(bank: TargetBank, user: dict[str, np.ndarray], candidates: np.ndarray):
    """(score, eligible) per candidate: mean over extractors of min_x ||phi(x) - C_k|| / threshold.

    A candidate is ineligible if any extractor puts one of the user's faces within its
    same-person distance of the candidate's centroid (it could be the user)."""
    score = np.zeros(len(candidates))
    eligible = np.ones(len(candidates), bool)
    for ext, feats in user.items():
        cent = bank.centroids(ext)[candidates]  # (k, D)
        d = np.linalg.norm(feats[:, None, :] - cent[None], axis=2).min(0)  # (k,)
        thr = bank.thresholds[ext]
        eligible &= d > thr
        score += d / thr
    return score / len(user), eligible


def select_target(bank: TargetBank, user: dict[str, np.ndarray], strategy: str = "max",
                  candidates: int = 32, rng: np.random.Generator | None = None) -> int:
    """Index of the chosen identity. `user` maps extractor -> (n, D) normalised features."""
    if strategy not in ("max", "average"):
        raise ValueError(f"target must be one of {', '.join(STRATEGIES)} or an identity name, not {strategy!r}")
    bank.require(user)
    rng = rng or np.random.default_rng()
    pool = rng.choice(len(bank.names), size=min(candidates, len(bank.names)), replace=False)
    score, eligible = candidate_scores(bank, user, pool)
    if not eligible.any():
        raise RuntimeError("every candidate target is within the same-person distance of the user")
    pool, score = pool[eligible], score[eligible]
    if strategy == "max":
        return int(pool[np.argmax(score)])
    # §8.2: a target at average distance makes cloaked features sit less far out
    return int(pool[np.argmin(np.abs(score - score.mean()))])


def identity_index(bank: TargetBank, name: str) -> int:
    hits = np.flatnonzero(bank.names == name)
    if not len(hits):
        raise ValueError(f"no identity named {name!r} in the target bank")
    return int(hits[0])


def target_features(bank: TargetBank, identity: int, n_faces: int, extractors,
                    rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per extractor, (n_faces, D) features of the target's photos, one photo per face (cycled)."""
    images = rng.permutation(bank.images_of(identity))
    pick = images[np.arange(n_faces) % len(images)]
    return {e: bank.features[e][pick] for e in extractors}
