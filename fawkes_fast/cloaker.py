"""The Cloaker: photos in, cloaked photos and per-face reports out.

    cloaker = Cloaker(mode="mid", extractors=("dlib", "sface"))
    results = cloaker.cloak(["a.jpg", "b.png"], seed=0)

Per call: load -> detect -> one region per face -> pick a target (eq. 3) -> optimise faces in
size buckets (eq. 2) -> paste each perturbation back at full resolution -> check the DSSIM
budget on the exact pixels (and JPEG bytes) to be saved, shrinking a face's cloak if needed.
A bad file gets status "error" and the batch goes on. Models are loaded once and shared:
a Cloaker is safe to use from several threads.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import torch

from .finalize import FaceCloak, finalize_photo
from .optimize.engine import optimise
from .optimize.modes import settings_for
from .pipeline import FacePipeline, as_list, crop_region


@dataclass
class FaceReport:
    box: tuple  # left, top, right, bottom (pixels)
    landmarks: list  # dlib's 5 points
    region: tuple  # left, top, right, bottom (exclusive) of the pixels the cloak may touch
    target: str | None  # target identity, None when untargeted
    dssim: float  # measured on the output pixels (and decoded JPEG when JPEG was asked for)
    steps: int
    # per extractor: {"to_original": before/after, "to_target": before/after}
    distances: dict = field(default_factory=dict)


@dataclass
class CloakResult:
    image: np.ndarray | None  # uint8 RGB, same size as the input; None unless status == "cloaked"
    status: str  # "cloaked", "no_face" or "error"
    error: str | None = None
    faces: list = field(default_factory=list)
    source: str | None = None
    encoded: bytes | None = None  # the checked bytes when an output format was given
    info: object = None  # fawkes_fast.io.images.ImageInfo of the input (metadata for --keep-metadata)


@dataclass
class _Photo:
    index: int
    rgb: np.ndarray
    info: object
    faces: list
    regions: list
    mats: list  # per face, per extractor: (2, 3) chip -> working crop
    first: int = 0  # index of this photo's first face in the call's face list


def _describe(src) -> str:
    return str(src) if isinstance(src, str) or hasattr(src, "__fspath__") else type(src).__name__


class Cloaker:
    """Keeps detector and extractors warm; `cloak` may be called from several threads."""

    def __init__(self, mode: str = "mid", extractors=("dlib",), device=None, detector: str = "auto",
                 batch_size: int = 32, max_work: int = 224, **options):
        self.mode = mode
        self.options = options
        settings_for(mode, **options)  # fail early on a bad mode or option
        self.pipeline = FacePipeline(extractors, device=device, detector=detector, max_work=max_work)
        self.batch_size = batch_size
        # Loading, detection and encoding run concurrently; the tensor work of concurrent calls
        # is taken in turn: torch's intra-op threads of several calls at once thrash the cores
        # (measured: one dlib step went from 70 ms to over 2 s on 2 busy cores).
        self._compute = threading.Lock()

    @property
    def device(self) -> torch.device:
        return self.pipeline.device

    # ------------------------------------------------------------------ public API
    def cloak(self, images, *, target: str = "max", seed: int | None = None, mode: str | None = None,
              format: str | None = None, quality: int = 95, candidates: int = 32, on_step=None,
              **options) -> list[CloakResult]:
        """Cloak every face in `images` (paths, PIL images, uint8 RGB arrays, or a list of these).

        target: "max" (eq. 3), "average" (§8.2), "none" (untargeted) or a bank identity name.
        format/quality: check the budget on the bytes of this encoding (e.g. "jpeg", 90).
        """
        settings = settings_for(mode or self.mode, **{**self.options, **options})
        rng = np.random.default_rng(seed)
        results, photos = self._load_and_detect(as_list(images))
        if photos:
            try:
                with self._compute:
                    self._cloak_photos(photos, results, settings, target, rng, candidates, format, quality, on_step)
            except Exception as e:  # a failure of the whole optimisation still reports per file
                for p in photos:
                    results[p.index] = CloakResult(None, "error", f"{type(e).__name__}: {e}",
                                                   source=results[p.index].source, info=p.info)
        return results

    def sybil(self, candidates, user_images, count: int = 1, seed: int | None = None,
              **options) -> list[CloakResult]:
        """§7.2: cloak candidate photos (e.g. GAN faces) toward the user's clean features and
        return the `count` whose cloaked features land closest to the user, best first."""
        settings = settings_for(self.mode, **{**self.options, **options})
        sets = [self.pipeline.embed(self._load(u)[0]) for u in as_list(user_images)]
        sets = [s for s in sets if len(s[0])]
        if not sets:
            raise ValueError("no face found in the user's images")
        user = {}
        for k, e in enumerate(self.pipeline.extractors):
            c = np.concatenate([s[k].features[:1] for s in sets]).mean(0)  # the largest face of each photo
            user[e.name] = c / np.linalg.norm(c)
        results, photos = self._load_and_detect(as_list(candidates), largest_only=True)
        with self._compute:
            self._cloak_photos(photos, results, settings, user, np.random.default_rng(seed), 0, None, 95, None)
        scored = []
        for r in results:
            if r.status == "cloaked":
                d = np.mean([f.distances[e]["to_target"][1] for f in r.faces for e in f.distances])
                scored.append((d, len(scored), r))
        return [r for _, _, r in sorted(scored, key=lambda t: (t[0], t[1]))[:count]]

    # ------------------------------------------------------------------ steps
    @staticmethod
    def _load(src):
        from .io.images import load_image_with_meta

        return load_image_with_meta(src)

    def _load_and_detect(self, sources, largest_only=False):
        results, photos = [], []
        for i, src in enumerate(sources):
            name = _describe(src)
            try:
                rgb, info = self._load(src)
                faces = self.pipeline.detect(rgb)
                if largest_only:
                    faces = faces[:1]
                if not faces:
                    results.append(CloakResult(None, "no_face", "no face found", source=name, info=info))
                    continue
                regions, mats = self.pipeline.regions(faces)
                photos.append(_Photo(i, rgb, info, faces, regions, mats))
                results.append(CloakResult(None, "pending", source=name, info=info))
            except Exception as e:  # noqa: BLE001 - one bad file never sinks the batch
                results.append(CloakResult(None, "error", f"{type(e).__name__}: {e}", source=name))
        return results, photos

    def _clean_features(self, crops, mats):
        """Per extractor, (n, D) clean features of every face (no grad)."""
        exts = self.pipeline.extractors
        with torch.no_grad():
            return [torch.cat([e.features(self.pipeline.chips(crops[i:i + self.batch_size],
                                                                mats[k][i:i + self.batch_size], e))
                               for i in range(0, len(crops), self.batch_size)]) for k, e in enumerate(exts)]

    def _cloak_photos(self, photos, results, settings, target, rng, candidates, fmt, quality, on_step):
        from .targets.bank import load_bank
        from .targets.select import identity_index, select_target, target_features

        dev, exts = self.device, self.pipeline.extractors
        faces = [(p, j) for p in photos for j in range(len(p.faces))]
        n = 0
        for p in photos:
            p.first, n = n, n + len(p.faces)
        buckets: dict[int, list[int]] = {}
        for i, (p, j) in enumerate(faces):
            buckets.setdefault(p.regions[j].work, []).append(i)
        crops = [crop_region(p.rgb, p.regions[j], dev) for p, j in faces]
        mats = [torch.as_tensor(np.stack([p.mats[j][k] for p, j in faces]), dtype=torch.float32, device=dev)
                for k in range(len(exts))]

        # clean features, computed per bucket (crops of one bucket share a size)
        clean = [torch.empty(len(faces), e.dim, device=dev) for e in exts]
        for idx in buckets.values():
            x = torch.stack([crops[i] for i in idx])
            for k, f in enumerate(self._clean_features(x, [mm[idx] for mm in mats])):
                clean[k][idx] = f

        untargeted, target_name = target == "none", None
        if isinstance(target, dict):  # Sybil: explicit target features per extractor
            tfeat = [torch.as_tensor(target[e.name], device=dev).float().expand(len(faces), -1) for e in exts]
        elif untargeted:
            tfeat = clean
        else:
            bank = load_bank()
            user = {e.name: clean[k].cpu().numpy() for k, e in enumerate(exts)}
            bank.require(user)
            ident = (select_target(bank, user, target, candidates, rng) if target in ("max", "average")
                     else identity_index(bank, target))
            target_name = str(bank.names[ident])
            t = target_features(bank, ident, len(faces), user, rng)
            tfeat = [torch.as_tensor(t[e.name], device=dev) for e in exts]

        best = list(crops)
        steps = [0] * len(faces)
        for idx in buckets.values():
            for s in range(0, len(idx), self.batch_size):
                chunk = idx[s:s + self.batch_size]
                out = optimise(exts, self.pipeline.chips, torch.stack([crops[i] for i in chunk]),
                               [mm[chunk] for mm in mats], [t[chunk] for t in tfeat], settings,
                               untargeted=untargeted, on_step=on_step, seed=int(rng.integers(2**31)),
                               clean=[c[chunk] for c in clean])
                for r, i in enumerate(chunk):
                    best[i], steps[i] = out.best[r], int(out.steps[r])

        for p in photos:
            idx = range(p.first, p.first + len(p.faces))
            cloaks = [FaceCloak(region=p.regions[j], delta=(best[i] - crops[i]))
                      for j, i in enumerate(idx)]
            res = results[p.index]
            try:
                image, encoded, dssims = finalize_photo(p.rgb, cloaks, settings.rho, fmt, quality)
            except Exception as e:  # noqa: BLE001
                results[p.index] = CloakResult(None, "error", f"{type(e).__name__}: {e}", source=res.source, info=p.info)
                continue
            reports = self._reports(p, image, idx, dssims, steps, clean, tfeat, target_name, untargeted)
            results[p.index] = CloakResult(image, "cloaked", None, reports, res.source, encoded, p.info)

    def _reports(self, p, image, idx, dssims, steps, clean, tfeat, target_name, untargeted):
        """Feature distances measured on the output pixels, per face and extractor."""
        exts = self.pipeline.extractors
        after = [torch.as_tensor(f, device=self.device) for f in self.pipeline.features(image, p.faces)]
        reports = []
        h, w = image.shape[:2]
        for j, i in enumerate(idx):
            dist = {}
            for k, e in enumerate(exts):
                c, a, t = clean[k][i], after[k][j], tfeat[k][i]
                dist[e.name] = {"to_original": (0.0, float((a - c).norm()))}
                if not untargeted:
                    dist[e.name]["to_target"] = (float((c - t).norm()), float((a - t).norm()))
            f = p.faces[j]
            reports.append(FaceReport(box=tuple(float(v) for v in f.box), landmarks=np.asarray(f.landmarks).tolist(),
                                      region=p.regions[j].clipped(h, w), target=target_name,
                                      dssim=float(dssims[j]), steps=steps[i], distances=dist))
        return reports
