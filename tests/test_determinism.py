"""Same seed, same pixels on a busy machine, and with any number of torch threads (issue #23).

Each test makes its second call while two other processes keep both cores busy (`cpu_burner`). On
the CPU a cloak's pixels do not depend on the number of torch threads either, so a 1-thread Ray actor,
the server and a 2-thread local run give the same bytes. The last tests pin down each op that once
summed in an order set by the thread count (found by `bench/determinism.py --ops`).
"""
from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from conftest import lfw_image

fawkes_fast = pytest.importorskip("fawkes_fast")


@contextmanager
def torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def photos(lfw_dir):
    from fawkes_fast.io.images import load_image

    return [load_image(lfw_image(name, i)) for name, i in (("Aaron_Sorkin", 1), ("Abdullah_Gul", 2), ("Adam_Sandler", 1))]


@pytest.fixture(scope="module")
def cloaker():
    return fawkes_fast.Cloaker(mode="low", device="cpu", steps=12)  # enough steps to diverge, few for speed


def png(cloaker, images) -> list[bytes]:
    return [r.encoded for r in cloaker.cloak(images, seed=9, format="png")]


def test_two_calls_in_one_process_give_the_same_bytes_under_load(cloaker, photos, cpu_burner):
    first = png(cloaker, photos[:1])
    with cpu_burner():
        again = [png(cloaker, photos[:1]) for _ in range(2)]
    assert again == [first, first]


def test_one_thread_and_two_give_the_same_bytes(cloaker, photos, cpu_burner):
    with torch_threads(1):
        one = png(cloaker, photos)
    with torch_threads(2), cpu_burner():
        two = png(cloaker, photos)
    assert one == two


def test_a_photo_alone_with_one_thread_equals_it_batched_with_two(cloaker, photos, cpu_burner):
    """A 1-CPU Ray actor cloaks a photo in a small batch, a local run in a larger one."""
    with torch_threads(1):
        alone = png(cloaker, photos[1:2])
    with torch_threads(2), cpu_burner():
        batched = png(cloaker, photos)
    assert batched[1] == alone[0]


# ---------------------------------------------------------------- the ops that followed the thread count

def _twice(fn, cpu_burner):
    """fn() with 1 thread, then with 2 while the cores are busy."""
    with torch_threads(1):
        one = fn()
    with torch_threads(2), cpu_burner():
        two = fn()
    return one, two


def test_dlib_features_and_their_gradient_do_not_follow_the_thread_count(cpu_burner):
    """For one chip, oneDNN's backward of the strided stem and MKL's channels-last products in the
    128-to-256 block, and for five, MKL's product in the last layer, once summed in a thread-count order."""
    from fawkes_fast.extractors import load

    ext = load("dlib", "cpu")
    weights = torch.linspace(-1, 1, ext.dim)

    def run():
        out = []
        for batch in (1, 2, 3, 5):
            x = (torch.rand(batch, 3, 150, 150, generator=torch.Generator().manual_seed(batch)) * 255).requires_grad_(True)
            features = ext.features(x)
            (grad,) = torch.autograd.grad((features * weights).sum(), x)
            out += [features.detach(), grad]
        return out

    one, two = _twice(run, cpu_burner)
    assert all(torch.equal(a, b) for a, b in zip(one, two))


def test_ssim_does_not_follow_the_thread_count(cpu_burner):
    """The fused SSIM added its row blocks' sums in blocks sized to the thread count (float64 shows it)."""
    from fawkes_fast import ops

    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 224, 224, generator=g, dtype=torch.float64) * 255
    y = (x + torch.randn(x.shape, generator=g, dtype=torch.float64) * 4).clamp(0, 255)
    sides = (100, 150, 200, 224)
    one, two = _twice(lambda: [ops.ssim(x[..., :n, :n], y[..., :n, :n]) for n in sides], cpu_burner)
    assert all(torch.equal(a, b) for a, b in zip(one, two))


def test_colour_excess_does_not_follow_the_thread_count(cpu_burner):
    """One face's whole ΔE map summed in one reduction was split among the threads."""
    from fawkes_fast.optimize.colour import colour_excess

    maps = torch.rand(8, 1, 224, 224, generator=torch.Generator().manual_seed(0)) * 8
    boxes = torch.tensor([[[0, 0, 224, 224]]])
    one, two = _twice(lambda: [colour_excess(m, boxes, 10.0, 4.0) for m in maps], cpu_burner)
    assert all(torch.equal(a, b) for a, b in zip(one, two))
