"""What the optimiser moves: the shape of a cloak (issue #22).

Every shape is optimised in tanh space (the paper's change of variables) by the fused tanh-Adam op;
they differ in what the tanh-space parameter means.

  * `FreePixels` ("dssim", the paper's): the parameter is the crop itself, in [0, 255]; how far it may
    move is left to the DSSIM hinge and the colour hinge of the loss.
  * `MaskedLuma` ("jnd"): the parameter is t in [-1, 1], the change in YCbCr as a share of a per-pixel
    bound: x = x0 + YCbCr->RGB(strength * J * (t_Y, chroma * t_Cb, chroma * t_Cr)). J is a
    just-noticeable-difference map of the clean crop (Chou & Li's luminance adaptation plus texture
    masking, combined as in Yang et al.'s NAMM): the eye forgives changes in dark or textured places
    (hair, brows, edges) and sees them on smooth skin, so the cloak goes where it is least seen. The
    bound holds by construction; no hinge is needed.
  * `QuantisedDct` ("dct", `mid`): t in [-1, 1] per 8x8 block DCT coefficient of the YCbCr crop, each
    moving by at most strength * min(q/2, |c|): JPEG's rounding at a quality, chosen adversarially.
    Bounded by construction too.
  * "uerd" and "juniward": the same change of the DCT coefficients, each bounded instead by JPEG
    steganography's cost map (stego_costs.py): q/2 where a change costs no more than the crop's median,
    less where it costs more. Measured on the frontier; not a mode.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .jpeg_dct import block_dct, jpeg_steps
from .stego_costs import COSTS, bound_from_cost
from .modes import SHAPES

# RGB -> YCbCr (BT.601, full range) and back; only differences are converted, so no offsets
_RGB_TO_YCC = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
_YCC_TO_RGB = torch.linalg.inv(_RGB_TO_YCC)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, 1, H, W), edges replicated."""
    r = max(1, int(round(3 * sigma)))
    k = torch.exp(-torch.arange(-r, r + 1, dtype=x.dtype, device=x.device) ** 2 / (2 * sigma * sigma))
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))


def jnd_map(x0: torch.Tensor, sigma: float = 1.5) -> torch.Tensor:
    """(B, 1, H, W) visibility threshold of a luma change, in grey levels, for (B, 3, H, W) crops in
    [0, 255]: max-like sum of luminance adaptation (background luminance) and texture masking (local
    contrast), NAMM's 0.3 overlap term removed."""
    y = torch.einsum("c,bchw->bhw", _RGB_TO_YCC[0].to(x0), x0)[:, None]
    mean = _blur(y, sigma)
    contrast = (_blur(y * y, sigma) - mean * mean).clamp_min(0).sqrt()
    dark = 17 * (1 - (mean.clamp_min(0) / 127).sqrt()) + 3
    bright = 3 / 128 * (mean - 127) + 3
    adapt = torch.where(mean <= 127, dark, bright)
    texture = 0.6 * contrast
    return adapt + texture - 0.3 * torch.minimum(adapt, texture)


def _channel_share(x0: torch.Tensor, grey: torch.Tensor, chroma: float) -> torch.Tensor:
    """(B, 3, 1, 1) share of the bound per YCbCr channel: luma 1, chroma `chroma`; a grey photo gets a
    grey change (luma alone)."""
    share = torch.tensor([1.0, chroma, chroma], device=x0.device, dtype=x0.dtype)[None, :, None, None]
    luma = torch.tensor([1.0, 0.0, 0.0], device=x0.device, dtype=x0.dtype)[None, :, None, None]
    return torch.where(grey[:, None, None, None], share * luma, share)


class FreePixels:
    """The crop's pixels themselves (today's and the paper's shape)."""

    lo, hi = 0.0, 255.0
    bounded = False  # how far it moves is the DSSIM hinge's business, in every step

    def __init__(self, x0: torch.Tensor, grey: torch.Tensor):
        self.x0, self.grey = x0, grey

    def origin(self) -> torch.Tensor:
        return self.x0

    def start(self, noise: torch.Tensor | None) -> torch.Tensor:
        return self.x0 if noise is None else (self.x0 + noise).clamp(0, 255)

    def image(self, p: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return p

    def tie(self, g: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """A grey photo's cloak stays grey: one gradient for R, G and B."""
        grey = self.grey.index_select(0, idx)[:, None, None, None]
        return torch.where(grey, g.mean(1, keepdim=True).expand_as(g), g)


class MaskedLuma:
    """A change in YCbCr bounded pixel by pixel by a JND map (see the module's docstring)."""

    lo, hi = -1.0, 1.0
    bounded = True  # the map bounds it: no DSSIM hinge per step (rho is checked on the saved file)

    def __init__(self, x0: torch.Tensor, grey: torch.Tensor, strength: float, chroma: float, sizes=None):
        self.x0 = x0
        if sizes is None:
            j = jnd_map(x0) * strength
        else:  # zero-padded crops: each face's map from its own pixels, as it would be alone
            j = torch.zeros_like(x0[:, :1])
            for i, n in enumerate(sizes):
                j[i, :, :n, :n] = jnd_map(x0[i:i + 1, :, :n, :n])[0] * strength
        share = _channel_share(x0, grey, chroma)
        self.bound = j * share  # (B, 3, S, S), YCbCr grey levels
        self.to_rgb = _YCC_TO_RGB.to(x0)

    def origin(self) -> torch.Tensor:
        return torch.zeros_like(self.x0)

    def start(self, noise: torch.Tensor | None) -> torch.Tensor:
        if noise is None:
            return self.origin()
        return (noise / 255.0).clamp(-0.5, 0.5)  # a small seeded shake: at t = 0 untargeted has no gradient

    def image(self, t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        change = torch.einsum("ij,bjhw->bihw", self.to_rgb, self.bound.index_select(0, idx) * t)
        return (self.x0.index_select(0, idx) + change).clamp(0, 255)

    def tie(self, g: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return g.contiguous()  # greyness is in the bound already; the fused Adam step wants dense grads


class QuantisedDct:
    """A change of each 8x8 block's DCT coefficients (YCbCr) by at most `strength` times JPEG's rounding
    at `quality`: |change of c| <= strength * min(q / 2, |c|), q the coefficient's quantisation step and
    c the clean crop's coefficient. What a JPEG encoder's rounding could do, chosen adversarially: no
    coefficient the photo lacks is created, so smooth skin gets no new texture (the issue's probe)."""

    lo, hi = -1.0, 1.0
    bounded = True

    def __init__(self, x0: torch.Tensor, grey: torch.Tensor, strength: float, chroma: float, quality: int,
                 cost: str | None = None):
        B, _, S, _ = x0.shape
        if S % 8:
            raise ValueError(f"the dct shape needs crops whose side is a multiple of 8, not {S}")
        self.x0 = x0
        ycc = torch.einsum("ij,bjhw->bihw", _RGB_TO_YCC.to(x0), x0 - 128.0)
        steps = jpeg_steps(quality).to(x0)
        share = _channel_share(x0, grey, chroma)
        if cost is None:
            q = steps.repeat(1, S // 8, S // 8)[None]  # (1, 3, S, S)
            self.bound = strength * torch.minimum(q / 2, block_dct(ycc).abs()) * share
        else:  # a channel with no share skips its cost map
            self.bound = strength * share * torch.cat([
                bound_from_cost(COSTS[cost](ycc[:, k:k + 1] + 128.0, steps[k]), steps[k]) if k == 0 or chroma > 0
                else torch.zeros_like(ycc[:, :1]) for k in range(3)], 1)
        self.to_rgb = _YCC_TO_RGB.to(x0)

    def origin(self) -> torch.Tensor:
        return torch.zeros_like(self.x0)

    def start(self, noise: torch.Tensor | None) -> torch.Tensor:
        return self.origin() if noise is None else (noise / 255.0).clamp(-0.5, 0.5)

    def image(self, t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        change = block_dct(self.bound.index_select(0, idx) * t, inverse=True)
        change = torch.einsum("ij,bjhw->bihw", self.to_rgb, change)
        return (self.x0.index_select(0, idx) + change).clamp(0, 255)

    def tie(self, g: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return g.contiguous()


def make_shape(name: str, x0: torch.Tensor, grey: torch.Tensor, strength: float, chroma: float, sizes=None,
               quality: int = 80):
    if name == "dssim":
        return FreePixels(x0, grey)
    if name == "jnd":
        return MaskedLuma(x0, grey, strength, chroma, sizes)
    if name == "dct":
        return QuantisedDct(x0, grey, strength, chroma, quality)
    if name in COSTS:
        return QuantisedDct(x0, grey, strength, chroma, quality, cost=name)
    raise ValueError(f"shape must be one of {', '.join(SHAPES)}, not {name!r}")
