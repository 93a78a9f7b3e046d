"""Fused kernels: SSIM / DSSIM (tf.image.ssim conventions) and a tanh-space Adam step.

Public API (what the optimiser and finalize use)
------------------------------------------------
``ssim(x, y, data_range=255.0) -> Tensor[B]``
``dssim(x, y, data_range=255.0) -> Tensor[B]``          (1 - ssim) / 2
``tanh_adam_step(w, m, v, x, grad_x, step, lr, lo=0., hi=255., beta1=0.9, beta2=0.999,
                 eps=1e-8) -> None``                     (in place on w, m, v, x)
``tanh_to_image(w, lo, hi)`` / ``image_to_tanh(x, lo, hi)``
``ordered_mm(a, b) -> Tensor``                            a @ b, each output's sum in one fixed order on
                                                         the CPU, whatever the thread count (issue #23)
``HAS_EXTENSION``: True when the compiled ``fawkes_fast._C`` loaded. Otherwise every op routes
to :mod:`fawkes_fast.ops_reference` (pure PyTorch) and a RuntimeWarning is issued once.

Inputs are checked once, by the C++ ops (TORCH_CHECK: TypeError / ValueError with the op's
name), and by the fake implementations below under torch.compile / meta tensors.

SSIM: inputs (B, C, H, W), C in {1, 3}, H, W >= 11, float32 (float64 also accepted, e.g. for
gradcheck), x and y the same shape/dtype/device; any strides (channels_last, non-contiguous) are
accepted. 11x11 Gaussian window, sigma 1.5, VALID padding, K1=0.01, K2=0.03, L=data_range; the
result is the mean over H, W then channels. Gradient flows to ``x`` only: ``y`` is the fixed
reference (no gradient is produced for it).

NaN / Inf policy: propagate, never raise (a check would cost a reduction and a device sync).
A non-finite pixel anywhere in image b makes ``ssim[b]`` (and its gradient) NaN; other images of
the batch are unaffected. ``tanh_adam_step`` likewise propagates a non-finite gradient into that
image's w, m, v, x (as torch.optim.Adam).

tanh_adam_step: w, m, v, x, grad_x float32, same shape (B, ...), contiguous, same device; step and
lr float32 of shape (B,) on that device. ``step[b]`` is the Adam step count t *after* this update
(1 for the first update; the caller increments it). Images with ``lr[b] == 0`` are frozen: w, m,
v, x untouched.
"""
from __future__ import annotations

import warnings

import torch

from . import ops_reference as _ref

__all__ = ["HAS_EXTENSION", "ssim", "dssim", "tanh_adam_step", "tanh_to_image", "image_to_tanh", "ordered_mm"]

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


def _use_ext(t) -> bool:
    """True if the compiled op serves tensor `t`'s device; otherwise warn once and use the
    reference. A non-tensor goes to the op, whose schema check names the argument."""
    global _WARNED
    device = t.device if isinstance(t, torch.Tensor) else torch.device("cpu")
    if HAS_EXTENSION and (device.type in ("cpu", "meta") or (device.type == "cuda" and _CUDA_KERNELS)):
        return True
    if not _WARNED:
        _WARNED = True
        why = (f"fawkes_fast._C failed to import ({_IMPORT_ERROR!r})" if not HAS_EXTENSION
               else f"fawkes_fast._C has no kernels for device {device.type!r}")
        warnings.warn(f"{why}; using the slower pure-PyTorch reference ops", RuntimeWarning,
                      stacklevel=3)
    return False


# ----------------------------------------------------------------------------------------- SSIM
def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 255.0) -> torch.Tensor:
    """SSIM of each image pair, (B,). Differentiable w.r.t. ``x`` (``y`` is a constant)."""
    if not _use_ext(x):
        return _ref.ssim(x, y.detach(), float(data_range))
    need_grad = torch.is_grad_enabled() and getattr(x, "requires_grad", False)
    out, _ = torch.ops.fawkes_fast.ssim_forward(x, y, data_range, need_grad)  # no gradient reaches y
    return out


def dssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 255.0) -> torch.Tensor:
    """Structural dissimilarity (1 - SSIM) / 2 of each image pair, (B,)."""
    return (1.0 - ssim(x, y, data_range)) / 2.0


# ---------------------------------------------------------------------------------------- Adam
def tanh_adam_step(w, m, v, x, grad_x, step, lr, lo: float = 0.0, hi: float = 255.0,
                   beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8) -> None:
    """Fused in-place Adam step on tanh-space parameters ``w`` (see module docstring)."""
    if not _use_ext(w):
        _ref.tanh_adam_step(w, m, v, x, grad_x, step, lr, lo, hi, beta1, beta2, eps)
        return
    torch.ops.fawkes_fast.tanh_adam_step(w, m, v, x, grad_x, step, lr, lo, hi, beta1, beta2, eps)


# ------------------------------------------------------------------------------ ordered product
def ordered_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b for float32 (M, K) @ (K, N), or (M, K) @ (B, K, N) -> (B, M, N), differentiable in both. On the CPU each output is
    summed over k in order, so its bits do not depend on the number of threads (BLAS and oneDNN split
    small products' sums among threads). Without the extension: torch's product, whose bits may."""
    if not _use_ext(a):
        return _ref.ordered_mm(a, b)
    return torch.ops.fawkes_fast.ordered_mm(a, b)


def tanh_to_image(w: torch.Tensor, lo: float = 0.0, hi: float = 255.0) -> torch.Tensor:
    """x = lo + (hi - lo) * (tanh(w) + 1) / 2 (differentiable)."""
    return (float(hi - lo) * (torch.tanh(w) + 1)) / 2 + lo


def image_to_tanh(x: torch.Tensor, lo: float = 0.0, hi: float = 255.0, eps: float = 1e-6) -> torch.Tensor:
    """Inverse of :func:`tanh_to_image`, clamped to |t| <= 1 - eps so atanh stays finite."""
    t = (x - lo) / float(hi - lo) * 2 - 1
    return torch.atanh(t.clamp(-1 + eps, 1 - eps))


# ------------------------------------------------------------- torch.library fake / autograd
def _check_ssim_fake(x, y, data_range) -> None:
    """The C++ check_ssim_inputs, for fake / meta tensors (same messages)."""
    torch._check_value(x.dim() == 4,
                       lambda: f"fawkes_fast ssim: x must be (B, C, H, W), got shape {tuple(x.shape)}")
    torch._check_value(x.shape == y.shape,
                       lambda: f"fawkes_fast ssim: x and y shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    torch._check_type(x.dtype in (torch.float32, torch.float64),
                      lambda: f"fawkes_fast ssim: x must be float32 (or float64), got {x.dtype}")
    torch._check_type(x.dtype == y.dtype,
                      lambda: f"fawkes_fast ssim: x and y dtypes differ: {x.dtype} vs {y.dtype}")
    torch._check_value(x.device == y.device,
                       lambda: f"fawkes_fast ssim: x and y are on different devices: {x.device} vs {y.device}")
    B, C, H, W = x.shape
    torch._check_value(B > 0, lambda: "fawkes_fast ssim: empty batch (B == 0)")
    torch._check_value(C in (1, 3), lambda: f"fawkes_fast ssim: C must be 1 or 3, got {C}")
    torch._check_value(H >= 11 and W >= 11,
                       lambda: f"fawkes_fast ssim: H and W must be >= 11 (11x11 window), got {H}x{W}")
    torch._check_value(0 < data_range < float("inf"),
                       lambda: f"fawkes_fast ssim: data_range must be finite and > 0, got {data_range}")


if HAS_EXTENSION:

    @torch.library.register_fake("fawkes_fast::ssim_forward")
    def _ssim_forward_fake(x, y, data_range, need_grad):
        _check_ssim_fake(x, y, data_range)
        B, C, H, W = x.shape
        keeps = need_grad and x.device.type == "cpu"  # CUDA recomputes the partials in its backward
        saved = x.new_empty((B, C, 3, H - 10, W - 10) if keeps else (0,))
        return x.new_empty((B,)), saved

    @torch.library.register_fake("fawkes_fast::ssim_backward")
    def _ssim_backward_fake(grad_ssim, x, y, saved, data_range):
        _check_ssim_fake(x, y, data_range)
        torch._check_value(grad_ssim.shape == (x.shape[0],), lambda: "fawkes_fast ssim_backward: grad_ssim "
                           f"must have shape (B,), got {tuple(grad_ssim.shape)}")
        return x.new_empty(x.shape)

    @torch.library.register_fake("fawkes_fast::tanh_adam_step")
    def _tanh_adam_step_fake(w, m, v, x, grad_x, step, lr, lo, hi, beta1, beta2, eps):
        torch._check_value(w.dim() >= 1 and w.shape[0] > 0, lambda: "fawkes_fast tanh_adam_step: w must be "
                           f"(B, ...) with B > 0, got shape {tuple(w.shape)}")
        for name, t in (("m", m), ("v", v), ("x", x), ("grad_x", grad_x), ("step", step), ("lr", lr)):
            if name in ("step", "lr"):
                torch._check_value(t.shape == (w.shape[0],), lambda: f"fawkes_fast tanh_adam_step: {name} "
                                   f"must have shape ({w.shape[0]},), got {tuple(t.shape)}")
            else:
                torch._check_value(t.shape == w.shape, lambda: f"fawkes_fast tanh_adam_step: {name} shape "
                                   f"{tuple(t.shape)} differs from w shape {tuple(w.shape)}")
            torch._check_value(t.device == w.device,
                               lambda: f"fawkes_fast tanh_adam_step: {name} is on {t.device}, w on {w.device}")
        return None

    def _ssim_setup_context(ctx, inputs, output):
        x, y, data_range, _ = inputs
        ctx.save_for_backward(x, y, output[1])
        ctx.data_range = data_range

    def _ssim_backward(ctx, grad_ssim, _grad_saved):
        x, y, saved = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:  # an empty `saved` makes the op recompute the partial maps
            grad_x = torch.ops.fawkes_fast.ssim_backward.default(grad_ssim, x, y, saved, ctx.data_range)
        return grad_x, None, None, None

    torch.library.register_autograd("fawkes_fast::ssim_forward", _ssim_backward,
                                    setup_context=_ssim_setup_context)

    @torch.library.register_fake("fawkes_fast::ordered_mm")
    def _ordered_mm_fake(a, b):
        torch._check_value(a.dim() == 2 and b.dim() in (2, 3), lambda: "fawkes_fast ordered_mm: a must be (M, K) "
                           f"and b (K, N) or (B, K, N), got shapes {tuple(a.shape)} and {tuple(b.shape)}")
        torch._check_value(a.shape[1] == b.shape[-2], lambda: f"fawkes_fast ordered_mm: a is {tuple(a.shape)} but "
                           f"b is {tuple(b.shape)} (a's columns must be b's rows)")
        torch._check_type(a.dtype == torch.float32 and b.dtype == torch.float32,
                          lambda: f"fawkes_fast ordered_mm: a and b must be float32, got {a.dtype} and {b.dtype}")
        return a.new_empty((*b.shape[:-2], a.shape[0], b.shape[-1]))

    def _ordered_mm_setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def _ordered_mm_backward(ctx, grad):
        a, b = ctx.saved_tensors
        grad = grad.contiguous()
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:  # summed over the batch: (M, B*N) @ (B*N, K)
            g = grad if b.dim() == 2 else grad.transpose(0, 1).reshape(grad.shape[1], -1)
            bt = b.t() if b.dim() == 2 else b.transpose(1, 2).reshape(-1, b.shape[1])
            grad_a = ordered_mm(g.contiguous(), bt.contiguous())
        if ctx.needs_input_grad[1]:
            grad_b = ordered_mm(a.t().contiguous(), grad)
        return grad_a, grad_b

    torch.library.register_autograd("fawkes_fast::ordered_mm", _ordered_mm_backward,
                                    setup_context=_ordered_mm_setup_context)
