"""Give every face of a batch the features it is pushed towards (eq. 3), or none (untargeted).

Eq. 3 is per user: the target is the candidate farthest from the user's photos. A photo given a
`person` key has its largest face choose with the other photos of that person in the call: the pool
is drawn from the key and the seed, and the choice is made on all their faces, so the person's
photos share one target (their pixels then depend on each other, never on other people's photos).
Any other face chooses for itself, from a pool drawn from its photo's seed, so its choice depends on
no other photo of the call."""
from __future__ import annotations

import hashlib

import numpy as np
import torch

from ..batch import FaceBatch
from .bank import load_bank
from .select import identity_index, select_target, target_features


def assign_targets(batch: FaceBatch, target, candidates: int, names: list[str]) -> None:
    """Fill `batch.targets` and `batch.target_names`.

    target: "max" / "average" (eq. 3 / §8.2, chosen from `candidates` random bank identities),
    "none" (untargeted: the faces' own features, pushed away from), an identity name, or a dict
    of explicit per-extractor features (Sybil images)."""
    n, dev = len(batch), batch.clean[0].device
    batch.untargeted = target == "none"
    if isinstance(target, dict):
        batch.targets = [torch.as_tensor(target[e], device=dev).float().expand(n, -1) for e in names]
        batch.target_names = [None] * n
        return
    if batch.untargeted:
        batch.targets, batch.target_names = batch.clean, [None] * n
        return
    bank = load_bank()
    bank.require(names)
    clean = {e: batch.clean[k].cpu().numpy() for k, e in enumerate(names)}
    feats = {e: [] for e in names}
    batch.target_names = []
    people = _people(batch)
    chosen_for: dict = {}
    for i in range(n):
        photo = batch.photos[batch.owner[i]]
        key = (photo.person, photo.seed) if i == photo.first and photo.person is not None else None
        if key is not None and key in chosen_for:
            ident = chosen_for[key]
        elif target not in ("max", "average"):
            ident = identity_index(bank, target)
        else:
            rows = people[key] if key is not None else [i]
            user = {e: f[rows] for e, f in clean.items()}
            ident = select_target(bank, user, target, candidates, np.random.default_rng(_pool_seed(photo, key)))
        if key is not None:
            chosen_for[key] = ident
        chosen = target_features(bank, ident, 1, names, np.random.default_rng(batch.face_seed(i)))
        for e in names:
            feats[e].append(chosen[e][0])
        batch.target_names.append(str(bank.names[ident]))
    batch.targets = [torch.as_tensor(np.stack(feats[e]), device=dev) for e in names]


def _people(batch: FaceBatch) -> dict:
    """(person, seed) -> the batch rows of the largest face of each photo given that person key."""
    out: dict = {}
    for p in batch.photos:
        if p.person is not None:
            out.setdefault((p.person, p.seed), []).append(p.first)
    return out


def _pool_seed(photo, key) -> list[int]:
    """The candidate pool's seed: the photo's seed, mixed with the person key when there is one."""
    if key is None:
        return [photo.seed % 2**63]
    digest = hashlib.sha256(str(photo.person).encode()).digest()
    return [photo.seed % 2**63, int.from_bytes(digest[:8], "little")]
