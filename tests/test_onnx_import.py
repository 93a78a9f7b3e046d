"""The ONNX -> torch importer on small synthetic graphs, against hand-written torch/numpy."""
from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh

from fawkes_fast.extractors.onnx_face import OnnxFaceSpec, wrap_onnx_face_model
from fawkes_fast.extractors.onnx_import import SUPPORTED_OPS, onnx_to_torch

RNG = np.random.default_rng(1234)


def _f32(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _model(nodes, inputs, outputs, inits, opset=13):
    g = h.make_graph(nodes, "g", inputs, outputs, [nh.from_array(v, k) for k, v in inits.items()])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
    onnx.checker.check_model(m)
    return m


def _vi(name, shape, dtype=TP.FLOAT):
    return h.make_tensor_value_info(name, dtype, shape)


def _ops(module):
    return [st.op_type for st in module._steps]


# --- a small CNN: conv+bn+prelu+add+pools+flatten+gemm+reshape ---------------------------------

CNN = dict(
    W1=_f32(4, 3, 3, 3), B1=_f32(4), gamma=_f32(4) + 1.5, beta=_f32(4), mean=_f32(4),
    var=np.abs(_f32(4)) + 0.5, slope=(_f32(4, 1, 1) * 0.2), W2=_f32(4, 3, 1, 1), Wg=_f32(10, 64, scale=0.1),
    bg=_f32(10), shape=np.array([1, 2, 5], np.int64),
)


def _cnn_model():
    nodes = [
        h.make_node("Conv", ["x", "W1", "B1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        h.make_node("BatchNormalization", ["c1", "gamma", "beta", "mean", "var"], ["b1"], epsilon=1e-3, name="bn1"),
        h.make_node("PRelu", ["b1", "slope"], ["p1"]),
        h.make_node("Conv", ["x", "W2"], ["c2"]),
        h.make_node("Add", ["p1", "c2"], ["a"]),
        h.make_node("MaxPool", ["a"], ["mp"], kernel_shape=[2, 2], strides=[2, 2]),
        h.make_node("AveragePool", ["mp"], ["ap"], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1],
                    count_include_pad=0),
        h.make_node("Flatten", ["ap"], ["f"]),
        h.make_node("Gemm", ["f", "Wg", "bg"], ["g"], transB=1),
        h.make_node("Reshape", ["g", "shape"], ["y"]),  # hard-coded batch 1
        h.make_node("GlobalAveragePool", ["a"], ["gap"]),
    ]
    return _model(nodes, [_vi("x", [1, 3, 8, 8])], [_vi("y", [1, 2, 5]), _vi("gap", [1, 4, 1, 1])], CNN)


def _cnn_expected(x):
    t = {k: torch.from_numpy(v) for k, v in CNN.items()}
    c1 = F.conv2d(x, t["W1"], t["B1"], padding=1)
    b1 = (c1 - t["mean"][:, None, None]) / torch.sqrt(t["var"][:, None, None] + 1e-3) * t["gamma"][:, None, None] \
        + t["beta"][:, None, None]
    p1 = torch.where(b1 >= 0, b1, b1 * t["slope"])
    a = p1 + F.conv2d(x, t["W2"])
    mp = F.max_pool2d(a, 2, 2)
    ap = F.avg_pool2d(mp, 3, 1, 1, count_include_pad=False)
    g = ap.flatten(1) @ t["Wg"].T + t["bg"]
    return g.reshape(x.shape[0], 2, 5), a.mean(dim=(2, 3), keepdim=True)


@pytest.mark.parametrize("fold", [True, False])
@pytest.mark.parametrize("batch", [1, 3])
def test_small_cnn_matches_torch(fold, batch):
    m = onnx_to_torch(_cnn_model(), fold_batchnorm=fold)
    assert ("BatchNormalization" in _ops(m)) is (not fold)
    x = torch.from_numpy(_f32(batch, 3, 8, 8))
    y, gap = m(x)
    ey, egap = _cnn_expected(x)
    assert y.shape == (batch, 2, 5)
    torch.testing.assert_close(y, ey, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gap, egap, rtol=1e-4, atol=1e-5)


def test_trace_channels_last_and_gradient():
    m = onnx_to_torch(_cnn_model())
    assert not any(p.requires_grad for p in m.parameters())
    x = torch.from_numpy(_f32(2, 3, 8, 8))
    with torch.no_grad():
        ref = m(x)[0]
        traced = torch.jit.trace(m, x, check_trace=False)
        torch.testing.assert_close(traced(x)[0], ref)
        x5 = torch.from_numpy(_f32(5, 3, 8, 8))
        torch.testing.assert_close(traced(x5)[0], m(x5)[0])  # batch size is not baked in
        m_cl = onnx_to_torch(_cnn_model()).to(memory_format=torch.channels_last)
        out_cl = m_cl(x.contiguous(memory_format=torch.channels_last))[0]
        torch.testing.assert_close(out_cl, ref, rtol=1e-5, atol=1e-5)
    xg = x.clone().requires_grad_(True)
    m(xg)[0].square().sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0


# --- quantised weights ---------------------------------------------------------------------------

def test_dequantize_per_axis_conv_weight():
    wq = RNG.integers(-128, 128, size=(4, 3, 3, 3), dtype=np.int8)
    scale = (np.abs(_f32(4)) * 0.01 + 0.001).astype(np.float32)
    zp = RNG.integers(-5, 5, size=4, dtype=np.int8)
    nodes = [h.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0),
             h.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], strides=[2, 2])]
    m = _model(nodes, [_vi("x", [1, 3, 9, 9])], [_vi("y", [1, 4, 5, 5])], dict(wq=wq, ws=scale, wz=zp))
    mod = onnx_to_torch(m)
    assert _ops(mod) == ["Conv"]  # dequantisation folded away at import
    w = (wq.astype(np.float32) - zp[:, None, None, None]) * scale[:, None, None, None]
    x = torch.from_numpy(_f32(2, 3, 9, 9))
    torch.testing.assert_close(mod(x), F.conv2d(x, torch.from_numpy(w), padding=1, stride=2), rtol=1e-5, atol=1e-5)


def test_dequantize_blocked_and_per_tensor():
    # opset-21 blocked weights, laid out like OpenCV's int8bq models: (Cout, K) int8 + reshape
    wq = RNG.integers(-128, 128, size=(4, 27), dtype=np.int8)
    scale = (np.abs(_f32(4, 2)) * 0.01 + 0.001).astype(np.float32)
    zp = RNG.integers(-20, 20, size=(4, 2), dtype=np.int8)
    bq = RNG.integers(0, 256, size=4, dtype=np.uint8)
    nodes = [h.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wflat"], axis=1, block_size=16),
             h.make_node("Reshape", ["wflat", "wshape"], ["w"]),
             h.make_node("DequantizeLinear", ["bq", "bs", "bz"], ["b"]),
             h.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])]
    inits = dict(wq=wq, ws=scale, wz=zp, wshape=np.array([4, 3, 3, 3], np.int64), bq=bq,
                 bs=np.array(0.05, np.float32), bz=np.array(128, np.uint8))
    m = _model(nodes, [_vi("x", [1, 3, 6, 6])], [_vi("y", [1, 4, 6, 6])], inits, opset=21)
    cols = np.repeat(np.arange(2), 16)[:27]
    w = ((wq.astype(np.float32) - zp[:, cols]) * scale[:, cols]).reshape(4, 3, 3, 3)
    b = (bq.astype(np.float32) - 128) * 0.05
    x = torch.from_numpy(_f32(1, 3, 6, 6))
    expected = F.conv2d(x, torch.from_numpy(w), torch.from_numpy(b), padding=1)
    torch.testing.assert_close(onnx_to_torch(m)(x), expected, rtol=1e-5, atol=1e-5)


def _qdq_model():
    nodes = [h.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
             h.make_node("QuantizeLinear", ["c", "s", "z"], ["q"]),
             h.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    inits = dict(W=_f32(4, 3, 3, 3), s=np.array(0.05, np.float32), z=np.array(3, np.int8))
    return _model(nodes, [_vi("x", [1, 3, 8, 8])], [_vi("y", [1, 4, 8, 8])], inits), inits


def test_activation_qdq_emulate_and_remove():
    m, inits = _qdq_model()
    x = torch.from_numpy(_f32(1, 3, 8, 8))
    c = F.conv2d(x, torch.from_numpy(inits["W"]), padding=1)
    fq = (torch.clamp(torch.round(c / 0.05) + 3, -128, 127) - 3) * 0.05
    emulate = onnx_to_torch(m, activation_qdq="emulate")
    torch.testing.assert_close(emulate(x), fq, rtol=0, atol=1e-6)
    torch.testing.assert_close(onnx_to_torch(m, activation_qdq="remove")(x), c, rtol=1e-5, atol=1e-5)
    xg = x.clone().requires_grad_(True)
    emulate(xg).sum().backward()  # straight-through estimator: a useful gradient through the rounding
    assert xg.grad.abs().sum() > 0


def test_activation_qdq_emulation_matches_opencv(tmp_path):
    cv2 = pytest.importorskip("cv2")
    m, _ = _qdq_model()
    path = tmp_path / "qdq.onnx"
    onnx.save(m, str(path))
    x = _f32(1, 3, 8, 8)
    try:
        net = cv2.dnn.readNet(str(path))
        net.setInput(x)
        ref = net.forward()
    except cv2.error as e:  # pragma: no cover - depends on the OpenCV build
        pytest.skip(f"OpenCV cannot run the QDQ graph: {e}")
    with torch.no_grad():
        emu = onnx_to_torch(m)(torch.from_numpy(x)).numpy()
        rem = onnx_to_torch(m, activation_qdq="remove")(torch.from_numpy(x)).numpy()
    # OpenCV really quantises activations: emulation agrees to within one quantum, removal does not
    assert np.abs(emu - ref).max() <= 0.05 + 1e-5
    assert np.abs(emu - ref).mean() < np.abs(rem - ref).mean()


# --- assorted ops, incl. a PyTorch-export-style dynamic flatten ----------------------------------

def test_assorted_ops():
    inits = dict(M=_f32(12, 6), two=np.array(2.0, np.float32), ax0=np.array([0], np.int64),
                 ax1=np.array([1], np.int64), minus1=np.array([-1], np.int64),
                 pads=np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64), lo=np.array(-0.5, np.float32),
                 hi=np.array(0.5, np.float32), sub=_f32(1, 3, 1, 1))
    nodes = [
        h.make_node("Sub", ["x", "sub"], ["s0"]),
        h.make_node("Div", ["s0", "two"], ["s1"]),
        h.make_node("Pad", ["s1", "pads"], ["pd"], mode="reflect"),              # (N,3,7,7)
        h.make_node("Transpose", ["pd"], ["tr"], perm=[0, 2, 3, 1]),            # (N,7,7,3)
        h.make_node("Concat", ["tr", "tr"], ["cat"], axis=3),                  # (N,7,7,6)
        h.make_node("LeakyRelu", ["cat"], ["lr"], alpha=0.2),
        h.make_node("Clip", ["lr", "lo", "hi"], ["cl"]),
        h.make_node("ReduceMean", ["cl"], ["rm"], axes=[1], keepdims=0),       # (N,7,6)
        h.make_node("Shape", ["rm"], ["shp"]),
        h.make_node("Gather", ["shp", "ax0"], ["n"], axis=0),
        h.make_node("Concat", ["n", "minus1"], ["newshape"], axis=0),
        h.make_node("Reshape", ["rm", "newshape"], ["fl"]),                    # (N,42)
        h.make_node("Sigmoid", ["fl"], ["sg"]),
        h.make_node("Tanh", ["fl"], ["th"]),
        h.make_node("Mul", ["sg", "th"], ["mu"]),
        h.make_node("Unsqueeze", ["mu", "ax1"], ["us"]),                       # (N,1,42)
        h.make_node("Squeeze", ["us", "ax1"], ["sq"]),
        h.make_node("Split", ["sq"], ["sp1", "sp2"], axis=1),                  # 2 x (N,21)
        h.make_node("Slice", ["sp1", "ax0", "ax1"], ["sl"]),                   # unused branch
        h.make_node("Concat", ["sp2", "sp1"], ["cc"], axis=1),
        h.make_node("Flatten", ["cc"], ["cc2"]),
        h.make_node("Softmax", ["cc2"], ["sm"], axis=-1),
        h.make_node("Reshape", ["sm", "r12"], ["tr7"]),
        h.make_node("MatMul", ["tr7", "M"], ["mm"]),
        h.make_node("LpNormalization", ["mm"], ["y"], axis=-1, p=2),
    ]
    inits["r12"] = np.array([-1, 7, 6], np.int64)
    inits["M"] = _f32(6, 5)
    m = _model(nodes, [_vi("x", ["N", 3, 4, 4])], [_vi("y", ["N", 7, 5])], inits)
    mod = onnx_to_torch(m)
    x = torch.from_numpy(_f32(3, 3, 4, 4))
    t = {k: torch.from_numpy(v) for k, v in inits.items()}
    s1 = (x - t["sub"]) / 2
    pd = F.pad(s1, [2, 1, 1, 2], mode="reflect")
    cat = torch.cat([pd.permute(0, 2, 3, 1)] * 2, dim=3)
    rm = F.leaky_relu(cat, 0.2).clamp(-0.5, 0.5).mean(dim=1)
    fl = rm.reshape(3, -1)
    mu = torch.sigmoid(fl) * torch.tanh(fl)
    cc = torch.cat([mu[:, 21:], mu[:, :21]], dim=1)
    mm = torch.softmax(cc, -1).reshape(-1, 7, 6) @ t["M"]
    expected = mm / mm.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(mod(x), expected, rtol=1e-5, atol=1e-6)
    traced = torch.jit.trace(mod, x, check_trace=False)
    x2 = torch.from_numpy(_f32(5, 3, 4, 4))  # Shape->Gather->Concat->Reshape keeps the batch symbolic
    torch.testing.assert_close(traced(x2), mod(x2))


def test_torch_exported_model():
    """A model exported by torch.onnx (TorchScript exporter): conv/bn/prelu/depthwise/relu6/pools/
    hardswish/linear/F.normalize (ReduceL2, Clip, Shape->Expand, Div), at other batch sizes."""
    import io
    import warnings

    import torch.nn as nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.b1, self.p1 = nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.PReLU(8)
            self.dw, self.b2 = nn.Conv2d(8, 8, 3, 1, 1, groups=8), nn.BatchNorm2d(8)
            self.c3, self.fc, self.fc2 = nn.Conv2d(8, 16, 1), nn.Linear(16 * 4 * 4, 10), nn.Linear(10, 6)

        def forward(self, x):
            y = self.p1(self.b1(self.c1(x)))
            y = y + F.relu6(self.b2(self.dw(y)))
            y = F.adaptive_avg_pool2d(F.max_pool2d(self.c3(y), 2, ceil_mode=True), 4)
            y = F.hardswish(y).view(y.size(0), -1)
            return F.normalize(self.fc2(torch.sigmoid(self.fc(y)) * 2 - 1), dim=1)

    torch.manual_seed(0)
    net = Net().eval()
    for bn in (net.b1, net.b2):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 1.5)
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (torch.randn(2, 3, 30, 30),), buf, dynamo=False, opset_version=13,
                              input_names=["x"], output_names=["y"])
    except Exception as e:  # pragma: no cover - exporter availability varies
        pytest.skip(f"torch.onnx.export unavailable: {e}")
    mod = onnx_to_torch(onnx.load_from_string(buf.getvalue()))
    assert "BatchNormalization" not in _ops(mod)
    x = torch.randn(5, 3, 30, 30)
    with torch.no_grad():
        torch.testing.assert_close(mod(x), net(x), rtol=1e-5, atol=1e-5)
        traced = torch.jit.trace(mod, torch.randn(2, 3, 30, 30), check_trace=False)
        torch.testing.assert_close(traced(x), net(x), rtol=1e-5, atol=1e-5)


# --- errors -------------------------------------------------------------------------------

def test_unsupported_op_names_op_and_node():
    nodes = [h.make_node("LRN", ["x"], ["y"], size=3, name="my_lrn_node")]
    m = _model(nodes, [_vi("x", [1, 3, 4, 4])], [_vi("y", [1, 3, 4, 4])], {})
    with pytest.raises(NotImplementedError, match=r"LRN.*my_lrn_node"):
        onnx_to_torch(m)
    assert "LRN" not in SUPPORTED_OPS and "Conv" in SUPPORTED_OPS


def test_corrupt_file_raises_valueerror(tmp_path):
    good = tmp_path / "good.onnx"
    onnx.save(_cnn_model(), str(good))
    data = good.read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(os.urandom(4096))
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    for bad in (truncated, garbage, empty):
        with pytest.raises(ValueError, match="ONNX model"):
            onnx_to_torch(bad)
    assert isinstance(onnx_to_torch(good), torch.nn.Module)
    with pytest.raises(FileNotFoundError):
        onnx_to_torch(tmp_path / "missing.onnx")


# --- face-model spec ------------------------------------------------------------------------------

def test_face_spec_json_roundtrip_and_wrapper(tmp_path):
    spec = OnnxFaceSpec(input_size=4, template="arcface", mean=(127.5, 120.0, 110.0), std=(128.0, 64.0, 32.0),
                        channel_order="BGR", embedding_dim=48)
    path = tmp_path / "model.json"
    spec.to_json(path)
    assert json.loads(path.read_text())["channel_order"] == "BGR"
    again = OnnxFaceSpec.from_json(path)
    assert again == spec
    ident = _model([h.make_node("Identity", ["x"], ["y"])], [_vi("x", [1, 3, 4, 4])], [_vi("y", [1, 3, 4, 4])], {})
    wrapped = wrap_onnx_face_model(onnx_to_torch(ident), again)
    chips = torch.rand(2, 3, 4, 4) * 255
    bgr = chips.flip(1)
    expected = (bgr - torch.tensor(spec.mean).reshape(1, 3, 1, 1)) / torch.tensor(spec.std).reshape(1, 3, 1, 1)
    torch.testing.assert_close(wrapped(chips), expected.reshape(2, -1))
    with pytest.raises(ValueError):
        wrapped(torch.rand(2, 3, 5, 5))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"input_size": 112, "template": "mtcnn", "mean": [0, 0, 0], "std": [1, 1, 1],
                               "channel_order": "RGB", "embedding_dim": 128}))
    with pytest.raises(ValueError, match="template"):
        OnnxFaceSpec.from_json(bad)


# --- the spec checked against the model when it loads -------------------------------------------

#: the README's sample spec ("Bring your own model")
README_SPEC = {"input_size": 112, "template": "arcface", "mean": [127.5, 127.5, 127.5],
               "std": [128.0, 128.0, 128.0], "channel_order": "RGB", "embedding_dim": 512}


def face_model_file(folder, dim: int = 128, side: int | None = None, spec: dict | None = None):
    """A tiny face model, `folder/tiny.onnx`: a 1x1 conv to `dim` channels, then global pooling (any
    input size), or with `side` a Gemm that takes only side x side inputs; its spec beside it when given."""
    if side is None:
        nodes = [h.make_node("Conv", ["x", "W"], ["c"]), h.make_node("GlobalAveragePool", ["c"], ["p"]),
                 h.make_node("Flatten", ["p"], ["y"])]
        inits = {"W": _f32(dim, 3, 1, 1, scale=0.01)}
    else:
        nodes = [h.make_node("Flatten", ["x"], ["f"]), h.make_node("Gemm", ["f", "Wg"], ["y"], transB=1)]
        inits = {"Wg": _f32(dim, 3 * side * side, scale=0.001)}
    path = folder / "tiny.onnx"
    onnx.save(_model(nodes, [_vi("x", ["N", 3, side or "H", side or "W"])], [_vi("y", ["N", dim])], inits), str(path))
    if spec is not None:
        (folder / "tiny.json").write_text(json.dumps(spec))
    return path


def test_spec_is_checked_against_the_model_when_it_loads(tmp_path):
    """A 128-d model under the README's sample spec (512) fails at load, naming the field, not per photo
    with a tensor shape error; so does a model that cannot take the spec's input size."""
    from fawkes_fast.extractors import load

    path = face_model_file(tmp_path, dim=128, spec=README_SPEC)
    with pytest.raises(ValueError, match=r"embedding_dim.*512.*128"):
        load(path)
    (tmp_path / "tiny.json").write_text(json.dumps({**README_SPEC, "embedding_dim": 128}))
    ext = load(path)
    assert (ext.name, ext.dim, ext.chip_size) == ("tiny", 128, 112)
    fixed = face_model_file(tmp_path, dim=128, side=96, spec={**README_SPEC, "embedding_dim": 128})
    with pytest.raises(ValueError, match="input_size.*112"):
        load(fixed)
