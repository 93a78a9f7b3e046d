"""The GraphDef importer on small hand-built TensorFlow graphs, each op checked against an
independent NHWC computation (TensorFlow itself is not needed)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

graph_pb2 = pytest.importorskip("tensorboard.compat.proto.graph_pb2")
from tensorboard.compat.proto import attr_value_pb2, node_def_pb2, tensor_pb2, tensor_shape_pb2  # noqa: E402

from fawkes_fast.extractors.graphdef_import import graphdef_to_torch, tensor_to_numpy  # noqa: E402
from fawkes_fast.extractors.graphdef_ops import same_padding  # noqa: E402

_ENUM = {np.dtype(np.float32): 1, np.dtype(np.int32): 3}


def _tensor(arr: np.ndarray) -> tensor_pb2.TensorProto:
    arr = np.asarray(arr)
    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in arr.shape])
    return tensor_pb2.TensorProto(dtype=_ENUM[arr.dtype], tensor_shape=shape, tensor_content=arr.tobytes())


def _attr(v) -> attr_value_pb2.AttrValue:
    if isinstance(v, bool):
        return attr_value_pb2.AttrValue(b=v)
    if isinstance(v, int):
        return attr_value_pb2.AttrValue(i=v)
    if isinstance(v, float):
        return attr_value_pb2.AttrValue(f=v)
    if isinstance(v, str):
        return attr_value_pb2.AttrValue(s=v.encode())
    if isinstance(v, np.ndarray):
        return attr_value_pb2.AttrValue(tensor=_tensor(v))
    return attr_value_pb2.AttrValue(list=attr_value_pb2.AttrValue.ListValue(i=list(v)))


class Graph:
    def __init__(self, shape=(1, 6, 6, 3)):
        self.g = graph_pb2.GraphDef()
        dims = [tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in shape]
        ph = node_def_pb2.NodeDef(name="input", op="Placeholder")
        ph.attr["shape"].CopyFrom(attr_value_pb2.AttrValue(shape=tensor_shape_pb2.TensorShapeProto(dim=dims)))
        self.g.node.append(ph)  # append copies: the node is complete first

    def node(self, name, op, *inputs, **attrs):
        n = node_def_pb2.NodeDef(name=name, op=op, input=list(inputs))
        for k, v in attrs.items():
            n.attr[k].CopyFrom(_attr(v))
        self.g.node.append(n)

    def const(self, name, arr):
        self.node(name, "Const", value=np.asarray(arr))
        return name


RNG = np.random.default_rng(0)


def _x(shape=(2, 6, 6, 3)) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def _run(graph: Graph, x_nhwc: np.ndarray, output: str) -> np.ndarray:
    m = graphdef_to_torch(graph.g, output=output)
    y = m(torch.from_numpy(x_nhwc).permute(0, 3, 1, 2))
    return (y.permute(0, 2, 3, 1) if y.dim() == 4 else y).detach().numpy()


def _conv_nhwc(x, w, stride, pads):
    """Plain NHWC convolution with explicit (top, bottom, left, right) padding, in numpy."""
    (t, b, l, r), (kh, kw, _, co) = pads, w.shape
    xp = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)))
    oh, ow = (xp.shape[1] - kh) // stride + 1, (xp.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], oh, ow, co), np.float32)
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :]
            out[:, i, j] = np.einsum("nhwc,hwco->no", patch, w)
    return out


def test_same_padding_puts_the_extra_pixel_after():
    assert same_padding(6, 3, 2) == (0, 1)  # TF: out 3, total 1 -> all of it at the end
    assert same_padding(7, 3, 2) == (1, 1)
    assert same_padding(5, 7, 1) == (3, 3)
    assert same_padding(8, 4, 1) == (1, 2)


@pytest.mark.parametrize("padding,stride,pads", [("SAME", 2, (0, 1, 0, 1)), ("VALID", 1, (0, 0, 0, 0)),
                                                 ("SAME", 1, (1, 1, 1, 1))])
def test_conv_bias_relu(padding, stride, pads):
    g = Graph()
    w, b = _x((3, 3, 3, 4)), _x((4,))
    g.node("conv", "Conv2D", "input:0", g.const("w", w), strides=[1, stride, stride, 1], padding=padding,
           data_format="NHWC", dilations=[1, 1, 1, 1])
    g.node("bias", "BiasAdd", "conv", g.const("b", b))
    g.node("relu", "Relu", "bias")
    x = _x()
    want = np.maximum(_conv_nhwc(x, w, stride, pads) + b, 0)
    np.testing.assert_allclose(_run(g, x, "relu"), want, rtol=1e-5, atol=1e-5)


def test_pools_same_asymmetric():
    g = Graph()
    g.node("max", "MaxPool", "input", ksize=[1, 3, 3, 1], strides=[1, 2, 2, 1], padding="SAME", data_format="NHWC")
    g.node("avg", "AvgPool", "input", ksize=[1, 3, 3, 1], strides=[1, 2, 2, 1], padding="SAME", data_format="NHWC")
    x = _x()
    # TF: 6 px, k 3, s 2 -> windows rows/cols [0:3], [2:5], [4:6] (the last one cut by the border)
    spans = [(0, 3), (2, 5), (4, 6)]
    want_max = np.array([[x[:, a:b, c:d].max((1, 2)) for c, d in spans] for a, b in spans]).transpose(2, 0, 1, 3)
    want_avg = np.array([[x[:, a:b, c:d].mean((1, 2)) for c, d in spans] for a, b in spans]).transpose(2, 0, 1, 3)
    np.testing.assert_allclose(_run(g, x, "max"), want_max, rtol=1e-6)
    np.testing.assert_allclose(_run(g, x, "avg"), want_avg, rtol=1e-5, atol=1e-6)


def test_concat_scale_add_and_batchnorm_on_channels():
    g = Graph()
    g.node("cat", "ConcatV2", "input", "input", g.const("axis", np.array(3, np.int32)), N=2)
    g.node("mul", "Mul", "cat", g.const("s", np.array(0.5, np.float32)))
    g.node("add", "Add", "mul", "cat")
    scale, offset, mean, var = (np.abs(_x((6,))) + 0.1 for _ in range(4))
    g.node("bn", "FusedBatchNorm", "add", *(g.const(k, v) for k, v in
                                          (("sc", scale), ("of", offset), ("mu", mean), ("va", var))),
           epsilon=0.001, is_training=False, data_format="NHWC")
    x = _x()
    cat = np.concatenate([x, x], 3)
    want = (1.5 * cat - mean) / np.sqrt(var + 0.001) * scale + offset
    np.testing.assert_allclose(_run(g, x, "bn"), want, rtol=1e-5, atol=1e-5)


def test_reshape_matmul_and_l2_norm_run_at_any_batch():
    g = Graph((1, 2, 2, 3))
    w, b = _x((12, 5)), _x((5,))
    g.node("flat", "Reshape", "input", g.const("shape", np.array([1, 12], np.int32)))  # hard-codes batch 1
    g.node("mm", "MatMul", "flat", g.const("w", w), transpose_a=False, transpose_b=False)
    g.node("fc", "BiasAdd", "mm", g.const("b", b))
    g.node("sq", "Square", "fc")
    g.node("sum", "Sum", "sq", g.const("axes", np.array([1], np.int32)), keep_dims=True)
    g.node("max", "Maximum", "sum", g.const("eps", np.array(1e-10, np.float32)))
    g.node("rs", "Rsqrt", "max")
    g.node("out", "Mul", "fc", "rs")
    x = _x((3, 2, 2, 3))
    fc = x.reshape(3, 12) @ w + b  # NHWC flattening order
    np.testing.assert_allclose(_run(g, x, "fc"), fc, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_run(g, x, "out"), fc / np.linalg.norm(fc, axis=1, keepdims=True), rtol=1e-5)


def test_trace_and_gradient():
    g = Graph()
    g.node("conv", "Conv2D", "input", g.const("w", _x((3, 3, 3, 2))), strides=[1, 2, 2, 1], padding="SAME",
           data_format="NHWC", dilations=[1, 1, 1, 1])
    m = graphdef_to_torch(g.g, output="conv")
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    m(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    traced = torch.jit.trace(m, torch.randn(2, 3, 6, 6))
    x1 = torch.randn(5, 3, 6, 6)
    torch.testing.assert_close(traced(x1), m(x1))


def test_splat_tensor_values():
    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=3)])
    t = tensor_pb2.TensorProto(dtype=1, float_val=[2.5], tensor_shape=shape)
    np.testing.assert_array_equal(tensor_to_numpy(t), [2.5, 2.5, 2.5])


def test_unsupported_op_and_corrupt_file(tmp_path):
    g = Graph()
    g.node("odd", "Softplus", "input")
    with pytest.raises(NotImplementedError, match="Softplus.*odd"):
        graphdef_to_torch(g.g, output="odd")
    bad = tmp_path / "bad.pb"
    bad.write_bytes(b"\xff\xff not a graph")
    with pytest.raises(ValueError, match="GraphDef"):
        graphdef_to_torch(bad)
    with pytest.raises(FileNotFoundError):
        graphdef_to_torch(tmp_path / "missing.pb")
    with pytest.raises(ValueError, match="no node"):
        graphdef_to_torch(Graph().g, output="nowhere")


def test_layout_helpers_match_torch_conv():
    """The importer's OIHW weights give torch's own conv on a symmetric case."""
    g = Graph()
    w = _x((1, 1, 3, 2))
    g.node("conv", "Conv2D", "input", g.const("w", w), strides=[1, 1, 1, 1], padding="VALID",
           data_format="NHWC", dilations=[1, 1, 1, 1])
    x = _x()
    ref = F.conv2d(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(w).permute(3, 2, 0, 1))
    np.testing.assert_allclose(_run(g, x, "conv"), ref.permute(0, 2, 3, 1).numpy(), rtol=1e-6)
