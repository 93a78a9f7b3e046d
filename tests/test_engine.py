"""The optimiser's two ways of computing a step: the eager one, which skips frozen faces, and the
whole-batch one that a CUDA graph replays. Both must give the same cloaks."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from fawkes_fast.extractors import Extractor
from fawkes_fast.optimize import engine
from fawkes_fast.optimize.modes import settings_for


def _toy_extractor():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 5, stride=2), torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 3),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 16))
    for p in net.parameters():
        p.requires_grad_(False)
    return Extractor("toy", net.eval(), "dlib", 32, 16)


def _batch(device, B=4, S=48):
    g = torch.Generator().manual_seed(1)
    x0 = torch.nn.functional.avg_pool2d(torch.rand(B, 3, S, S, generator=g) * 200 + 20, 5, 1, 2)
    M = torch.tensor([[1.2, 0.0, 4.0], [0.0, 1.2, 4.0]]).repeat(B, 1, 1)
    t = torch.nn.functional.normalize(torch.randn(B, 16, generator=g), dim=1)
    return x0.to(device), M.to(device), t.to(device)


class _WholeBatch(engine._EagerStep):
    """The graph's view of a step (every face, frozen ones too) without a graph: runs on a CPU."""

    def __call__(self, x, active_mask):
        return self.forward(x, torch.arange(self.B, device=x.device), list(range(self.B)))


# patience 3 freezes faces at different steps, stop_at freezes them on reaching the target
CASES = [dict(steps=30, patience=3), dict(steps=20, stop_at=0.8), dict(steps=12, flip=True)]


@pytest.mark.parametrize("opts", CASES)
def test_whole_batch_step_gives_the_same_cloaks(monkeypatch, opts):
    ext = _toy_extractor()
    x0, M, t = _batch("cpu")
    s = settings_for("mid", **opts)
    a = engine.optimise([ext], x0, [M], [t], s, graph=False)
    monkeypatch.setattr(engine, "_EagerStep", _WholeBatch)
    b = engine.optimise([ext], x0, [M], [t], s, graph=False)
    assert torch.equal(a.steps, b.steps)
    assert torch.allclose(a.dssim, b.dssim, atol=1e-6)
    assert torch.allclose(a.best, b.best, atol=1e-3)
    if "patience" in opts:  # the case exercises freezing: some face stopped early
        assert int(a.steps.min()) < opts["steps"]


def test_graphs_only_where_the_step_is_fixed(monkeypatch):
    cuda, mid = torch.device("cuda"), settings_for("mid")
    assert not engine.use_cuda_graph(torch.device("cpu"), mid)
    assert engine.use_cuda_graph(cuda, mid)
    assert not engine.use_cuda_graph(cuda, mid.with_options(diversity=1.0))  # random each step
    assert not engine.use_cuda_graph(cuda, mid.with_options(ghost=0.1))
    monkeypatch.setenv("FAWKES_FAST_CUDA_GRAPH", "0")
    assert not engine.use_cuda_graph(cuda, mid)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("opts", CASES)
def test_cuda_graph_gives_the_same_cloaks(opts):
    ext = _toy_extractor().to("cuda")
    x0, M, t = _batch("cuda")
    s = settings_for("mid", **opts)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a failed capture would fall back with a warning
        a = engine.optimise([ext], x0, [M], [t], s, graph=True)
    b = engine.optimise([ext], x0, [M], [t], s, graph=False)
    assert (a.steps - b.steps).abs().max() <= 1
    assert torch.allclose(a.dssim, b.dssim, atol=2e-4)
    assert (a.best - b.best).abs().mean() < 0.05


def test_ghost_copies_thin_a_private_copy_and_keep_faces_independent():
    """ghost > 0: channel dropout inside a copy of the model (the shared one keeps no hook), drawn from
    each face's own seed: a face cloaked alone matches the same face cloaked among others (up to the
    convolutions' batch-size rounding, < 0.01 grey levels), and another seed moves it by whole levels."""
    from fawkes_fast.optimize.ghost import Ghost

    ext = _toy_extractor()
    x0, M, t = _batch("cpu")
    s = settings_for("mid", steps=8, ghost=0.2)
    alone = engine.optimise([ext], x0[:1], [M[:1]], [t[:1]], s, seeds=[5])
    batch = engine.optimise([ext], x0, [M], [t], s, seeds=[5, 6, 7, 8])
    other = engine.optimise([ext], x0[:1], [M[:1]], [t[:1]], s, seeds=[9])
    assert (alone.best[0] - batch.best[0]).abs().max() < 0.01
    assert (other.best[0] - batch.best[0]).abs().max() > 1.0
    assert all(not m._forward_hooks for m in ext.module.modules())
    plain = engine.optimise([ext], x0, [M], [t], settings_for("mid", steps=8), seeds=[5, 6, 7, 8])
    assert not torch.equal(plain.best, batch.best)
    g = Ghost(ext, 0.5)
    g.gens = [torch.Generator().manual_seed(0)]
    chips = x0[:1, :, :32, :32]
    assert not torch.allclose(g.extractor.features(chips), ext.features(chips))
    with pytest.raises(ValueError, match="nn.Conv2d"):
        Ghost(Extractor("lin", torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 4)), "dlib", 32, 4), 0.1)


def test_momentum_is_adams_beta1(monkeypatch):
    seen = []
    real = engine.ops.tanh_adam_step
    monkeypatch.setattr(engine.ops, "tanh_adam_step", lambda *a, **k: (seen.append(k["beta1"]), real(*a, **k)))
    ext = _toy_extractor()
    x0, M, t = _batch("cpu", B=1)
    a = engine.optimise([ext], x0, [M], [t], settings_for("mid", steps=6, momentum=0.99))
    b = engine.optimise([ext], x0, [M], [t], settings_for("mid", steps=6))
    assert set(seen) == {0.99, 0.9}
    assert not torch.equal(a.best, b.best)
    with pytest.raises(ValueError, match="momentum"):
        settings_for("mid", momentum=1.0)


def test_ghost_thins_the_builtin_dlib_and_refuses_a_functional_graph():
    """The built-ins are shared TorchScript; ghost copies rebuild dlib's eager module privately. SFace's
    imported graph has no nn.Conv2d to thin: a clear error, not a silent plain cloak."""
    from fawkes_fast.extractors import load
    from fawkes_fast.optimize.ghost import Ghost

    dlib = load("dlib")
    g = Ghost(dlib, 0.1)
    g.gens = [torch.Generator().manual_seed(0)]
    chips = torch.rand(1, 3, 150, 150, generator=torch.Generator().manual_seed(1)) * 255
    cos = float((dlib.features(chips) * g.extractor.features(chips)).sum())
    assert 0.5 < cos < 0.99  # a different model, not a different one altogether
    g.p = 1e-9  # no dropout: the eager rebuild is the same network as the TorchScript one
    assert float((dlib.features(chips) * g.extractor.features(chips)).sum()) > 0.99999
    with pytest.raises(ValueError, match="sface has none"):
        Ghost(load("sface"), 0.1)


@pytest.mark.parametrize("target", ["max", "none"])
def test_faces_of_different_sizes_share_a_batch_padded(target):
    """Crops of 48 and 32 px zero-padded to 48 (FaceBatch.select): each face's step (loss, DSSIM over its
    own boxes and crop, gradient) is the one it has in a batch of its own size, the padding gets no
    gradient, and a whole optimisation keeps the padding still and each face within its budget."""
    from fawkes_fast.batch import FaceBatch

    ext = _toy_extractor()
    x0, M, t = _batch("cpu", B=2)
    small = x0[1, :, :32, :32].clone()
    Ms = M[1:].clone()
    Ms[:, :, 2] = 1.0  # the small face's chip footprint stays inside its 32 px
    # fp32: the padding is under test, to fp32's tolerance; bf16 (mid's step precision) rounds a 1e-7
    # difference of summation order between batch shapes into a whole bf16 step now and then
    s = settings_for("mid", steps=20, precision="fp32")
    untargeted = target == "none"
    boxes = [np.array([[8, 8, 40, 40]]), np.array([[4, 4, 28, 28]])]  # budget boxes inside each crop
    fb = FaceBatch(photos=[], regions=[], boxes=[], crops=[x0[0], small], mats=[torch.cat([M[:1], Ms])],
                   clean=[t], targets=[t])
    xp, mats, targets, _, sizes = fb.select([0, 1])
    assert xp.shape == (2, 3, 48, 48) and sizes == [48, 32] and torch.equal(xp[1, :, :32, :32], small)
    assert fb.select([0])[-1] is None and fb.select([1])[0].shape == (1, 3, 32, 32)  # one size: no padding

    def problem(x, m, tt, b, seeds, sz=None):
        return engine._Problem([ext], x, [m], [tt], s, untargeted, seeds, None, b, None, sz)

    padded = problem(xp, mats[0], targets[0], boxes, [3, 4], sizes)
    own = [problem(x0[:1], M[:1], t[:1], boxes[:1], [3]), problem(small[None], Ms, t[1:], boxes[1:], [4])]
    start = padded.start()
    for r, n in enumerate(sizes):  # untargeted: the same seeded shake as in a batch of its own size
        assert torch.equal(start[r, :, :n, :n], own[r].start()[0])
    # a change mostly outside the budget boxes, so that the whole crop's DSSIM is the one that binds
    outside = torch.ones(2, 1, 48, 48)
    for r, (l, tp, rr, b) in enumerate(bx[0] for bx in boxes):
        outside[r, :, tp:b, l:rr] = 0.2
    shake = start + torch.randn(xp.shape, generator=torch.Generator().manual_seed(0)) * 8 * outside * padded.inside
    feat, dss, _, g = padded.forward(shake, torch.arange(2), [0, 1])
    assert g[1, :, 32:, :].abs().max() == 0 and g[1, :, :, 32:].abs().max() == 0
    for r, n in enumerate(sizes):
        f1, d1, _, g1 = own[r].forward(shake[r:r + 1, :, :n, :n].contiguous(), torch.arange(1), [0])
        assert torch.allclose(feat[r], f1[0], rtol=1e-5) and torch.allclose(dss[r], d1[0], atol=1e-6)
        assert torch.allclose(g[r, :, :n, :n], g1[0], atol=1e-5 * float(g1.abs().max()))

    both = engine.optimise([ext], xp, mats, targets, s, seeds=[3, 4], untargeted=untargeted, sizes=sizes,
                           boxes=boxes)
    assert both.best[1, :, 32:, :].abs().max() < 1e-3 and both.best[1, :, :, 32:].abs().max() < 1e-3
    assert (both.dssim <= s.rho * s.safety).all()
    assert (both.best[1, :, :32, :32] - small).abs().max() > 1.0  # the small face was cloaked


def test_mixed_size_groups_sort_largest_first_and_keep_photos_apart():
    from types import SimpleNamespace

    from fawkes_fast.batch import FaceBatch

    regions = [SimpleNamespace(work=w) for w in (96, 160, 96, 128, 64)]
    fb = FaceBatch(photos=[], regions=regions, boxes=[], crops=[], mats=[], clean=[], owner=[0, 0, 0, 1, 1])
    assert fb.groups(8, across_photos=False) == [[0, 2], [1], [3], [4]]
    assert fb.groups(8, across_photos=False, mixed_sizes=True) == [[1, 0, 2], [3, 4]]
    assert fb.groups(8, across_photos=True, mixed_sizes=True, max_faces=4) == [[1, 3, 0, 2], [4]]
