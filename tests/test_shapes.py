"""Cloak shapes (optimize/shapes.py) and one target per person (targets/assign.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fawkes_fast.batch import FaceBatch, Photo
from fawkes_fast.optimize import engine
from fawkes_fast.optimize.modes import settings_for
from fawkes_fast.optimize.shapes import _RGB_TO_YCC, MaskedLuma, jnd_map, make_shape
from fawkes_fast.targets.assign import assign_targets
from fawkes_fast.targets.bank import load_bank


def _crops(B=2, S=40):
    g = torch.Generator().manual_seed(0)
    x = torch.full((B, 3, S, S), 150.0)
    x[:, :, :, S // 2:] += torch.rand(B, 3, S, S - S // 2, generator=g) * 80 - 40  # right half textured
    return x.clamp(0, 255)


def test_jnd_map_allows_more_in_texture_and_in_the_dark():
    x = _crops()
    j = jnd_map(x)[0, 0]
    S = x.shape[-1]
    assert j[:, S // 2 + 4:].mean() > 2 * j[:, : S // 2 - 4].mean()  # texture masks
    dark = jnd_map(torch.full((1, 3, 16, 16), 20.0))[0, 0, 8, 8]
    mid = jnd_map(torch.full((1, 3, 16, 16), 127.0))[0, 0, 8, 8]
    assert dark > mid > 0  # Chou & Li: the eye forgives more in the dark


@pytest.mark.parametrize("chroma", [0.0, 0.5])
def test_masked_luma_keeps_every_change_within_its_bound(chroma):
    x0 = _crops()
    shape = MaskedLuma(x0, torch.tensor([False, True]), strength=0.7, chroma=chroma)
    t = torch.rand(x0.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    x = shape.image(t, torch.arange(2))
    ycc = torch.einsum("ij,bjhw->bihw", _RGB_TO_YCC, x - x0)
    inner = (x0 > 2) & (x0 < 253)  # away from clipping
    bound = shape.bound + 1e-3
    assert bool(((ycc.abs() <= bound) | ~inner.all(1, keepdim=True)).all())
    assert bool((ycc[0, 0].abs() > 0).any())
    # a grey photo (the second) gets a grey change; chroma 0 gives a grey change to any photo
    grey_faces = [1] if chroma else [0, 1]
    for b in grey_faces:
        d = x[b] - x0[b]
        assert torch.allclose(d[0], d[1], atol=1e-3) and torch.allclose(d[1], d[2], atol=1e-3)
    assert shape.image(torch.zeros_like(t), torch.arange(2)).equal(x0)  # t = 0: no change


def test_block_dct_is_jpegs_transform():
    """Against an independent reference: scipy's orthonormal DCT-II of each 8x8 block (JPEG's FDCT)."""
    from scipy.fft import dctn

    from fawkes_fast.optimize.jpeg_dct import block_dct, jpeg_steps

    x = torch.rand(2, 3, 16, 24, generator=torch.Generator().manual_seed(0)) * 255
    c = block_dct(x)
    want = dctn(x[1, 2, 8:16, 16:24].numpy().astype(np.float64), norm="ortho")
    assert np.abs(c[1, 2, 8:16, 16:24].numpy() - want).max() < 1e-3
    assert torch.allclose(block_dct(c, inverse=True), x, atol=1e-3)
    # libjpeg's tables: quality 50 is Annex K itself, 100 is all ones
    assert jpeg_steps(50)[0, 0, 0] == 16 and jpeg_steps(50)[1, 0, 0] == 17 and bool((jpeg_steps(100) == 1).all())


def test_quantised_dct_moves_each_coefficient_within_jpegs_rounding():
    from fawkes_fast.optimize.jpeg_dct import block_dct, jpeg_steps
    from fawkes_fast.optimize.shapes import QuantisedDct

    x0 = _crops(S=32)
    x0[:, :, :8, :8] = 100.0  # a flat block: it has no AC coefficient, so it may gain none
    shape = QuantisedDct(x0, torch.tensor([False, True]), strength=1.5, chroma=0.5, quality=50)
    t = torch.rand(x0.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    x = shape.image(t, torch.arange(2))
    change = block_dct(torch.einsum("ij,bjhw->bihw", _RGB_TO_YCC, x - x0))
    c0 = block_dct(torch.einsum("ij,bjhw->bihw", _RGB_TO_YCC, x0 - 128))
    q = jpeg_steps(50).repeat(1, 4, 4)[None]
    inner = ((x0 > 2) & (x0 < 253)).all()
    assert inner  # no clipping in this crop: the bound is exact
    bound = 1.5 * torch.minimum(q / 2, c0.abs()) * torch.tensor([1.0, 0.5, 0.5])[None, :, None, None]
    assert bool((change[0].abs() <= bound[0] + 1e-2).all())
    assert float(change[0, 0, :8, :8].flatten()[1:].abs().max()) < 1e-2  # the flat block gains no texture
    assert float(change[0, 0].abs().max()) > 1  # elsewhere it moves
    d = x[1] - x0[1]  # a grey photo gets a grey change
    assert torch.allclose(d[0], d[1], atol=1e-3) and torch.allclose(d[1], d[2], atol=1e-3)
    with pytest.raises(ValueError, match="multiple of 8"):
        QuantisedDct(_crops(S=20), torch.tensor([False, False]), 1.0, 0.0, 80)


def test_unknown_shape_is_refused():
    with pytest.raises(ValueError, match="shape"):
        settings_for("mid", shape="blobs")
    with pytest.raises(ValueError, match="shape"):
        make_shape("blobs", _crops(), torch.tensor([False, False]), 1.0, 0.0)


def test_the_engine_moves_a_jnd_cloak_toward_its_target_within_the_bound():
    from test_engine import _batch, _toy_extractor

    ext = _toy_extractor()
    x0, M, t = _batch("cpu")
    s = settings_for("mid", shape="jnd", strength=0.8, chroma=0.0, rho=0.5, colour_penalty=0.0, steps=30)
    out = engine.optimise([ext], x0, [M], [t], s, graph=False)
    bound = jnd_map(x0) * 0.8
    change = out.best - x0
    assert bool((change.abs() <= bound + 1e-3).all())  # luma only: each channel moves by the luma change
    before = (ext.features(engine.warp_batch(x0, M, 32)) - t).pow(2).sum(1)
    after = (ext.features(engine.warp_batch(out.best, M, 32)) - t).pow(2).sum(1)
    assert bool((after < before).all()), (before, after)


def _batch_of(photos_feats, persons, seeds):
    """A FaceBatch with one face per photo whose clean dlib features are given."""
    photos, owner = [], []
    for i, (f, p, s) in enumerate(zip(photos_feats, persons, seeds)):
        photos.append(Photo(i, np.zeros((4, 4, 3), np.uint8), None, [None], seed=s, first=i, person=p))
        owner.append(i)
    clean = [torch.as_tensor(np.stack(photos_feats))]
    return FaceBatch(photos, [None] * len(photos), [None] * len(photos), [torch.zeros(3, 2, 2)] * len(photos),
                     [torch.zeros(len(photos), 2, 3)], clean, owner=owner)


def test_one_persons_photos_share_one_target_and_others_choose_alone():
    bank = load_bank()
    user = bank.features["dlib"][bank.images_of(5)[:4]].astype(np.float32)  # four photos of one identity
    stranger = bank.features["dlib"][bank.images_of(40)[:1]].astype(np.float32)
    alone = _batch_of(list(user), [None] * 4, [7] * 4)
    assign_targets(alone, "max", 32, ["dlib"])
    together = _batch_of(list(user), ["ann"] * 4, [7] * 4)
    assign_targets(together, "max", 32, ["dlib"])
    assert len(set(together.target_names)) == 1
    # a person's choice depends on that person's photos, never on an unrelated batch-mate
    mixed = _batch_of(list(user) + list(stranger), ["ann"] * 4 + ["bob"], [7] * 5)
    assign_targets(mixed, "max", 32, ["dlib"])
    assert mixed.target_names[:4] == together.target_names
    # without a key, each face chooses as before (from its photo's seed)
    solo = _batch_of([user[2]], [None], [7])
    assign_targets(solo, "max", 32, ["dlib"])
    assert alone.target_names[2] == solo.target_names[0]
