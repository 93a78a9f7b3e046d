"""The optimiser's two ways of computing a step: the eager one, which skips frozen faces, and the
whole-batch one that a CUDA graph replays. Both must give the same cloaks."""
from __future__ import annotations

import warnings

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
