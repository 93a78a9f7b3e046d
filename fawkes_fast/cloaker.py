"""The Cloaker: photos in, cloaked photos and per-face reports out.

    cloaker = Cloaker(mode="mid", extractors=("dlib", "sface"))
    results = cloaker.cloak(["a.jpg", "b.png"], seed=0)

Per call: load -> detect -> one region per face -> pick a target (eq. 3) -> optimise faces in
size buckets, on CUDA padded to one size (eq. 2) -> paste each perturbation back at full
resolution -> check the DSSIM budget on the exact pixels (and JPEG bytes) to be saved, shrinking a
face's cloak if needed. A bad file gets status "error" and the batch goes on. Models are loaded
once and shared: a Cloaker is safe to use from several threads.
"""
from __future__ import annotations

import threading

import numpy as np
import torch

from .batch import Photo
from .evaluate.judges import judge_result, require as require_judges
from .extractors import check as check_extractor
from .finalize import FaceCloak, finalize_photo
from .io.images import load_image_with_meta
from .optimize.engine import optimise
from .optimize.ghost import check_ghost
from .optimize.modes import extractors_for, settings_for
from .pipeline import FacePipeline, as_list
from .reports import CloakResult, face_reports
from .targets.assign import assign_targets
from .targets.bank import load_bank
from .targets.select import identity_index


def _source_name(src) -> str:
    """How a report names an input: its path, or the kind of object it was."""
    return str(src) if isinstance(src, str) or hasattr(src, "__fspath__") else type(src).__name__


class Cloaker:
    """Keeps detector and extractors warm; `cloak` may be called from several threads.

    Arguments that would fail every photo raise here (ValueError; FileNotFoundError for a model file's
    missing spec): an unknown extractor, a bad mode or option, ghost copies with no model to thin.
    batch_size: with batch_across_photos=True, the faces of up to batch_size consecutive photos of a
    `cloak` call are optimised together (faster; pixels then depend on the batching). By default each
    photo's faces are optimised on their own, whatever batch_size: it changes nothing."""

    def __init__(self, mode: str = "mid", extractors=None, device=None, detector: str = "auto",
                 batch_size: int = 32, max_work: int = 224, batch_across_photos: bool = False, **options):
        self.mode = mode
        self.options = options
        settings = settings_for(mode, **options)  # fail early on a bad mode or option
        # None: the mode's own (dlib; `high` cloaks with dlib, SFace and FaceNet jointly)
        self.pipeline = FacePipeline(extractors_for(mode, extractors), device=device, detector=detector,
                                     max_work=max_work)
        # names known, model files and their specs there: found now, not once per photo
        self.extractor_names = tuple(check_extractor(e) for e in self.pipeline.extractor_names)
        check_ghost(settings.ghost, self.pipeline.extractor_names)
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1 photo, not {batch_size}")
        self.batch_size = int(batch_size)  # photos per optimisation, with batch_across_photos only
        # False: a photo's faces are optimised apart from other photos', so its pixels never depend
        # on its neighbours (batched kernels are not bit-identical across batch sizes). True: faces
        # of up to batch_size photos share a batch: faster, reproducible only for the same batching.
        self.batch_across_photos = batch_across_photos
        # On CUDA, faces of different sizes share one batch (and one captured graph), zero-padded to
        # the largest: a GPU step costs about the same for more faces. On a CPU, where cost follows
        # the pixels, each working size keeps its own batch.
        self.mixed_sizes = self.device.type == "cuda"
        # Loading, detection and encoding run concurrently; the tensor work of concurrent calls
        # is taken in turn: torch's intra-op threads of several calls at once thrash the cores
        # (measured: one dlib step went from 70 ms to over 2 s on 2 busy cores).
        self._compute = threading.Lock()

    @property
    def device(self) -> torch.device:
        return self.pipeline.device

    def load_models(self) -> None:
        """Load the extractors now rather than for the first photo: a model file that its spec does not
        describe raises ValueError here, a missing model package ModelMissingError."""
        self.pipeline.extractors  # noqa: B018 - the property loads them

    # ------------------------------------------------------------------ public API
    def cloak(self, images, *, target: str = "max", seed=None, mode: str | None = None,
              format: str | None = None, quality: int = 95, candidates: int = 32, on_step=None,
              person=None, judge: bool = False, **options) -> list[CloakResult]:
        """Cloak every face in `images` (paths, PIL images, uint8 RGB arrays, or a list of these).

        target: "max" (eq. 3), "average" (§8.2), "none" (untargeted) or a bank identity name.
        seed: an int, or one per image. A photo's pixels depend only on the photo, its seed and
        the settings, never on the other photos of the call (None: a fresh seed per call).
        format/quality: check the budget on the bytes of this encoding (e.g. "jpeg", 90).
        A target or option that would fail every photo raises ValueError before any photo is read.
        person: who is in the photos (a str for all, or one per image, None for unknown): the
        largest faces of one person's photos in the call share one target, as eq. 3 intends.
        judge: measure how visible each cloak is (butteraugli and SSIMULACRA2 over the face of the saved
        file, next to the photo's JPEG re-saves) into each FaceReport's `visibility`; needs the judges.
        """
        if judge:
            require_judges()
        settings = settings_for(mode or self.mode, **{**self.options, **options})
        check_ghost(settings.ghost, self.pipeline.extractor_names)
        check_target(target, self.extractor_names)
        sources = as_list(images)
        seeds = _seeds(seed, len(sources))
        results, photos = self._load_and_detect(sources, seeds, persons=_per_image(person, len(sources), "person"))
        if photos:
            try:
                with self._compute:
                    self._cloak_photos(photos, results, settings, target, candidates, format, quality, on_step)
            except Exception as e:  # a failure of the whole optimisation still reports per file
                for p in photos:
                    results[p.index] = CloakResult(None, "error", f"{type(e).__name__}: {e}",
                                                   source=results[p.index].source, info=p.info)
        if judge:
            for p in photos:
                judge_result(results[p.index], p.rgb)
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
        sources = as_list(candidates)
        results, photos = self._load_and_detect(sources, _seeds(seed, len(sources)), largest_only=True)
        with self._compute:
            self._cloak_photos(photos, results, settings, user, 0, None, 95, None)
        scored = []
        for r in results:
            if r.status == "cloaked":
                d = np.mean([f.distances[e]["to_target"][1] for f in r.faces for e in f.distances])
                scored.append((d, len(scored), r))
        return [r for _, _, r in sorted(scored, key=lambda t: (t[0], t[1]))[:count]]

    # ------------------------------------------------------------------ steps
    @staticmethod
    def _load(src):
        return load_image_with_meta(src)

    def _load_and_detect(self, sources, seeds, largest_only=False, persons=None):
        results, photos = [], []
        persons = persons or [None] * len(sources)
        for i, (src, seed, person) in enumerate(zip(sources, seeds, persons)):
            name = _source_name(src)
            try:
                rgb, info = self._load(src)
                faces = self.pipeline.detect(rgb)
                if largest_only:
                    faces = faces[:1]
                if not faces:
                    results.append(CloakResult(None, "no_face", "no face found", source=name, info=info))
                    continue
                photos.append(Photo(i, rgb, info, faces, seed=seed, person=person))
                results.append(CloakResult(None, "pending", source=name, info=info))
            except Exception as e:  # noqa: BLE001 - one bad file never sinks the batch
                results.append(CloakResult(None, "error", f"{type(e).__name__}: {e}", source=name))
        return results, photos

    def _cloak_photos(self, photos, results, settings, target, candidates, fmt, quality, on_step):
        batch = self.pipeline.build_batch(photos)
        assign_targets(batch, target, candidates, [e.name for e in self.pipeline.extractors])
        self._optimise(batch, settings, on_step)
        for photo in batch.photos:
            results[photo.index] = self._finish(batch, photo, settings, fmt, quality, results[photo.index].source)

    def _optimise(self, batch, settings, on_step):
        batch.cloaked, batch.steps = list(batch.crops), [0] * len(batch)
        for idx in batch.groups(self.batch_size, across_photos=self.batch_across_photos, mixed_sizes=self.mixed_sizes):
            x0, mats, targets, clean, sizes = batch.select(idx)
            out = optimise(self.pipeline.extractors, x0, mats, targets, settings, untargeted=batch.untargeted,
                           on_step=on_step, seeds=[batch.face_seed(i) for i in idx], clean=clean,
                           boxes=[batch.boxes[i] for i in idx],
                           gray=[batch.photos[batch.owner[i]].grayscale for i in idx], sizes=sizes)
            for r, i in enumerate(idx):
                n = batch.crops[i].shape[-1]
                batch.cloaked[i], batch.steps[i] = out.best[r, :, :n, :n], int(out.steps[r])

    def _finish(self, batch, photo, settings, fmt, quality, source) -> CloakResult:
        """Paste, check the budget on what is saved, and report; a face with no cloak that fits
        makes the photo "over_budget" (nothing to save), never a false "cloaked"."""
        cloaks = [FaceCloak(region=batch.regions[i], box=np.asarray(photo.faces[j].box),
                            delta=batch.cloaked[i] - batch.crops[i]) for j, i in enumerate(photo.face_range)]
        try:
            done = finalize_photo(photo.rgb, cloaks, settings.rho, fmt, quality, settings.safety)
            reports = face_reports(self.pipeline, batch, photo, done.image, done.measures)
        except Exception as e:  # noqa: BLE001 - this photo fails, the others go on
            return CloakResult(None, "error", f"{type(e).__name__}: {e}", source=source, info=photo.info)
        if any(done.uncloaked):
            faces = [j for j, u in enumerate(done.uncloaked) if u]
            return CloakResult(None, "over_budget", f"no cloak of face(s) {faces} fits the DSSIM budget "
                               f"{settings.rho} on the saved file", reports, source, None, photo.info)
        return CloakResult(done.image, "cloaked", None, reports, source, done.encoded, photo.info)


def check_target(target, extractor_names) -> None:
    """ValueError for a target no photo could be cloaked toward: an identity the target bank does not
    hold, or a targeted cloak with an extractor it has no features for (use target="none")."""
    if isinstance(target, dict) or target == "none":  # a dict: explicit features (Sybil images)
        return
    bank = load_bank()
    bank.require(extractor_names)
    if target not in ("max", "average"):
        identity_index(bank, target)


def _per_image(value, count: int, what: str) -> list:
    """One value per image: the same scalar (or None) for all, or the caller's list."""
    if value is None or isinstance(value, str):
        return [value] * count
    values = list(value)
    if len(values) != count:
        raise ValueError(f"{what}: {len(values)} values given for {count} images")
    return [None if v is None else str(v) for v in values]


def _seeds(seed, count: int) -> list[int]:
    """One seed per image: the same int for all, the caller's list, or a fresh one for the call."""
    if seed is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0])
    if isinstance(seed, (int, np.integer)):
        return [int(seed)] * count
    seeds = [int(s) for s in seed]
    if len(seeds) != count:
        raise ValueError(f"seed: {len(seeds)} seeds given for {count} images")
    return seeds
