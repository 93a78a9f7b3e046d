"""The core's promises: a photo's pixels do not depend on its batch-mates, and a face no cloak can
fit is never reported as cloaked."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

import fawkes_fast
from fawkes_fast.finalize import FaceCloak, finalize_photo
from fawkes_fast.pipeline import Region

from conftest import lfw_image, lfw_people

FAST = dict(mode="low", steps=8)


def test_a_face_no_cloak_fits_is_uncloaked_not_cloaked():
    rgb = np.full((64, 64, 3), 128, np.uint8)
    rgb[::2] = 90  # texture, so SSIM is defined
    delta = torch.full((3, 48, 48), 40.0)
    cloak = FaceCloak(region=Region(x0=8, y0=8, side=48, work=48), box=np.array([10.0, 10, 54, 54]), delta=delta)
    done = finalize_photo(rgb, [cloak], rho=1e-9)
    assert done.uncloaked == [True]
    assert np.array_equal(done.image, rgb)  # its cloak was removed, and says so
    fits = finalize_photo(rgb, [cloak], rho=0.5)
    assert fits.uncloaked == [False] and not np.array_equal(fits.image, rgb)


def test_over_budget_status_when_nothing_fits(lfw_dir):
    name = lfw_people(4)[0][0]
    (res,) = fawkes_fast.cloak(str(lfw_image(name, 1)), seed=3, rho=1e-7, **FAST)
    assert res.status == "over_budget" and res.image is None and "budget" in res.error


def test_same_photo_and_seed_same_pixels_alone_or_batched(lfw_dir):
    names = [n for n, _ in lfw_people(4)[:3]]
    photos = [np.asarray(Image.open(lfw_image(n, 1)).convert("RGB")) for n in names]
    cloaker = fawkes_fast.Cloaker(**{k: v for k, v in FAST.items() if k == "mode"})
    alone = cloaker.cloak(photos[0], seed=11, steps=FAST["steps"], diversity=1.0)[0]
    batched = cloaker.cloak(photos[::-1], seed=11, steps=FAST["steps"], diversity=1.0)[-1]
    assert alone.status == batched.status == "cloaked"
    assert np.array_equal(alone.image, batched.image)
    assert alone.faces[0].target == batched.faces[0].target


def test_grayscale_photo_gets_a_grey_cloak(lfw_dir):
    grey = np.asarray(Image.open(lfw_image(lfw_people(4)[1][0], 1)).convert("L").convert("RGB"))
    (res,) = fawkes_fast.cloak(grey, seed=5, mode="low")
    assert res.status == "cloaked"
    assert not np.array_equal(res.image, grey)
    assert (res.image[..., 0] == res.image[..., 1]).all() and (res.image[..., 1] == res.image[..., 2]).all()
