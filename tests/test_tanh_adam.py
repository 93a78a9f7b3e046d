"""Fused tanh-space Adam step vs torch.optim.Adam + autograd through the tanh map."""
from __future__ import annotations


import pytest
import torch

import fawkes_fast.ops as ops
import fawkes_fast.ops_reference as ref

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=[CUDA, pytest.mark.cuda])]
needs_ext = pytest.mark.skipif(not ops.HAS_EXTENSION, reason="fawkes_fast._C not built")

LO, HI = 0.0, 255.0


def _loss(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Smooth per-image-separable loss in image space."""
    d = (x - target) / 255.0
    return (d * d).sum() + 0.05 * torch.sin(x / 30.0).sum()


def _grad_x(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    xg = x.detach().clone().requires_grad_()
    _loss(xg, target).backward()
    return xg.grad


def _setup(B, shape, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = (torch.rand((B,) + shape, generator=g) * 200 + 25).to(device)  # stay off tanh saturation
    target = (torch.rand((B,) + shape, generator=g) * 255).to(device)
    return x0, target


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def _assert_state(w, m, v, x, w_ref, opt, b=None):
    st = opt.state[w_ref]
    sel = (lambda t: t) if b is None else (lambda t: t[b])
    with torch.no_grad():
        x_ref = ops.tanh_to_image(w_ref, LO, HI)
    for name, a, r in (("w", sel(w), w_ref), ("m", sel(m), st["exp_avg"]),
                       ("v", sel(v), st["exp_avg_sq"]), ("x", sel(x), x_ref)):
        err = _max_rel(a, r.reshape(a.shape))
        assert err <= 1e-5, f"{name}: max relative difference {err:.3g}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("foreach", [False, True])
def test_200_steps_vs_torch_adam(device, foreach):
    B, shape, lr = 4, (3, 20, 23), 0.01
    x0, target = _setup(B, shape, device)
    w = ops.image_to_tanh(x0, LO, HI).contiguous()
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    x = ops.tanh_to_image(w, LO, HI)
    step = torch.zeros(B, device=device)
    lrs = torch.full((B,), lr, device=device)
    w_ref = w.clone().requires_grad_()
    opt = torch.optim.Adam([w_ref], lr=lr, foreach=foreach)
    for _ in range(200):
        step += 1
        ops.tanh_adam_step(w, m, v, x, _grad_x(x, target), step, lrs, LO, HI)
        opt.zero_grad()
        _loss(ops.tanh_to_image(w_ref, LO, HI), target).backward()
        opt.step()
    _assert_state(w, m, v, x, w_ref, opt)
    assert (w - ops.image_to_tanh(x0, LO, HI)).abs().max() > 0.1  # it actually moved


@pytest.mark.parametrize("device", DEVICES)
def test_per_image_lr_frozen_and_late_join(device):
    """Each image is compared with its own torch.optim.Adam run: per-image lr, an image frozen
    for a while (lr 0: untouched), and one joining late with its own step count."""
    B, shape, n_steps = 4, (3, 16, 19), 200
    x0, target = _setup(B, shape, device, seed=1)
    base_lr = [0.01, 0.005, 0.015, 0.008]

    def active(b, t):
        if b == 2:
            return not (50 <= t < 100)  # frozen for 50 steps
        if b == 3:
            return t >= 80  # joins late
        return True

    w = ops.image_to_tanh(x0, LO, HI).contiguous()
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    x = ops.tanh_to_image(w, LO, HI)
    step = torch.zeros(B, device=device)
    refs = []
    for b in range(B):
        wr = w[b].clone().requires_grad_()
        refs.append((wr, torch.optim.Adam([wr], lr=base_lr[b])))
    for t in range(n_steps):
        act = torch.tensor([active(b, t) for b in range(B)], device=device)
        lrs = torch.tensor(base_lr, device=device) * act
        step += act.float()
        before = [(w[b].clone(), m[b].clone(), v[b].clone(), x[b].clone()) for b in range(B) if not act[b]]
        ops.tanh_adam_step(w, m, v, x, _grad_x(x, target), step, lrs, LO, HI)
        frozen = [b for b in range(B) if not act[b]]
        for b, old in zip(frozen, before):
            for cur, o in zip((w[b], m[b], v[b], x[b]), old):
                assert torch.equal(cur, o), "frozen image was modified"
        for b in range(B):
            if act[b]:
                wr, opt = refs[b]
                opt.zero_grad()
                _loss(ops.tanh_to_image(wr, LO, HI), target[b]).backward()
                opt.step()
    for b in range(B):
        wr, opt = refs[b]
        _assert_state(w, m, v, x, wr, opt, b=b)
    assert int(step[3]) == n_steps - 80 and int(step[2]) == n_steps - 50


@pytest.mark.parametrize("device", DEVICES)
def test_matches_reference_with_frozen_image_and_simd_tail(device):
    B, shape = 3, (3, 9, 13)  # 351 elements: odd size -> SIMD tail
    x0, _ = _setup(B, shape, device, seed=2)
    gx = torch.randn((B,) + shape, generator=torch.Generator().manual_seed(9)).to(device)
    step = torch.tensor([1.0, 7.0, 3.0], device=device)
    lr = torch.tensor([0.1, 0.0, 0.01], device=device)

    def state():
        w = ops.image_to_tanh(x0, LO, HI).contiguous()
        g0 = torch.Generator().manual_seed(11)
        m = (torch.randn(w.shape, generator=g0) * 1e-3).to(device)
        v = (torch.rand(w.shape, generator=g0) * 1e-4).to(device)
        return [w, m, v, ops.tanh_to_image(w, LO, HI)]

    a, c, orig = state(), state(), state()
    ops.tanh_adam_step(*a, gx, step, lr, LO, HI)
    ref.tanh_adam_step(*c, gx, step, lr, LO, HI)
    for ta, tc, to in zip(a, c, orig):
        torch.testing.assert_close(ta, tc, rtol=1e-5, atol=1e-6)
        assert torch.equal(ta[1], to[1])  # lr 0 -> untouched
        assert not torch.equal(ta[0], to[0])  # the others moved


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    B, shape = 2, (3, 10, 11)
    x0, _ = _setup(B, shape, device, seed=3)
    w = ops.image_to_tanh(x0, LO, HI).contiguous()
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    x = ops.tanh_to_image(w, LO, HI)
    gx = torch.randn_like(w)
    step = torch.tensor([1.0, 4.0], device=device)
    lr = torch.tensor([0.1, 0.0], device=device)
    op = torch.ops.fawkes_fast.tanh_adam_step.default
    torch.library.opcheck(op, (w, m, v, x, gx, step, lr, LO, HI, 0.9, 0.999, 1e-8))
    torch.library.opcheck(op, (w, m, v, x, gx, step, lr, -1.0, 2.0, 0.8, 0.99, 1e-6))


@pytest.mark.parametrize("device", DEVICES)
def test_nonfinite_grad_propagates_to_that_image_only(device):
    x0, _ = _setup(2, (3, 8, 8), device, seed=4)
    w = ops.image_to_tanh(x0, LO, HI).contiguous()
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    x = ops.tanh_to_image(w, LO, HI)
    gx = torch.randn_like(w)
    gx[0, 1, 2, 3] = float("nan")
    ops.tanh_adam_step(w, m, v, x, gx, torch.ones(2, device=device), torch.full((2,), 0.1, device=device))
    assert torch.isnan(w[0, 1, 2, 3]) and torch.isnan(x[0, 1, 2, 3])
    assert torch.isfinite(w[1]).all() and torch.isfinite(x[1]).all()


def test_tanh_helpers_roundtrip():
    x = torch.tensor([0.0, 1.0, 127.5, 254.0, 255.0])
    w = ops.image_to_tanh(x, 0.0, 255.0)
    assert torch.isfinite(w).all()
    torch.testing.assert_close(ops.tanh_to_image(w, 0.0, 255.0), x, atol=1e-3, rtol=0)
    x2 = torch.tensor([-1.0, 0.0, 0.5, 1.0])
    torch.testing.assert_close(ops.tanh_to_image(ops.image_to_tanh(x2, -1, 1), -1, 1), x2, atol=1e-5, rtol=0)


@needs_ext
def test_fallback_matches_extension(monkeypatch):
    B, shape = 3, (3, 12, 13)
    x0, target = _setup(B, shape, "cpu", seed=5)
    step = torch.tensor([1.0, 2.0, 3.0])
    lr = torch.tensor([0.05, 0.0, 0.02])

    def run():
        w = ops.image_to_tanh(x0, LO, HI).contiguous()
        m, v = torch.zeros_like(w), torch.zeros_like(w)
        x = ops.tanh_to_image(w, LO, HI)
        for i in range(5):
            ops.tanh_adam_step(w, m, v, x, _grad_x(x, target), step + i, lr, LO, HI)
        return w, m, v, x

    ext = run()
    monkeypatch.setattr(ops, "HAS_EXTENSION", False)
    monkeypatch.setattr(ops, "_WARNED", False)
    with pytest.warns(RuntimeWarning):
        fb = run()
    for a, b in zip(ext, fb):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
