"""Transfer options of the engine (optimize/transforms.py): JPEG-like quantisation against
PIL's JPEG, the matrix jitter, and that `diversity`/`flip` cloaks still keep the budget."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from fawkes_fast.optimize.transforms import diversify, jitter_mats, jpeg_like


def _photo_patch(seed=0, size=64):
    """A smooth, photo-like patch (JPEG behaves differently on white noise)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, 8, 8, generator=g) * 255
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    return (x + torch.randn(x.shape, generator=g) * 4).clamp(0, 255).round()


@pytest.mark.parametrize("quality", [90, 75, 50])
def test_jpeg_like_tracks_pil_jpeg(quality):
    x = _photo_patch()
    img = x[0].permute(1, 2, 0).numpy().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality, subsampling=0)
    ref = np.asarray(Image.open(buf)).astype(np.float64)
    ours = jpeg_like(x, quality)[0].permute(1, 2, 0).numpy()
    change = np.abs(ref - img).mean()
    assert change > 0.5  # JPEG really changed the patch
    assert np.abs(ours - ref).mean() < 0.6 * change  # and we land much nearer PIL's result than the input


def test_jpeg_like_passes_gradients_straight_through():
    x = _photo_patch(1, 30).requires_grad_(True)  # not a multiple of 8: padded and cropped
    y = jpeg_like(x, 75)
    assert y.shape == x.shape
    y.sum().backward()
    assert torch.allclose(x.grad, torch.ones_like(x.grad), atol=1e-4)


def test_jitter_is_identity_at_zero_strength_and_bounded_otherwise():
    m = torch.tensor([[[1.5, 0.1, 10.0], [-0.1, 1.5, 20.0]]]).repeat(64, 1, 1)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(jitter_mats(m, 150, 0.0, g), m)
    j = jitter_mats(m, 150, 1.0, g)
    scale = j[:, 0, 0] / m[:, 0, 0]
    assert (scale - 1).abs().max() <= 0.06 + 1e-6 and (scale - 1).abs().max() > 0.01
    centre = torch.tensor([74.5, 74.5, 1.0])
    moved = (j @ centre - m @ centre).norm(dim=1)  # the chip centre moves by the shift only
    assert moved.max() <= 3.0 * 2 ** 0.5 * 1.52 + 1e-4 and moved.max() > 0.5


def test_diversify_keeps_shape_range_and_is_seeded():
    x = _photo_patch(2, 150)
    a = diversify(x, 1.0, torch.Generator().manual_seed(3))
    b = diversify(x, 1.0, torch.Generator().manual_seed(3))
    assert a.shape == x.shape and torch.equal(a, b)
    assert a.min() > -20 and a.max() < 275


def test_settings_accept_transfer_options():
    from fawkes_fast.optimize.modes import settings_for

    s = settings_for("paper", diversity=1.0, flip=True, blur_copy=1.5)
    assert s.diversity == 1.0 and s.flip and s.blur_copy == 1.5 and s.rho == 0.007
    with pytest.raises(TypeError):
        settings_for("mid", divesity=1.0)


def test_per_face_generators_make_a_face_independent_of_its_batch_mates():
    x = torch.cat([_photo_patch(s, 64) for s in range(3)])
    m = torch.tensor([[[1.0, 0.0, 2.0], [0.0, 1.0, 2.0]]]).repeat(3, 1, 1)
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    alone = diversify(x[:1], 1.0, gens([7]))
    batched = diversify(x, 1.0, gens([7, 8, 9]))
    assert torch.equal(alone[0], batched[0])
    assert torch.equal(jitter_mats(m[:1], 64, 1.0, gens([7]))[0], jitter_mats(m, 64, 1.0, gens([7, 1, 2]))[0])


def test_blur_copy_averages_the_plain_and_the_blurred_chips_distances():
    """LowKey's blurred copy: each extractor's distance is the mean of the chip's and its blurred copy's."""
    from fawkes_fast.optimize.engine import _distances
    from fawkes_fast.optimize.transforms import gaussian_blur

    class Ext:  # a linear "recognizer" that sees the blur (sums of a fixed pixel pattern)
        chip_size = 32
        pattern = torch.randn(3 * 32 * 32, 8, generator=torch.Generator().manual_seed(0))

        def features(self, chips, flip=False):
            return torch.nn.functional.normalize(chips.reshape(len(chips), -1) @ self.pattern, dim=1)

    ext, x = Ext(), _photo_patch(2, 32)
    m = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    target = torch.nn.functional.normalize(torch.ones(1, 8), dim=1)
    plain = _distances([ext], x, [m], [target], False)[0]
    blurred = (ext.features(gaussian_blur(x, torch.tensor([1.5]))) - target).pow(2).sum(1)
    both = _distances([ext], x, [m], [target], False, blur_copy=1.5)[0]
    assert not torch.allclose(plain, blurred)
    assert torch.allclose(both, (plain + blurred) / 2, atol=1e-6)
