"""The target bank: features of public identities that cloaks can be pointed at.

Shipped as `fawkes_fast.models/target_bank.npz`, rebuilt from LFW by
`models/build_target_bank.py`. It holds numbers only (L2-normalised features per built-in
extractor and per identity), never images. The evaluation reuses it as a tracker's
population of other people.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass

import numpy as np

from ..model_files import shipped_model

BANK_FILE = "target_bank.npz"
_lock = threading.Lock()
_cached = None


@dataclass
class TargetBank:
    names: np.ndarray  # (K,) identity names
    owner: np.ndarray  # (N,) identity index of each stored image
    features: dict[str, np.ndarray]  # extractor -> (N, D) float32, L2-normalised
    thresholds: dict[str, float]  # extractor -> same-person distance on normalised features

    @property
    def extractors(self) -> tuple[str, ...]:
        return tuple(self.features)

    def centroids(self, extractor: str) -> np.ndarray:
        """(K, D) normalised mean feature of each identity."""
        f = self.features[extractor]
        sums = np.zeros((len(self.names), f.shape[1]), np.float64)
        np.add.at(sums, self.owner, f)
        return (sums / np.linalg.norm(sums, axis=1, keepdims=True)).astype(np.float32)

    def images_of(self, identity: int) -> np.ndarray:
        return np.flatnonzero(self.owner == identity)

    def require(self, extractors) -> None:
        missing = [e for e in extractors if e not in self.features]
        if missing:
            raise ValueError(
                f"the target bank has no features for {', '.join(missing)}; targeted cloaks need a "
                f"built-in extractor ({', '.join(self.extractors)}) or target='none'")

    def save(self, path, meta: dict | None = None) -> None:
        arrays = {"names": self.names.astype(str), "owner": self.owner.astype(np.int32),
                  "meta": np.array(json.dumps({"thresholds": self.thresholds, **(meta or {})}))}
        arrays.update({f"feat_{k}": v.astype(np.float16) for k, v in self.features.items()})
        np.savez_compressed(path, **arrays)

    @classmethod
    def read(cls, path) -> "TargetBank":
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            feats = {k[5:]: z[k].astype(np.float32) for k in z.files if k.startswith("feat_")}
            feats = {k: v / np.linalg.norm(v, axis=1, keepdims=True) for k, v in feats.items()}
            return cls(names=z["names"], owner=z["owner"], features=feats,
                       thresholds={k: float(v) for k, v in meta["thresholds"].items()})


def load_bank() -> TargetBank:
    """The shipped bank, read once per process."""
    global _cached
    with _lock:
        if _cached is None:
            _cached = TargetBank.read(shipped_model(BANK_FILE))
        return _cached
