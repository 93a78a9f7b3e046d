"""Fused SSIM op (fawkes_fast.ops.ssim / dssim) vs skimage, pytorch-msssim and the
pure-PyTorch reference; gradients; opcheck; strides; NaN policy; the fallback path."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import fawkes_fast.ops as ops
import fawkes_fast.ops_reference as ref
from conftest import lfw_image, lfw_people

try:  # optional oracles (requirements-dev.txt); the reference comparison always runs
    import skimage.metrics as skimage_metrics
except ImportError:  # pragma: no cover
    skimage_metrics = None
try:
    import pytorch_msssim
except ImportError:  # pragma: no cover
    pytorch_msssim = None

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=[CUDA, pytest.mark.cuda])]
needs_ext = pytest.mark.skipif(not ops.HAS_EXTENSION, reason="fawkes_fast._C not built")


def _pair(shape, seed=0, noise=20.0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64) * 255
    y = (x + torch.randn(shape, generator=g, dtype=torch.float64) * noise).clamp(0, 255)
    return x.to(device, dtype), y.to(device, dtype)


def _skimage_ssim(x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    if skimage_metrics is None:
        pytest.skip("scikit-image not installed")
    out = []
    for a, b in zip(x.double().cpu().numpy(), y.double().cpu().numpy()):
        kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
        if a.shape[0] == 1:
            out.append(skimage_metrics.structural_similarity(a[0], b[0], **kw))
        else:
            out.append(skimage_metrics.structural_similarity(a, b, channel_axis=0, **kw))
    return np.array(out)


def _load_lfw(n=3):
    from PIL import Image

    people = lfw_people(1)[:: max(1, len(lfw_people(1)) // n)][:n]
    imgs = [np.asarray(Image.open(lfw_image(name, 1)).convert("RGB"), dtype=np.float32) for name, _ in people]
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()


# ------------------------------------------------------------------------------------- values
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(2, 3, 40, 37), (3, 1, 11, 11), (1, 3, 64, 71), (2, 1, 23, 50)])
def test_ssim_matches_skimage_and_msssim(device, shape):
    x, y = _pair(shape, device=device)
    s = ops.ssim(x, y).cpu().double().numpy()
    r = ref.ssim(x.double(), y.double()).cpu().numpy()
    np.testing.assert_allclose(s, r, atol=1e-5, rtol=0)
    np.testing.assert_allclose(s, _skimage_ssim(x, y), atol=1e-4, rtol=0)
    if pytorch_msssim is not None:
        ms = pytorch_msssim.ssim(x, y, data_range=255, size_average=False).cpu().double().numpy()
        np.testing.assert_allclose(s, ms, atol=1e-4, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_ssim_lfw_photos(lfw_dir, device):
    x = _load_lfw(3).to(device)
    g = torch.Generator().manual_seed(5)
    y = (x + (torch.randn(x.shape, generator=g) * 6).to(device)).clamp(0, 255).round()
    s = ops.ssim(y, x)
    assert s.shape == (3,)
    np.testing.assert_allclose(s.cpu().double().numpy(), ref.ssim(y.double(), x.double()).cpu().numpy(),
                               atol=1e-5, rtol=0)
    if pytorch_msssim is not None:
        ms = pytorch_msssim.ssim(y, x, data_range=255, size_average=False)
        np.testing.assert_allclose(s.cpu().numpy(), ms.cpu().numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(s.cpu().double().numpy(), _skimage_ssim(y, x), atol=1e-4, rtol=0)
    # identical photos -> 1; different people -> clearly below 1
    np.testing.assert_allclose(ops.ssim(x, x).cpu().numpy(), 1.0, atol=1e-6)
    assert (ops.ssim(x, x.roll(1, 0)) < 0.9).all()


@pytest.mark.parametrize("device", DEVICES)
def test_dssim_and_data_range(device):
    x, y = _pair((2, 3, 30, 30), device=device)
    torch.testing.assert_close(ops.dssim(x, y), (1 - ops.ssim(x, y)) / 2)
    # data_range=1 on images scaled to [0, 1] gives the same SSIM
    torch.testing.assert_close(ops.ssim(x / 255, y / 255, data_range=1.0), ops.ssim(x, y), atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------- gradients
@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(2, 3, 13, 15), (1, 1, 17, 12)])
def test_gradcheck_float64(device, shape):
    x, y = _pair(shape, seed=3, noise=40.0, dtype=torch.float64, device=device)
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda a: ops.ssim(a, y), (x,), eps=1e-4, atol=1e-9, rtol=1e-5)
    assert torch.autograd.gradcheck(lambda a: ops.dssim(a, y, data_range=300.0), (x,), eps=1e-4,
                                    atol=1e-9, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(2, 3, 48, 52), (1, 1, 150, 150), (3, 3, 21, 90)])
def test_grad_float32_vs_reference(device, shape):
    x, y = _pair(shape, seed=4, device=device)
    w = torch.rand(shape[0], device=device) + 0.5  # non-uniform upstream grad per image
    xr = x.clone().requires_grad_()
    (ops.ssim(xr, y) * w).sum().backward()
    xd = x.double().requires_grad_()
    (ref.ssim(xd, y.double()) * w.double()).sum().backward()
    scale = xd.grad.abs().max().item()
    torch.testing.assert_close(xr.grad.double(), xd.grad, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("device", DEVICES)
def test_y_gets_no_gradient(device):
    x, y = _pair((1, 3, 20, 20), device=device)
    xr, yr = x.clone().requires_grad_(), y.clone().requires_grad_()
    ops.ssim(xr, yr).sum().backward()
    assert xr.grad is not None and yr.grad is None


# ------------------------------------------------------------------------- strides / opcheck
@pytest.mark.parametrize("device", DEVICES)
def test_noncontiguous_and_channels_last(device):
    x, y = _pair((2, 3, 40, 50), device=device)
    base = ops.ssim(x, y)
    xr = x.clone().requires_grad_()
    ops.ssim(xr, y).sum().backward()
    # channels_last
    xc = x.clone().to(memory_format=torch.channels_last).requires_grad_()
    yc = y.to(memory_format=torch.channels_last)
    s = ops.ssim(xc, yc)
    s.sum().backward()
    torch.testing.assert_close(s, base)
    torch.testing.assert_close(xc.grad, xr.grad)
    # non-contiguous views (transposed H/W and a strided slice)
    torch.testing.assert_close(ops.ssim(x.transpose(2, 3), y.transpose(2, 3)),
                               ops.ssim(x.transpose(2, 3).contiguous(), y.transpose(2, 3).contiguous()))
    torch.testing.assert_close(ops.ssim(x[:, :, ::2, ::2], y[:, :, ::2, ::2]),
                               ops.ssim(x[:, :, ::2, ::2].contiguous(), y[:, :, ::2, ::2].contiguous()))


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(device, layout, dtype):
    x, y = _pair((2, 3, 24, 27), seed=7, dtype=dtype, device=device)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
        y = y.to(memory_format=torch.channels_last)
    elif layout == "strided":
        x, y = x.transpose(2, 3), y.transpose(2, 3)
    fwd = torch.ops.fawkes_fast.ssim_forward.default
    torch.library.opcheck(fwd, (x.detach().requires_grad_(), y, 255.0, True))
    torch.library.opcheck(fwd, (x.detach().requires_grad_(), y, 255.0, False))
    torch.library.opcheck(fwd, (x, y, 1.0, False))
    _, saved = fwd(x, y, 255.0, True)
    g = torch.rand(2, dtype=dtype, device=device)
    bwd = torch.ops.fawkes_fast.ssim_backward.default
    torch.library.opcheck(bwd, (g, x, y, saved, 255.0))
    torch.library.opcheck(bwd, (g, x, y, saved.new_empty(0), 255.0))  # empty: the op recomputes
    torch.testing.assert_close(bwd(g, x, y, saved.new_empty(0), 255.0), bwd(g, x, y, saved, 255.0))


# ------------------------------------------------------------------------------ NaN / fallback
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_propagates_per_image(device, bad):
    """Policy: a non-finite pixel makes that image's SSIM (and gradient) NaN; others unaffected."""
    x, y = _pair((3, 3, 30, 30), device=device)
    clean = ops.ssim(x, y)
    xb = x.clone()
    xb[1, 2, 0, 29] = bad  # a corner pixel is still inside one VALID window
    xr = xb.clone().requires_grad_()
    s = ops.ssim(xr, y)
    assert torch.isnan(s[1])
    torch.testing.assert_close(s[[0, 2]], clean[[0, 2]])
    s.sum().backward()
    assert torch.isnan(xr.grad[1]).any() and torch.isfinite(xr.grad[[0, 2]]).all()
    yb = y.clone()
    yb[2, 0, 15, 15] = bad
    assert torch.isnan(ops.ssim(x, yb)[2]) and torch.isfinite(ops.ssim(x, yb)[:2]).all()


@needs_ext
def test_fallback_matches_extension(monkeypatch):
    x, y = _pair((2, 3, 35, 41))
    xr = x.clone().requires_grad_()
    s_ext = ops.ssim(xr, y)
    s_ext.sum().backward()
    monkeypatch.setattr(ops, "HAS_EXTENSION", False)
    monkeypatch.setattr(ops, "_WARNED", False)
    xf = x.clone().requires_grad_()
    with pytest.warns(RuntimeWarning, match="reference"):
        s_ref = ops.ssim(xf, y)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        s_ref.sum().backward()
        d_ref = ops.dssim(x, y)
    torch.testing.assert_close(s_ref, s_ext, atol=1e-5, rtol=0)
    torch.testing.assert_close(d_ref, (1 - s_ext.detach()) / 2, atol=1e-5, rtol=0)
    torch.testing.assert_close(xf.grad, xr.grad, rtol=1e-4, atol=1e-4 * xr.grad.abs().max().item())


@needs_ext
def test_torch_compile_fullgraph():
    """The ops trace under torch.compile (fake impls + registered autograd), no graph breaks."""
    x, y = _pair((2, 3, 30, 33))

    def f(a, b):
        return ops.dssim(a, b).sum()

    cf = torch.compile(f, backend="aot_eager", fullgraph=True)
    xc = x.clone().requires_grad_()
    xe = x.clone().requires_grad_()
    cf(xc, y).backward()
    f(xe, y).backward()
    torch.testing.assert_close(xc.grad, xe.grad)
