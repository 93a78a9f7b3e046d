"""Steganography's cost maps (optimize/stego_costs.py) and the cloak shapes they bound ("uerd", "juniward").

Against `conseal` (PyPI), an independent implementation, where it is installed; the properties that
make them worth trying (busy places cheap, smooth places dear) hold without it.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fawkes_fast.optimize.jpeg_dct import block_dct, jpeg_steps
from fawkes_fast.optimize.shapes import _RGB_TO_YCC, QuantisedDct, make_shape
from fawkes_fast.optimize.stego_costs import bound_from_cost, juniward_cost, uerd_cost

Q50 = jpeg_steps(50)[0]


def _luma(S=48):
    """A smooth left half and a textured right half, pixels in [0, 255], float64, (1, 1, S, S)."""
    g = np.random.default_rng(0)
    x = np.full((S, S), 120.0) + np.linspace(0, 20, S)[None]
    x[:, S // 2:] += g.normal(0, 25, (S, S - S // 2))
    return torch.tensor(x.clip(0, 255))[None, None]


def _as_blocks(cost: torch.Tensor) -> np.ndarray:
    """(S, S) block-DCT layout -> conseal's (S/8, S/8, 8, 8)."""
    S = cost.shape[-1]
    return cost[0, 0].numpy().reshape(S // 8, 8, S // 8, 8).transpose(0, 2, 1, 3)


def test_juniward_matches_conseal():
    juniward = pytest.importorskip("conseal.juniward._costmap", reason="conseal is not installed (pip install conseal)")
    x = _luma()
    ours = _as_blocks(juniward_cost(x, Q50))
    # conseal's fixed alignment: a block's change reaches exactly the 23 x 23 window it touches
    ref = juniward.compute_cost(x[0, 0].numpy(), Q50.double().numpy(),
                                implementation=juniward.Implementation.JUNIWARD_FIX_OFF_BY_ONE)
    np.testing.assert_allclose(ours, ref, rtol=1e-9)


def test_uerd_matches_conseal_on_a_jpegs_coefficients():
    uerd = pytest.importorskip("conseal.uerd._costmap", reason="conseal is not installed (pip install conseal)")
    x = _luma() - 128
    q = Q50.double().repeat(6, 6)[None, None]
    quantised = torch.round(block_dct(x) / q)  # a JPEG's coefficients, so both read the same values
    pixels = block_dct(quantised * q, inverse=True) + 128
    ours = _as_blocks(uerd_cost(pixels, Q50))
    blocks = quantised[0, 0].numpy().reshape(6, 8, 6, 8).transpose(0, 2, 1, 3)
    np.testing.assert_allclose(ours, uerd.compute_cost(blocks, Q50.double().numpy()), rtol=1e-9)


@pytest.mark.parametrize("cost", [uerd_cost, juniward_cost])
def test_smooth_places_cost_more_than_textured_ones(cost):
    c = cost(_luma(), Q50)[0, 0]
    assert float(c[:, :16].median()) > 3 * float(c[:, 32:].median())


def test_uerd_prices_every_ac_frequency_of_a_block_alike_per_unit_of_value():
    c = uerd_cost(_luma(), Q50)[0, 0, 8:16, 32:40] / Q50.double()
    ac = c.flatten()[1:]
    assert torch.allclose(ac, ac[0].expand_as(ac))


def test_bound_is_jpegs_rounding_where_cheap_less_where_dear_none_where_infinite():
    cost = torch.tensor([1.0, 2.0, 4.0, float("inf")]).repeat(16)[None, None].reshape(1, 1, 8, 8)
    q = torch.full((8, 8), 10.0)
    b = bound_from_cost(cost, q)[0, 0].flatten()[:4]
    assert torch.allclose(b, torch.tensor([5.0, 5.0, 2.5, 0.0]))  # median cost 2: q/2 up to it


@pytest.mark.parametrize("name", ["uerd", "juniward"])
def test_cost_shapes_keep_each_coefficient_within_its_bound(name):
    g = torch.Generator().manual_seed(0)
    x0 = (torch.full((2, 3, 32, 32), 140.0) + torch.rand(2, 3, 32, 32, generator=g) * 60 - 30).clamp(0, 255)
    x0[:, :, :, :8] = 140.0  # a flat strip
    shape = make_shape(name, x0, torch.tensor([False, False]), 1.5, 0.0, quality=50)
    assert isinstance(shape, QuantisedDct)
    x = shape.image(torch.rand(x0.shape, generator=g) * 2 - 1, torch.arange(2))
    change = block_dct(torch.einsum("ij,bjhw->bihw", _RGB_TO_YCC, x - x0))
    q = jpeg_steps(50)[0].repeat(4, 4)
    assert bool((change[:, 0].abs() <= 1.5 * q / 2 + 1e-2).all())  # never beyond 1.5 x JPEG's rounding
    assert float(change[:, 1:].abs().max()) < 1e-2  # chroma 0: luma only
    assert float(change[:, 0, :, 8:].abs().max()) > 1  # the textured part moves
    flat = change[:, 0, :, :8].abs().mean()
    assert float(flat) < 0.5 * float(change[:, 0, :, 8:].abs().mean())  # the flat strip much less
