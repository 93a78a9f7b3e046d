"""The flat user API: cloak, embed, evaluate. Each reuses a cached, warm pipeline."""
from __future__ import annotations

import threading

_lock = threading.Lock()
_cloakers: dict = {}
_pipelines: dict = {}


def _cached(store: dict, key, make):
    with _lock:
        if key not in store:
            store[key] = make()
        return store[key]


def _key(extractors, device):
    from .device import resolve_device

    names = (extractors,) if isinstance(extractors, str) else tuple(extractors)
    return names, str(resolve_device(device))


def cloak(images, mode: str = "mid", extractors=None, device=None, seed: int | None = None, **options):
    """Cloak every face in `images`; returns one CloakResult per image (see Cloaker.cloak).
    extractors: None for the mode's own (dlib; `high`: dlib, SFace and FaceNet jointly)."""
    from .cloaker import Cloaker
    from .optimize.modes import extractors_for

    names, dev = _key(extractors_for(mode, extractors), device)
    cloaker = _cached(_cloakers, (names, dev), lambda: Cloaker(mode=mode, extractors=names, device=dev))
    return cloaker.cloak(images, mode=mode, seed=seed, **options)


def embed(images, extractor: str = "dlib", device=None, flip: bool = False):
    """Detect, align and embed every face: one FaceSet per image (faces largest first).

    flip=True averages each face with its mirror image (a little more accurate for matching)."""
    from .io.images import load_image
    from .pipeline import FacePipeline, as_list

    names, dev = _key(extractor, device)
    pipe = _cached(_pipelines, (names, dev, flip), lambda: FacePipeline(names, device=dev, flip=flip))
    return [pipe.embed(load_image(img))[0] for img in as_list(images)]


def evaluate(original_dir, cloaked_dir, extractors=("dlib",), population: int = 100, seed: int = 0):
    """Estimate your protection from a folder of originals and one of their cloaked copies.

    A simulated tracker (a linear classifier over the target bank's identities plus your cloaked
    photos) is queried with your originals; see fawkes_fast.evaluate.user_check. Returns one
    result per extractor with the protection rates and the feature shift per photo."""
    from .evaluate.user_check import check

    names = (extractors,) if isinstance(extractors, str) else tuple(extractors)
    return check(original_dir, cloaked_dir, names, population, seed)[1]
