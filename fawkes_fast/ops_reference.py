"""Pure-PyTorch reference implementations of the fused ops in :mod:`fawkes_fast.ops`.

They are the test oracle for the C++/CUDA kernels and the fallback when the compiled extension
``fawkes_fast._C`` is unavailable. Conventions are those of ``tf.image.ssim`` (used by Fawkes):
11x11 Gaussian window (sigma 1.5) applied separably, VALID padding (the SSIM map is
(H-10)x(W-10)), K1=0.01, K2=0.03, L=data_range; SSIM is the mean over H, W and channels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

WIN = 11
SIGMA = 1.5
K1 = 0.01
K2 = 0.03


def gaussian_taps(dtype=torch.float64, device=None) -> torch.Tensor:
    """Normalised 1-D Gaussian taps (11,), computed in float64 then cast."""
    d = torch.arange(WIN, dtype=torch.float64) - (WIN - 1) / 2
    g = torch.exp(-(d * d) / (2 * SIGMA * SIGMA))
    g = g / g.sum()
    return g.to(dtype=dtype, device=device)


def _blur_valid(t: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with VALID padding of (B, C, H, W) -> (B, C, H-10, W-10)."""
    C = t.shape[1]
    g = gaussian_taps(t.dtype, t.device)
    gw = g.view(1, 1, 1, WIN).expand(C, 1, 1, WIN)
    gh = g.view(1, 1, WIN, 1).expand(C, 1, WIN, 1)
    return F.conv2d(F.conv2d(t, gw, groups=C), gh, groups=C)


def ssim_map_full(x: torch.Tensor, y: torch.Tensor, data_range: float = 255.0) -> torch.Tensor:
    """Per-channel SSIM map (B, C, H-10, W-10); differentiable w.r.t. x and y."""
    c1 = (K1 * data_range) ** 2
    c2 = (K2 * data_range) ** 2
    # centre the values (SSIM's variances are shift invariant; means are shifted back) so that
    # E[x^2] - mu^2 keeps precision in float32, exactly like the C++ kernels.
    c = data_range / 2
    xc, yc = x - c, y - c
    B, C = x.shape[:2]
    stacked = torch.cat([xc, yc, xc * xc, yc * yc, xc * yc], dim=1)
    m = _blur_valid(stacked)
    mx, my, exx, eyy, exy = m.split(C, dim=1)
    sx = exx - mx * mx
    sy = eyy - my * my
    sxy = exy - mx * my
    mxu, myu = mx + c, my + c
    num = (2 * mxu * myu + c1) * (2 * sxy + c2)
    den = (mxu * mxu + myu * myu + c1) * (sx + sy + c2)
    return num / den


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 255.0) -> torch.Tensor:
    """SSIM per image, (B,). Gradients flow through autograd (to x and y)."""
    return ssim_map_full(x, y, data_range).mean(dim=(1, 2, 3))


def dssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 255.0) -> torch.Tensor:
    return (1.0 - ssim(x, y, data_range)) / 2.0


def tanh_adam_step(w, m, v, x, grad_x, step, lr, lo=0.0, hi=255.0, beta1=0.9, beta2=0.999,
                   eps=1e-8) -> None:
    """In-place reference of ``fawkes_fast::tanh_adam_step`` (same order of operations as
    ``torch.optim.Adam``; images with lr == 0 are left untouched)."""
    B = w.shape[0]
    bshape = (B,) + (1,) * (w.dim() - 1)
    with torch.no_grad():
        t = torch.tanh(w)
        g = (grad_x * 0.5 * float(hi - lo)) * (1 - t * t)
        steps = step.detach().to("cpu", torch.float64)
        bc1 = 1.0 - torch.pow(torch.tensor(beta1, dtype=torch.float64), steps)
        bc2 = 1.0 - torch.pow(torch.tensor(beta2, dtype=torch.float64), steps)
        step_size = (lr.detach().to("cpu", torch.float64) / bc1).to(w.dtype).to(w.device).view(bshape)
        bc2s = bc2.sqrt().to(w.dtype).to(w.device).view(bshape)
        active = (lr != 0).view(bshape)
        m_new = m + (1 - beta1) * (g - m)
        v_new = v * beta2 + ((1 - beta2) * g) * g
        denom = v_new.sqrt() / bc2s + eps
        w_new = w - step_size * (m_new / denom)
        x_new = (float(hi - lo) * (torch.tanh(w_new) + 1)) / 2 + lo
        m.copy_(torch.where(active, m_new, m))
        v.copy_(torch.where(active, v_new, v))
        w.copy_(torch.where(active, w_new, w))
        x.copy_(torch.where(active, x_new, x))


def ordered_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b (the reference of the fixed-order product; torch's own sums may follow the thread count)."""
    return a @ b
