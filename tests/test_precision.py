"""Reduced-precision extractors (fawkes_fast.optimize.precision): feature parity with fp32 on
real dlib chips cut from LFW photos, gradients, and the shared module left untouched."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import lfw_image, lfw_people
from fawkes_fast.optimize.precision import feature_parity, resolve_dtype, with_precision


@pytest.fixture(scope="module")
def dlib_chips(lfw_dir):
    """(ext, chips): dlib and one 150-px chip per photo for 8 LFW people, cut like the pipeline."""
    from fawkes_fast.extractors import load
    from fawkes_fast.faces.align import warp_chips
    from fawkes_fast.io.images import load_image
    from fawkes_fast.pipeline import FacePipeline

    pipe = FacePipeline(("dlib",), device="cpu")
    ext = load("dlib")
    people = lfw_people(1)
    chips = []
    for name, _ in people[:: len(people) // 12][:12]:
        img = load_image(lfw_image(name, 1))
        faces = pipe.detect(img)
        if faces:
            t = torch.tensor(img).permute(2, 0, 1)[None].float()
            chips.append(warp_chips(t, ext.chip_matrices(faces[0].landmarks[None]), ext.chip_size))
        if len(chips) == 8:
            break
    assert len(chips) == 8, "expected faces in 8 of 12 LFW photos"
    return ext, torch.cat(chips)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_feature_parity_on_lfw_chips(dlib_chips, precision):
    ext, chips = dlib_chips
    cos = feature_parity(ext, chips, precision)
    assert cos.shape == (8,)
    assert cos.min() >= 0.999, cos
    # the parity is measured against something that can fail: other faces are far from 1
    assert F.cosine_similarity(ext.module(chips), ext.module(chips.roll(1, 0))).max() < 0.99


@pytest.mark.parametrize("precision, floor", [("bf16", 0.97), ("fp16", 0.995)])
def test_gradient_reaches_chips_in_fp32(dlib_chips, precision, floor):
    """The step's gradient keeps its direction, to what the precision allows: bf16 keeps 8 bits of
    mantissa, and its gradients come out at cosines of 0.977-0.990 to fp32 on these chips (fp16,
    10 bits: 0.997-0.999). Whether that changes what a cloak protects is measured (bench/RESULTS.md §14), not
    assumed from this number."""
    ext, chips = dlib_chips
    fast = with_precision(ext, precision)
    target = F.normalize(torch.randn(len(chips), ext.dim, generator=torch.Generator().manual_seed(0)), dim=1)
    grads = []
    for e in (ext, fast):
        x = chips.clone().requires_grad_()
        (e.features(x) - target).pow(2).sum().backward()
        grads.append(x.grad)
    assert grads[1].dtype == torch.float32
    cos = F.cosine_similarity(grads[0].flatten(1), grads[1].flatten(1))
    assert cos.min() > floor, cos
    assert not torch.equal(grads[0], grads[1])  # reduced precision really ran (a traced graph stays fp32)


def test_autocast_reaches_only_what_it_can(dlib_chips):
    """The dlib family runs from its eager twin (a traced graph's convolutions ignore autocast); a
    TorchScript model outside it comes back as it is, rather than failing on bf16 input."""
    from fawkes_fast.extractors import load
    from fawkes_fast.model_files import ModelMissingError

    ext, chips = dlib_chips
    fast = with_precision(ext, "bf16", channels_last=False)
    assert not isinstance(fast.module.inner, torch.jit.ScriptModule)
    with torch.no_grad():
        assert not torch.equal(fast.module(chips[:2]), ext.module(chips[:2]).float())
    try:
        sface = load("sface")
    except ModelMissingError as e:
        pytest.skip(str(e))
    assert with_precision(sface, "bf16") is sface


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_weights_stored_cast_give_autocasts_bits(dlib_chips, precision):
    """The step's module keeps its conv weights in the reduced dtype (and on a CPU channels_last), so
    autocast casts only activations: features and chip gradients are bit for bit those of autocast
    over the float32 module, at batch sizes 1, 3 and 8."""
    from fawkes_fast.extractors.loading import eager_builtin
    from fawkes_fast.optimize.precision import AutocastModule

    ext, chips = dlib_chips
    dtype = resolve_dtype(precision)
    stored = with_precision(ext, precision, channels_last=False).module
    reference = AutocastModule(eager_builtin("dlib", "cpu"), dtype, channels_last=False)
    conv_params = [w for m in stored.inner.modules() if isinstance(m, torch.nn.Conv2d) for w in m.parameters()]
    assert conv_params and {w.dtype for w in conv_params} == {dtype}
    assert all(p.dtype == torch.float32 for p in eager_builtin("dlib", "cpu").parameters())  # shared one untouched
    weights = torch.linspace(-1, 1, ext.dim)
    for n in (1, 3, 8):
        out = []
        for module in (stored, reference):
            x = chips[:n].clone().requires_grad_(True)
            y = module(x)
            out += [y.detach(), torch.autograd.grad((y * weights).sum(), x)[0]]
        assert torch.equal(out[0], out[2]) and torch.equal(out[1], out[3]), n


def test_shared_module_untouched(dlib_chips):
    ext, chips = dlib_chips
    module = ext.module
    layout = [(p.data_ptr(), p.stride()) for p in module.parameters()]
    fast = with_precision(ext, "bf16")
    assert ext.module is module and fast.module is not module
    assert [(p.data_ptr(), p.stride()) for p in module.parameters()] == layout  # the copy was converted
    assert any(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
               for p in fast.module.parameters())
    assert fast.dim == ext.dim and fast.chip_size == ext.chip_size and fast.template == ext.template
    assert with_precision(ext, "fp32") is ext


def test_resolve_dtype():
    assert resolve_dtype("fp32") is None and resolve_dtype(None) is None
    assert resolve_dtype("bf16") == torch.bfloat16 and resolve_dtype(torch.float16) == torch.float16
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_dtype("int8")
    with pytest.raises(ValueError, match="bfloat16 or float16"):
        resolve_dtype(torch.float64)
