"""Face regions, working resolution and the extractor wrapper (no photos needed)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fawkes_fast.extractors.base import Extractor
from fawkes_fast.pipeline import MAX_CHIP_SCALE, REGION_MULTIPLE, Region, as_list, crop_region, face_region


def _chip(scale, x0, y0):
    return np.array([[scale, 0, x0], [0, scale, y0]], np.float64)


def test_region_covers_every_chip_and_never_aliases():
    small, big = _chip(1.0, 50, 60), _chip(0.9, 70, 80)
    r = face_region([small, big], [150, 112], max_work=224)
    assert r.side % REGION_MULTIPLE == 0 and r.work == r.side  # native resolution for a small face
    assert r.x0 <= 50 and r.y0 <= 60 and r.x0 + r.side >= 50 + 149 and r.y0 + r.side >= 60 + 149
    huge = face_region([_chip(20.0, 0, 0)], [150], max_work=224)  # a 3000 px face
    assert huge.work <= 224 and huge.work % REGION_MULTIPLE == 0
    assert 20.0 * huge.work / huge.side <= MAX_CHIP_SCALE  # chip pixels per working pixel


def test_crop_pads_outside_the_photo_with_zeros():
    img = np.full((40, 40, 3), 200, np.uint8)
    crop = crop_region(img, Region(x0=-8, y0=-8, side=32, work=32), "cpu")
    assert crop.shape == (3, 32, 32)
    assert crop[:, :8].abs().sum() == 0 and crop[:, 8:, 8:].min() == 200


def test_flip_averaging_is_a_no_op_on_symmetric_chips():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(8))
    ext = Extractor("toy", net, "dlib", 16, 8)
    half = torch.rand(2, 3, 16, 8)
    sym = torch.cat([half, half.flip(-1)], -1)
    assert torch.allclose(ext.features(sym, flip=True), ext.features(sym), atol=1e-6)
    assert torch.allclose(ext.features(sym).norm(dim=1), torch.ones(2))


@pytest.mark.parametrize("one", ["a.jpg", b"bytes", np.zeros((2, 2, 3), np.uint8)])
def test_as_list_wraps_single_images(one):
    assert len(as_list(one)) == 1 and len(as_list([one, one])) == 2
