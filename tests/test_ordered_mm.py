"""The fixed-order product (ops.ordered_mm, csrc/ordered_mm_cpu.cpp): torch's product to rounding, an
independent reference (numpy in float64), the same bits with 1 and 2 threads, and the torch.library
contract (opcheck: schema, fake, autograd)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import fawkes_fast.ops as ops

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=[CUDA, pytest.mark.cuda])]
needs_ext = pytest.mark.skipif(not ops.HAS_EXTENSION, reason="fawkes_fast._C not built")
# (M, K, N, batch): dlib's last stages (8x8, 3x3, 4x4, 1x1 maps), odd sizes for every tile's tail
SHAPES = [(128, 1152, 64, None), (256, 2304, 9, 3), (256, 2304, 1, None), (7, 5, 33, 2), (1, 1, 1, None), (13, 300, 47, 5)]


def _pair(M, K, N, batch, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(M, K, generator=g).to(device)
    b = torch.randn(*(() if batch is None else (batch,)), K, N, generator=g).to(device)
    return a, b


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("M,K,N,batch", SHAPES)
def test_matches_float64_numpy(M, K, N, batch, device):
    a, b = _pair(M, K, N, batch, device)
    want = np.matmul(a.cpu().double().numpy(), b.cpu().double().numpy())
    got = ops.ordered_mm(a, b).cpu().double().numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * K ** 0.5 * 4)
    torch.testing.assert_close(ops.ordered_mm(a, b), a @ b, rtol=1e-5, atol=1e-4 * K ** 0.5)


@needs_ext
@pytest.mark.parametrize("M,K,N,batch", SHAPES)
def test_same_bits_with_one_thread_and_two(M, K, N, batch, cpu_burner):
    a, b = _pair(M, K, N, batch, seed=1)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.ordered_mm(a, b)
        torch.set_num_threads(2)
        with cpu_burner():
            two = ops.ordered_mm(a, b)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_gradients_match_the_reference(device):
    a, b = _pair(6, 40, 19, 3, device, seed=2)
    a.requires_grad_(), b.requires_grad_()
    g = torch.randn(3, 6, 19, generator=torch.Generator().manual_seed(3)).to(device)
    ga, gb = torch.autograd.grad(ops.ordered_mm(a, b), (a, b), g)
    ra, rb = torch.autograd.grad(a @ b, (a, b), g)
    torch.testing.assert_close(ga, ra, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(gb, rb, rtol=1e-5, atol=1e-4)


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    op = torch.ops.fawkes_fast.ordered_mm.default
    for M, K, N, batch in ((5, 7, 3, None), (4, 9, 17, 2)):
        a, b = _pair(M, K, N, batch, device, seed=4)
        torch.library.opcheck(op, (a.requires_grad_(), b.requires_grad_()))


@needs_ext
def test_bad_inputs_are_named():
    a, b = _pair(4, 5, 6, None)
    with pytest.raises(ValueError, match="a's columns must be b's rows"):
        ops.ordered_mm(a, b.t())
    with pytest.raises(TypeError, match="float32"):
        ops.ordered_mm(a.double(), b.double())
    with pytest.raises(ValueError, match=r"\(M, K\)"):
        ops.ordered_mm(a[None], b)
