"""Fused kernels: SSIM / DSSIM (tf.image.ssim conventions) and a tanh-space Adam step.

Public API
----------
``ssim(x, y, data_range=255.0) -> Tensor[B]``
``dssim(x, y, data_range=255.0) -> Tensor[B]``          (1 - ssim) / 2
``ssim_map(x, y, data_range=255.0) -> Tensor[B, H-10, W-10]``  channel-averaged map, no grad
``tanh_adam_step(w, m, v, x, grad_x, step, lr, lo=0., hi=255., beta1=0.9, beta2=0.999,
                 eps=1e-8, grad2=None, scale2=None) -> None``   (in place on w, m, v, x)
``tanh_to_image(w, lo, hi)`` / ``image_to_tanh(x, lo, hi)``
``HAS_EXTENSION``: True when the compiled ``fawkes_fast._C`` loaded. Otherwise every op routes
to :mod:`fawkes_fast.ops_reference` (pure PyTorch) and a RuntimeWarning is issued once.

SSIM: inputs (B, C, H, W), C in {1, 3}, H, W >= 11, float32 (float64 also accepted, e.g. for
gradcheck), x and y the same shape/dtype/device; any strides (channels_last, non-contiguous) are
accepted. 11x11 Gaussian window, sigma 1.5, VALID padding, K1=0.01, K2=0.03, L=data_range; the
result is the mean over H, W then channels. Gradient flows to ``x`` only: ``y`` is the fixed
reference (no gradient is produced for it).

NaN / Inf policy: propagate, never raise (a check would cost a reduction and a device sync).
A non-finite pixel anywhere in image b makes ``ssim[b]`` (and its gradient, and the affected
windows of ``ssim_map``) NaN; other images of the batch are unaffected. ``tanh_adam_step``
likewise propagates a non-finite gradient into that image's w, m, v, x (as torch.optim.Adam).

tanh_adam_step: w, m, v, x, grad_x (and grad2) float32, same shape (B, ...), contiguous, same
device; step and lr shape (B,) (cast to float32 on w's device). ``step[b]`` is the Adam step count
t *after* this update (1 for the first update; the caller increments it). Images with
``lr[b] == 0`` are frozen: w, m, v, x untouched. The optional fold ``grad2``/``scale2`` makes the
image-space gradient ``grad_x + scale2[b] * grad2`` (e.g. a per-image DSSIM hinge weight).
"""
from __future__ import annotations

import math
import numbers
import warnings

import torch

from . import ops_reference as _ref

__all__ = [
    "HAS_EXTENSION",
    "ssim",
    "dssim",
    "ssim_map",
    "tanh_adam_step",
    "tanh_to_image",
    "image_to_tanh",
]

try:
    from . import _C  # noqa: F401  (loading the .so registers torch.ops.fawkes_fast.*)

    HAS_EXTENSION = True
    _IMPORT_ERROR: Exception | None = None
except (ImportError, OSError) as _e:  # pragma: no cover - exercised by the fallback test
    HAS_EXTENSION = False
    _IMPORT_ERROR = _e

_WARNED = False


def _has_cuda_kernels() -> bool:
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key("fawkes_fast::ssim_forward", "CUDA")
    except Exception:  # pragma: no cover
        return False


_CUDA_KERNELS = HAS_EXTENSION and _has_cuda_kernels()


def _use_ext(device: torch.device) -> bool:
    """True if the compiled op serves `device`; otherwise warn once and use the reference."""
    global _WARNED
    if HAS_EXTENSION and (device.type == "cpu" or (device.type == "cuda" and _CUDA_KERNELS)):
        return True
    if not _WARNED:
        _WARNED = True
        why = (f"fawkes_fast._C failed to import ({_IMPORT_ERROR!r})" if not HAS_EXTENSION
               else f"fawkes_fast._C has no kernels for device {device.type!r}")
        warnings.warn(f"{why}; using the slower pure-PyTorch reference ops", RuntimeWarning,
                      stacklevel=3)
    return False


# ----------------------------------------------------------------------------------- validation
def _check_tensor(t, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def _check_number(v, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    return v


def _check_pair(x, y, data_range) -> float:
    _check_tensor(x, "x")
    _check_tensor(y, "y")
    for t, n in ((x, "x"), (y, "y")):
        if t.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"{n} must be float32 (or float64), got {t.dtype}")
    if x.dtype != y.dtype:
        raise TypeError(f"x and y dtypes differ: {x.dtype} vs {y.dtype}")
    if x.dim() != 4:
        raise ValueError(f"x must be (B, C, H, W), got shape {tuple(x.shape)}")
    if x.shape != y.shape:
        raise ValueError(f"x and y shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    B, C, H, W = x.shape
    if B == 0:
        raise ValueError("empty batch (B == 0)")
    if C not in (1, 3):
        raise ValueError(f"C must be 1 or 3, got {C}")
    if H < 11 or W < 11:
        raise ValueError(f"H and W must be >= 11 (11x11 SSIM window), got {H}x{W}")
    if x.device != y.device:
        raise ValueError(f"x and y are on different devices: {x.device} vs {y.device}")
    dr = _check_number(data_range, "data_range")
    if dr <= 0:
        raise ValueError(f"data_range must be > 0, got {dr}")
    return dr


# ----------------------------------------------------------------------------------------- SSIM
def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 255.0) -> torch.Tensor:
    """SSIM of each image pair, (B,). Differentiable w.r.t. ``x`` (``y`` is a constant)."""
    dr = _check_pair(x, y, data_range)
    if not _use_ext(x.device):
        return _ref.ssim(x, y.detach(), dr)
    need_grad = torch.is_grad_enabled() and x.requires_grad
    out, _ = torch.ops.fawkes_fast.ssim_forward(x, y.detach(), dr, need_grad)
    return out


def dssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 255.0) -> torch.Tensor:
    """Structural dissimilarity (1 - SSIM) / 2 of each image pair, (B,)."""
    return (1.0 - ssim(x, y, data_range)) / 2.0


def ssim_map(x: torch.Tensor, y: torch.Tensor, data_range: float = 255.0) -> torch.Tensor:
    """Per-pixel SSIM map averaged over channels, (B, H-10, W-10). No gradient."""
    dr = _check_pair(x, y, data_range)
    x, y = x.detach(), y.detach()
    if not _use_ext(x.device):
        return _ref.ssim_map(x, y, dr)
    return torch.ops.fawkes_fast.ssim_map(x, y, dr).mean(dim=1)


# ---------------------------------------------------------------------------------------- Adam
def tanh_adam_step(w, m, v, x, grad_x, step, lr, lo: float = 0.0, hi: float = 255.0,
                   beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                   grad2=None, scale2=None) -> None:
    """Fused in-place Adam step on tanh-space parameters ``w`` (see module docstring)."""
    names = ("w", "m", "v", "x", "grad_x")
    ts = (w, m, v, x, grad_x)
    for t, n in zip(ts, names):
        _check_tensor(t, n)
        if t.dtype != torch.float32:
            raise TypeError(f"{n} must be float32, got {t.dtype}")
    if w.dim() < 1 or w.shape[0] == 0:
        raise ValueError(f"w must be (B, ...) with B > 0, got shape {tuple(w.shape)}")
    for t, n in zip(ts, names):
        if t.shape != w.shape:
            raise ValueError(f"{n} shape {tuple(t.shape)} differs from w shape {tuple(w.shape)}")
        if t.device != w.device:
            raise ValueError(f"{n} is on {t.device}, w on {w.device}")
        if not t.is_contiguous():
            raise ValueError(f"{n} must be contiguous")
    B = w.shape[0]
    for t, n in ((step, "step"), (lr, "lr")):
        _check_tensor(t, n)
        if t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{n} must be a real tensor, got {t.dtype}")
        if t.dim() != 1 or t.shape[0] != B:
            raise ValueError(f"{n} must have shape ({B},), got {tuple(t.shape)}")
    if (grad2 is None) != (scale2 is None):
        raise ValueError("grad2 and scale2 must be given together")
    if grad2 is not None:
        _check_tensor(grad2, "grad2")
        _check_tensor(scale2, "scale2")
        if grad2.dtype != torch.float32:
            raise TypeError(f"grad2 must be float32, got {grad2.dtype}")
        if grad2.shape != w.shape or grad2.device != w.device or not grad2.is_contiguous():
            raise ValueError("grad2 must be a contiguous tensor shaped and placed like w")
        if scale2.dim() != 1 or scale2.shape[0] != B:
            raise ValueError(f"scale2 must have shape ({B},), got {tuple(scale2.shape)}")
        scale2 = scale2.to(device=w.device, dtype=torch.float32)
    lo = _check_number(lo, "lo")
    hi = _check_number(hi, "hi")
    if not lo < hi:
        raise ValueError(f"need lo < hi, got lo={lo}, hi={hi}")
    beta1 = _check_number(beta1, "beta1")
    beta2 = _check_number(beta2, "beta2")
    eps = _check_number(eps, "eps")
    if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
        raise ValueError(f"betas must be in [0, 1), got {beta1}, {beta2}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    step = step.to(device=w.device, dtype=torch.float32)
    lr = lr.to(device=w.device, dtype=torch.float32)
    with torch.no_grad():
        if not _use_ext(w.device):
            _ref.tanh_adam_step(w, m, v, x, grad_x, step, lr, lo, hi, beta1, beta2, eps, grad2, scale2)
            return None
        torch.ops.fawkes_fast.tanh_adam_step(w, m, v, x, grad_x, step, lr, lo, hi, beta1, beta2,
                                             eps, grad2, scale2)
    return None


def tanh_to_image(w: torch.Tensor, lo: float = 0.0, hi: float = 255.0) -> torch.Tensor:
    """x = lo + (hi - lo) * (tanh(w) + 1) / 2 (differentiable)."""
    return (float(hi - lo) * (torch.tanh(w) + 1)) / 2 + lo


def image_to_tanh(x: torch.Tensor, lo: float = 0.0, hi: float = 255.0, eps: float = 1e-6) -> torch.Tensor:
    """Inverse of :func:`tanh_to_image`, clamped to |t| <= 1 - eps so atanh stays finite."""
    t = (x - lo) / float(hi - lo) * 2 - 1
    return torch.atanh(t.clamp(-1 + eps, 1 - eps))


# ------------------------------------------------------------- torch.library fake / autograd
if HAS_EXTENSION:

    @torch.library.register_fake("fawkes_fast::ssim_forward")
    def _ssim_forward_fake(x, y, data_range, need_grad):
        B, C, H, W = x.shape
        s = x.new_empty((B,))
        p = x.new_empty((B, C, 3, H - 10, W - 10)) if need_grad else x.new_empty((0,))
        return s, p

    @torch.library.register_fake("fawkes_fast::ssim_backward")
    def _ssim_backward_fake(grad_ssim, x, y, partials, data_range):
        return x.new_empty(x.shape)

    @torch.library.register_fake("fawkes_fast::ssim_map")
    def _ssim_map_fake(x, y, data_range):
        B, C, H, W = x.shape
        return x.new_empty((B, C, H - 10, W - 10))

    @torch.library.register_fake("fawkes_fast::tanh_adam_step")
    def _tanh_adam_step_fake(w, m, v, x, grad_x, step, lr, lo, hi, beta1, beta2, eps,
                             grad2=None, scale2=None):
        return None

    def _ssim_setup_context(ctx, inputs, output):
        x, y, data_range, need_grad = inputs
        _, partials = output
        ctx.save_for_backward(x, y, partials)
        ctx.data_range = data_range

    def _ssim_backward(ctx, grad_ssim, grad_partials):
        x, y, partials = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:
            if partials.numel() == 0:  # forward ran with need_grad=False: recompute the partials
                _, partials = torch.ops.fawkes_fast.ssim_forward.default(x, y, ctx.data_range, True)
            grad_x = torch.ops.fawkes_fast.ssim_backward.default(grad_ssim, x, y, partials,
                                                                 ctx.data_range)
        return grad_x, None, None, None

    torch.library.register_autograd("fawkes_fast::ssim_forward", _ssim_backward,
                                    setup_context=_ssim_setup_context)
