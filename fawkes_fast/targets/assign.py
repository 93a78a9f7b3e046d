"""Give every face of a batch the features it is pushed towards (eq. 3), or none (untargeted).

Each face chooses for itself, from a candidate pool drawn from its photo's seed: photos cloaked
with the same seed share the pool, so one person's photos converge on the same target, and no
face's choice depends on which other photos share the call."""
from __future__ import annotations

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
    for i in range(n):
        user = {e: f[i:i + 1] for e, f in clean.items()}
        pool_rng = np.random.default_rng(batch.photos[batch.owner[i]].seed)
        ident = (select_target(bank, user, target, candidates, pool_rng) if target in ("max", "average")
                 else identity_index(bank, target))
        chosen = target_features(bank, ident, 1, names, np.random.default_rng(batch.face_seed(i)))
        for e in names:
            feats[e].append(chosen[e][0])
        batch.target_names.append(str(bank.names[ident]))
    batch.targets = [torch.as_tensor(np.stack(feats[e]), device=dev) for e in names]
