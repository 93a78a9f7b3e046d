"""JPEG steganography's cost maps, as bounds for the "uerd" and "juniward" cloak shapes (issue #22).

Steganography hides a message in a JPEG's DCT coefficients where a detector least notices the change;
its cost maps say, per coefficient, what a change of one quantisation step costs. A cloak wants the
same thing from the eye, so these shapes let each coefficient move in inverse proportion to its cost
(shapes.QuantisedDct). Both are computed once per crop, never per step.

  * UERD (Guo et al., IEEE TIFS 2015): cost = the mode's step / the block's energy (the sum of its AC
    coefficients' magnitudes, plus a quarter of its 8 neighbours'): busy blocks are cheap, smooth
    ones dear, and in value units every frequency of a block costs the same.
  * J-UNIWARD (Holub et al., EURASIP JIS 2014): cost = the change's effect on the three Daubechies-8
    detail sub-bands, relative to the cover's own sub-band magnitude there, summed over the 23 x 23
    window a block's change reaches.

tests/test_stego_costs.py checks both against `conseal` (PyPI), an independent implementation.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .jpeg_dct import block_dct

# Daubechies-8 decomposition high-pass filter (16 taps); the low-pass is its quadrature mirror
_DB8_HIGH = (-0.0544158422, 0.3128715909, -0.6756307363, 0.5853546837, 0.0158291053, -0.2840155430,
             -0.0004724846, 0.1287474266, 0.0173693010, -0.0440882539, -0.0139810279, 0.0087460940,
             0.0048703530, -0.0003917404, -0.0006754494, -0.0001174768)
_SIGMA = 2.0 ** -6  # J-UNIWARD's stabilising constant: how much the cover's own smoothness matters


@functools.lru_cache(maxsize=4)
def _detail_filters() -> torch.Tensor:
    """(3, 1, 16, 16) the LH, HL and HH filters of a one-level 2-D Daubechies-8 decomposition, float64."""
    high = torch.tensor(_DB8_HIGH, dtype=torch.float64)
    low = high.flip(0) * (-1.0) ** torch.arange(16, dtype=torch.float64)
    return torch.stack([low[:, None] * high[None], high[:, None] * low[None], high[:, None] * high[None]])[:, None]


def _symmetric_pad(x: torch.Tensor, n: int) -> torch.Tensor:
    """Pad the last two dims by n, mirrored with the edge repeated (d c b a | a b c d | d c b a)."""
    for dim in (-2, -1):
        x = torch.cat([x.narrow(dim, 0, n).flip(dim), x, x.narrow(dim, x.shape[dim] - n, n).flip(dim)], dim)
    return x


def _block_energy(c: torch.Tensor) -> torch.Tensor:
    """(B, 1, S/8, S/8) sum of |AC coefficients| per 8x8 block of (B, 1, S, S) block-DCT values."""
    B, _, S, _ = c.shape
    blocks = c.abs().reshape(B, 1, S // 8, 8, S // 8, 8)
    return blocks.sum((3, 5)) - blocks[:, :, :, 0, :, 0]


def uerd_cost(luma: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """(B, 1, S, S) UERD cost of a one-step change of each block-DCT coefficient of (B, 1, S, S) pixels
    (any offset; only AC terms count), q the (8, 8) quantisation steps; inf where a block and its
    neighbours are flat."""
    c = block_dct(luma.double())
    energy = _block_energy(c)
    ring = torch.ones(1, 1, 3, 3, dtype=energy.dtype, device=energy.device)
    ring[0, 0, 1, 1] = 0
    total = energy + 0.25 * F.conv2d(_symmetric_pad(energy, 1), ring)
    mode = q.to(energy).clone()
    mode[0, 0] = 0.5 * (q[0, 1] + q[1, 0])  # the DC term is priced as its two lowest neighbours
    n = luma.shape[-1] // 8
    cost = mode.repeat(n, n)[None, None] / total.repeat_interleave(8, -2).repeat_interleave(8, -1)
    return cost.to(luma.dtype)


def _unit_changes(q: torch.Tensor) -> torch.Tensor:
    """(64, 1, 8, 8) the pixels a one-step change of each DCT coefficient adds, row-major (i, l)."""
    eye = torch.eye(64, dtype=torch.float64).reshape(64, 1, 8, 8)
    return block_dct(eye, inverse=True) * q.double().reshape(64, 1, 1, 1)


def juniward_cost(luma: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """(B, 1, S, S) J-UNIWARD cost of a one-step change of each block-DCT coefficient of (B, 1, S, S)
    pixels in [0, 255], q the (8, 8) quantisation steps."""
    B, _, S, _ = luma.shape
    f = _detail_filters().to(luma.device)  # (3, 1, 16, 16)
    # the cover's sub-bands, mirror-padded: band[n] = sum_k x[n - 16 + k] f[k]
    bands = F.conv2d(_symmetric_pad(luma.double(), 16), f)  # (B, 3, S + 17, S + 17)
    weight = 1.0 / (bands.abs() + _SIGMA)
    # each unit change's reach in each sub-band: a full correlation, 8 + 16 - 1 = 23 wide
    reach = F.conv2d(F.pad(_unit_changes(q).to(luma.device), (15, 15, 15, 15)), f).abs()  # (64, 3, 23, 23)
    kernels = reach.transpose(0, 1).reshape(3 * 64, 1, 23, 23)
    # block b's change reaches bands[8b + 1 : 8b + 24] (0-based, in the padded frame)
    cost = F.conv2d(weight[..., 1:, 1:], kernels, stride=8, groups=3)  # (B, 3 * 64, S/8, S/8)
    n = S // 8
    cost = cost[..., :n, :n].reshape(B, 3, 8, 8, n, n).sum(1)  # (B, i, l, h, w)
    return cost.permute(0, 3, 1, 4, 2).reshape(B, 1, S, S).to(luma.dtype)


COSTS = {"uerd": uerd_cost, "juniward": juniward_cost}


def bound_from_cost(cost: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """(B, 1, S, S) the change each coefficient may take, in DCT value units: q/2 (JPEG's rounding) where
    it costs no more than the crop's median, less in proportion where it costs more, 0 where it is
    infinitely dear."""
    B, _, S, _ = cost.shape
    median = cost.reshape(B, -1).nan_to_num(posinf=float("nan")).nanmedian(1).values.reshape(B, 1, 1, 1)
    share = (median / cost).clamp(max=1.0).nan_to_num(0.0)
    return q.to(cost).repeat(S // 8, S // 8)[None, None] / 2 * share
