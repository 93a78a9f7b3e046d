"""A small ONNX -> PyTorch importer, and the spec that turns an ONNX face model into an extractor.

``onnx_to_torch(model)`` reads an ONNX graph (path or ``onnx.ModelProto``) and returns a frozen
``torch.nn.Module`` that runs the same graph with torch ops, in topological order. It needs only
``onnx`` and ``torch`` (no onnxruntime, no torchvision). At import time it:

* folds weight quantisation: a ``DequantizeLinear`` whose inputs are constants (int8/uint8 weights
  with per-tensor, per-axis or opset-21 *blocked* scales and zero-points) becomes a float32 constant;
* treats ``QuantizeLinear -> DequantizeLinear`` pairs on activations (QDQ fake quantisation) as
  ``activation_qdq="emulate"`` (default: round/clamp exactly like a real int8 round trip, which is what
  OpenCV's DNN does, with a straight-through gradient) or ``"remove"`` (identity);
* evaluates every node whose inputs are all constants (``Constant``, ``Reshape`` of weights, shape
  arithmetic on constants ...), removes dead nodes, and folds ``Conv``/``Gemm`` followed by an
  inference ``BatchNormalization`` into one op;
* makes a ``Reshape`` whose constant target shape hard-codes the graph's static batch size take the
  batch size from its input instead, so the module runs at any batch size.

The result is differentiable with respect to its inputs, works with ``torch.jit.trace`` and runs in
``channels_last`` (``module.to(memory_format=torch.channels_last)``). Weights are buffers (frozen).
Supported ops are listed in ``SUPPORTED_OPS``; any other op raises ``NotImplementedError`` naming the
op type and node. ``Shape`` of an activation is computed at run time (traced symbolically for the
batch dimension only where the downstream ops are tensor ops).

Bring-your-own-model spec (JSON)
--------------------------------
An ONNX face recognizer is described by a JSON file (by convention ``<model>.json`` beside
``<model>.onnx``)::

    {
      "input_size": 112,              // chips are input_size x input_size pixels (square)
      "template": "arcface",          // alignment: "arcface" (5-point ArcFace/InsightFace template,
                                      //   as cv2.FaceRecognizerSF.alignCrop) or "dlib" (dlib chip)
      "mean": [127.5, 127.5, 127.5],  // per channel, in the model's channel order, on the 0..255 scale
      "std": [128.0, 128.0, 128.0],   // model input = (pixel - mean) / std
      "channel_order": "RGB",         // "RGB" or "BGR": channel order the model expects
      "embedding_dim": 512            // length of the model's output vector
    }

(JSON has no comments; they are explanations here.) ``wrap_onnx_face_model(module, spec)`` maps
chips that are RGB float32 ``(B, 3, input_size, input_size)`` with values in [0, 255] to the model's
input (channel reordering, then ``(x - mean) / std``) and returns ``(B, embedding_dim)`` raw
(unnormalised) embeddings. Resizing is not done: chips must already be ``input_size`` square.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import numpy_helper

__all__ = ["onnx_to_torch", "OnnxModule", "OnnxFaceSpec", "wrap_onnx_face_model", "SUPPORTED_OPS"]

_INT64_MAX = 2**63 - 1


# --------------------------------------------------------------------------------------------
# op implementations: fn(step, *inputs) -> Tensor | tuple[Tensor, ...]
# `step.attrs` holds the node's attributes (python values), `step.opset` the default-domain opset.
# Missing optional inputs arrive as None.
# --------------------------------------------------------------------------------------------

_OPS: dict[str, Callable] = {}


def _op(*names: str):
    def deco(fn):
        for n in names:
            _OPS[n] = fn
        return fn
    return deco


def _ints(t) -> list[int]:
    if t is None:
        return []
    if isinstance(t, torch.Tensor):
        return [int(v) for v in t.reshape(-1).tolist()]
    return [int(v) for v in t]


def _is_int(t: torch.Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


# elementwise -------------------------------------------------------------------------------

@_op("Add")
def _add(s, a, b):
    return a + b


@_op("Sub")
def _sub(s, a, b):
    return a - b


@_op("Mul")
def _mul(s, a, b):
    return a * b


@_op("Div")
def _div(s, a, b):
    if _is_int(a) and _is_int(b):
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


@_op("Pow")
def _pow(s, a, b):
    return torch.pow(a, b)


@_op("Max")
def _max(s, *xs):
    out = xs[0]
    for x in xs[1:]:
        out = torch.maximum(out, x)
    return out


@_op("Min")
def _min(s, *xs):
    out = xs[0]
    for x in xs[1:]:
        out = torch.minimum(out, x)
    return out


@_op("Sum")
def _sum(s, *xs):
    out = xs[0]
    for x in xs[1:]:
        out = out + x
    return out


@_op("Mean")
def _mean(s, *xs):
    return _sum(s, *xs) / len(xs)


@_op("Equal")
def _equal(s, a, b):
    return torch.eq(a, b)


@_op("Greater")
def _greater(s, a, b):
    return torch.gt(a, b)


@_op("Less")
def _less(s, a, b):
    return torch.lt(a, b)


@_op("Where")
def _where(s, c, a, b):
    return torch.where(c, a, b)


_UNARY = {
    "Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Exp": torch.exp,
    "Log": torch.log, "Sqrt": torch.sqrt, "Neg": torch.neg, "Abs": torch.abs,
    "Reciprocal": torch.reciprocal, "Erf": torch.erf, "Floor": torch.floor, "Ceil": torch.ceil,
    "Softplus": F.softplus, "Not": torch.logical_not,
}


def _unary(s, x):
    return _UNARY[s.op_type](x)


for _name in _UNARY:
    _OPS[_name] = _unary


@_op("Identity")
def _identity(s, x):
    return x


@_op("Dropout")
def _dropout(s, x, *rest):  # inference: identity (+ all-true mask if asked for)
    return x, torch.ones_like(x, dtype=torch.bool)


@_op("LeakyRelu")
def _leaky(s, x):
    return F.leaky_relu(x, s.attrs.get("alpha", 0.01))


@_op("Elu")
def _elu(s, x):
    return F.elu(x, s.attrs.get("alpha", 1.0))


@_op("Selu")
def _selu(s, x):
    alpha = s.attrs.get("alpha", 1.67326319217681884765625)
    gamma = s.attrs.get("gamma", 1.05070102214813232421875)
    return gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))


@_op("HardSigmoid")
def _hardsigmoid(s, x):
    return torch.clamp(s.attrs.get("alpha", 0.2) * x + s.attrs.get("beta", 0.5), 0, 1)


@_op("HardSwish")
def _hardswish(s, x):
    return F.hardswish(x)


@_op("Clip")
def _clip(s, x, lo=None, hi=None):
    if s.opset < 11:
        lo, hi = s.attrs.get("min"), s.attrs.get("max")
    if isinstance(lo, torch.Tensor) and lo.numel() == 1:
        lo = lo.reshape(())
    if isinstance(hi, torch.Tensor) and hi.numel() == 1:
        hi = hi.reshape(())
    if lo is None and hi is None:
        return x
    if isinstance(lo, torch.Tensor) or isinstance(hi, torch.Tensor):  # clamp wants both alike
        lo = lo if lo is None or isinstance(lo, torch.Tensor) else torch.tensor(lo, dtype=x.dtype)
        hi = hi if hi is None or isinstance(hi, torch.Tensor) else torch.tensor(hi, dtype=x.dtype)
    return torch.clamp(x, lo, hi)


@_op("PRelu")
def _prelu(s, x, slope):
    # ONNX broadcasts the slope numpy-style; a constant (C, 1, .., 1) slope is per-channel and was
    # flattened at import (attrs _slope_shape) so F.prelu can take it
    shape = s.attrs.get("_slope_shape")
    if shape is not None:
        if x.dim() == len(shape) + 1:
            return F.prelu(x, slope)
        slope = slope.reshape(shape)
    return torch.where(x >= 0, x, x * slope)


@_op("Softmax", "LogSoftmax")
def _softmax(s, x):
    fn = torch.softmax if s.op_type == "Softmax" else torch.log_softmax
    if s.opset >= 13:
        return fn(x, s.attrs.get("axis", -1))
    axis = s.attrs.get("axis", 1) % x.dim()  # old semantics: flatten to 2-D at axis
    if axis == x.dim() - 1:
        return fn(x, -1)
    return fn(x.flatten(axis), -1).reshape(x.shape)


@_op("Cast")
def _cast(s, x):
    np_dtype = onnx.helper.tensor_dtype_to_np_dtype(s.attrs["to"])
    return x.to(torch.from_numpy(np.zeros(0, dtype=np_dtype)).dtype)


# quantisation -------------------------------------------------------------------------------

def _q_params(x_dim: int, x_shape, scale, zp, axis: int, block: int):
    """Broadcastable scale / zero-point for a tensor of shape x_shape."""
    if scale.numel() == 1 and block == 0:
        s = scale.reshape(())
        z = zp.reshape(()) if zp is not None else None
        return s, z
    ax = axis % x_dim
    if block > 0:  # opset-21 blocked quantisation: each scale covers `block` elements along axis
        s = scale.repeat_interleave(block, dim=ax).narrow(ax, 0, x_shape[ax])
        z = zp.repeat_interleave(block, dim=ax).narrow(ax, 0, x_shape[ax]) if zp is not None else None
        return s, z
    shape = [1] * x_dim
    shape[ax] = -1
    return scale.reshape(shape), (zp.reshape(shape) if zp is not None else None)


@_op("DequantizeLinear")
def _dequantize(s, x, scale, zp=None):
    sc, z = _q_params(x.dim(), x.shape, scale, zp, s.attrs.get("axis", 1), s.attrs.get("block_size", 0))
    xi = x.to(torch.int32) if _is_int(x) else x
    if z is not None:
        xi = xi - z.to(xi.dtype)
    return xi.to(sc.dtype) * sc


_QRANGE = {torch.int8: (-128, 127), torch.uint8: (0, 255), torch.int16: (-32768, 32767),
           torch.int32: (-2**31, 2**31 - 1)}


@_op("QuantizeLinear")
def _quantize(s, x, scale, zp=None):
    dtype = zp.dtype if zp is not None else torch.uint8
    lo, hi = _QRANGE.get(dtype, (0, 255))
    sc, z = _q_params(x.dim(), x.shape, scale, zp, s.attrs.get("axis", 1), s.attrs.get("block_size", 0))
    q = torch.round(x / sc) + (z.to(x.dtype) if z is not None else 0)  # round half to even, as ONNX
    return torch.clamp(q, lo, hi).to(dtype)


@_op("_FakeQuant")
def _fake_quant(s, x, scale, zp=None):
    """QuantizeLinear -> DequantizeLinear in float, with a straight-through gradient."""
    dtype = s.attrs["qdtype"]
    lo, hi = _QRANGE.get(dtype, (0, 255))
    sc, z = _q_params(x.dim(), x.shape, scale, zp, s.attrs.get("axis", 1), s.attrs.get("block_size", 0))
    zf = z.to(x.dtype) if z is not None else torch.zeros((), dtype=x.dtype)
    y = (torch.clamp(torch.round(x / sc) + zf, lo, hi) - zf) * sc
    return x + (y - x).detach()


# linear algebra / conv ------------------------------------------------------------------------

def _auto_pads(auto_pad: str, spatial, kernel, strides, dilations, pads):
    n = len(kernel)
    if auto_pad in ("", "NOTSET"):
        return list(pads) if pads else [0] * (2 * n)
    if auto_pad == "VALID":
        return [0] * (2 * n)
    begin, end = [], []
    for i in range(n):
        out = math.ceil(spatial[i] / strides[i])
        total = max((out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - spatial[i], 0)
        small, big = total // 2, total - total // 2
        if auto_pad == "SAME_UPPER":
            begin.append(small); end.append(big)
        else:  # SAME_LOWER
            begin.append(big); end.append(small)
    return begin + end


def _torch_pad_order(pads: Sequence[int]) -> list[int]:
    """ONNX [b1, b2, .., e1, e2, ..] (first axis first) -> F.pad (last axis first) pairs."""
    n = len(pads) // 2
    out = []
    for i in reversed(range(n)):
        out += [pads[i], pads[i + n]]
    return out


@_op("Conv")
def _conv(s, x, w, b=None):
    n = w.dim() - 2
    a = s.attrs
    kernel = list(w.shape[2:])
    strides = a.get("strides", [1] * n)
    dil = a.get("dilations", [1] * n)
    pads = _auto_pads(a.get("auto_pad", "NOTSET"), list(x.shape[2:]), kernel, strides, dil, a.get("pads"))
    if pads[:n] == pads[n:]:
        padding = pads[:n]
    else:
        x = F.pad(x, _torch_pad_order(pads))
        padding = [0] * n
    conv = (F.conv1d, F.conv2d, F.conv3d)[n - 1]
    return conv(x, w, b, strides, padding, dil, a.get("group", 1))


@_op("BatchNormalization")
def _batchnorm(s, x, scale, bias, mean, var):
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, s.attrs.get("epsilon", 1e-5))


@_op("InstanceNormalization")
def _instancenorm(s, x, scale, bias):
    return F.instance_norm(x, weight=scale, bias=bias, eps=s.attrs.get("epsilon", 1e-5))


@_op("Gemm")
def _gemm(s, a, b, c=None):
    at = s.attrs
    if at.get("_linear"):  # prepared at import: b is (N, K), c is (N,) or None
        return F.linear(a, b, c)
    alpha, beta = at.get("alpha", 1.0), at.get("beta", 1.0)
    if at.get("transA", 0):
        a = a.t()
    if alpha == 1.0 and beta == 1.0 and (c is None or c.numel() == b.shape[0 if at.get("transB", 0) else 1]):
        w = b if at.get("transB", 0) else b.t()
        return F.linear(a, w, None if c is None else c.reshape(-1))
    y = a @ (b.t() if at.get("transB", 0) else b)
    if alpha != 1.0:
        y = alpha * y
    if c is not None:
        y = y + (beta * c if beta != 1.0 else c)
    return y


@_op("MatMul")
def _matmul(s, a, b):
    return torch.matmul(a, b)


# pooling ---------------------------------------------------------------------------------

def _pool(s, x, kind: str):
    a = s.attrs
    kernel = list(a["kernel_shape"])
    n = len(kernel)
    strides = a.get("strides", [1] * n)
    dil = a.get("dilations", [1] * n)
    pads = _auto_pads(a.get("auto_pad", "NOTSET"), list(x.shape[2:]), kernel, strides, dil, a.get("pads"))
    ceil = bool(a.get("ceil_mode", 0))
    begin, end = pads[:n], pads[n:]
    symmetric = begin == end and all(p <= k // 2 for p, k in zip(begin, kernel))
    if kind == "max":
        fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[n - 1]
        if not symmetric:
            x = F.pad(x, _torch_pad_order(pads), value=float("-inf"))
            begin = [0] * n
        return fn(x, kernel, strides, begin, dil, ceil_mode=ceil)
    if any(d != 1 for d in dil):
        raise NotImplementedError(f"AveragePool with dilations {dil} (node {s.name!r})")
    fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[n - 1]
    include = bool(a.get("count_include_pad", 0))
    if symmetric:
        return fn(x, kernel, strides, begin, ceil_mode=ceil, count_include_pad=include)
    xp = F.pad(x, _torch_pad_order(pads))
    out = fn(xp, kernel, strides, 0, ceil_mode=ceil, count_include_pad=True)
    if include:
        return out
    ones = F.pad(torch.ones_like(x[:1, :1]), _torch_pad_order(pads))
    return out / fn(ones, kernel, strides, 0, ceil_mode=ceil, count_include_pad=True)


@_op("MaxPool")
def _maxpool(s, x):
    return _pool(s, x, "max")


@_op("AveragePool")
def _avgpool(s, x):
    return _pool(s, x, "avg")


@_op("GlobalAveragePool")
def _gap(s, x):
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@_op("GlobalMaxPool")
def _gmp(s, x):
    return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


# reductions / normalisation ------------------------------------------------------------------

def _reduce_axes(s, x, axes_in):
    axes = s.attrs.get("axes")
    if axes_in is not None:
        axes = _ints(axes_in)
    if not axes:
        if s.attrs.get("noop_with_empty_axes", 0):
            return None
        axes = list(range(x.dim()))
    return tuple(int(v) % x.dim() for v in axes)


@_op("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceL1", "ReduceSumSquare")
def _reduce(s, x, axes_in=None):
    dims = _reduce_axes(s, x, axes_in)
    if dims is None:
        return x
    keep = bool(s.attrs.get("keepdims", 1))
    t = s.op_type
    if t == "ReduceMean":
        return x.mean(dim=dims, keepdim=keep)
    if t == "ReduceSum":
        return x.sum(dim=dims, keepdim=keep)
    if t == "ReduceMax":
        return x.amax(dim=dims, keepdim=keep)
    if t == "ReduceMin":
        return x.amin(dim=dims, keepdim=keep)
    if t == "ReduceL2":
        return torch.sqrt((x * x).sum(dim=dims, keepdim=keep))
    if t == "ReduceL1":
        return x.abs().sum(dim=dims, keepdim=keep)
    return (x * x).sum(dim=dims, keepdim=keep)


@_op("LpNormalization")
def _lpnorm(s, x):
    p = s.attrs.get("p", 2)
    axis = s.attrs.get("axis", -1)
    if p == 2:
        return x / torch.sqrt((x * x).sum(dim=axis, keepdim=True))
    return x / x.abs().sum(dim=axis, keepdim=True)


# shape ops -------------------------------------------------------------------------------

@_op("Flatten")
def _flatten(s, x):
    axis = s.attrs.get("axis", 1) % (x.dim() + 1) if x.dim() else 0
    if axis == 0:
        return x.reshape(1, -1)
    y = x.flatten(axis) if axis < x.dim() else x.unsqueeze(-1)
    return y.flatten(0, axis - 1)


@_op("Reshape")
def _reshape(s, x, shape):
    runtime_shape = isinstance(shape, torch.Tensor)
    dims = _ints(shape)
    if not s.attrs.get("allowzero", 0):
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    if dims and x.dim() and (s.attrs.get("_dynamic_batch") or (runtime_shape and dims[0] == x.shape[0])):
        # the batch dimension stays symbolic under torch.jit.trace (a shape computed at run time from
        # Shape/Gather/Concat would otherwise be baked into the trace)
        dims = [x.shape[0]] + dims[1:]
    return x.reshape(dims)


@_op("Transpose")
def _transpose(s, x):
    perm = s.attrs.get("perm") or list(reversed(range(x.dim())))
    return x.permute(*perm)


@_op("Concat")
def _concat(s, *xs):
    xs = [x for x in xs if x is not None]
    return torch.cat(xs, dim=s.attrs["axis"])


@_op("Squeeze")
def _squeeze(s, x, axes=None):
    ax = _ints(axes) if axes is not None else s.attrs.get("axes")
    if not ax:
        return x.squeeze()
    return x.squeeze(tuple(int(a) % x.dim() for a in ax))


@_op("Unsqueeze")
def _unsqueeze(s, x, axes=None):
    ax = _ints(axes) if axes is not None else list(s.attrs.get("axes", []))
    rank = x.dim() + len(ax)
    for a in sorted(int(a) % rank for a in ax):
        x = x.unsqueeze(a)
    return x


@_op("Split")
def _split(s, x, split=None):
    axis = s.attrs.get("axis", 0)
    sizes = _ints(split) if split is not None else s.attrs.get("split")
    n_out = s.n_outputs
    if not sizes:
        dim = x.shape[axis]
        chunk = -(-dim // n_out)
        sizes = [min(chunk, dim - i * chunk) for i in range(n_out)]
    return tuple(torch.split(x, list(sizes), dim=axis))


@_op("Slice")
def _slice(s, x, starts=None, ends=None, axes=None, steps=None):
    if s.opset < 10:
        starts, ends, axes = s.attrs["starts"], s.attrs["ends"], s.attrs.get("axes")
    starts, ends = _ints(starts), _ints(ends)
    axes = _ints(axes) if axes is not None and len(_ints(axes)) else list(range(len(starts)))
    steps = _ints(steps) if steps is not None and len(_ints(steps)) else [1] * len(starts)
    for st, en, ax, sp in zip(starts, ends, axes, steps):
        ax %= x.dim()
        dim = x.shape[ax]
        en = min(en, _INT64_MAX)
        idx = range(dim)[slice(st, en, sp)] if abs(en) < 2**62 else range(dim)[slice(st, None, sp)]
        if sp == 1:
            x = x.narrow(ax, idx.start if len(idx) else 0, len(idx))
        else:
            x = x.index_select(ax, torch.tensor(list(idx), dtype=torch.long, device=x.device))
    return x


@_op("Gather")
def _gather(s, x, idx):
    axis = s.attrs.get("axis", 0) % x.dim()
    return x[(slice(None),) * axis + (idx.long(),)]


@_op("Shape")
def _shape(s, x):
    shp = torch._shape_as_tensor(x)
    start, end = s.attrs.get("start", 0), s.attrs.get("end")
    return shp[start:end]


@_op("Size")
def _size(s, x):
    return torch.tensor(x.numel(), dtype=torch.int64)


@_op("ConstantOfShape")
def _constant_of_shape(s, shape):
    value = s.attrs.get("value")
    v = torch.from_numpy(np.array(value).reshape(-1)) if value is not None else torch.zeros(1)
    return torch.full(_ints(shape), v[0].item(), dtype=v.dtype)


@_op("Expand")
def _expand(s, x, shape):
    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(_ints(shape))))


@_op("_ExpandLike")
def _expand_like(s, x, like):
    """Expand(x, Shape(like)): broadcast against `like` itself, so traces keep the shape symbolic."""
    return torch.broadcast_tensors(x, like)[0]


@_op("Tile")
def _tile(s, x, reps):
    return x.repeat(_ints(reps))


@_op("Pad")
def _pad(s, x, pads=None, value=None, axes=None):
    if s.opset < 11:
        pads, value = s.attrs["pads"], s.attrs.get("value", 0.0)
    pads = _ints(pads)
    n = len(pads) // 2
    if axes is not None:  # opset 18: pads only for `axes`
        full = [0] * (2 * x.dim())
        for i, ax in enumerate(_ints(axes)):
            ax %= x.dim()
            full[ax], full[ax + x.dim()] = pads[i], pads[i + n]
        pads, n = full, x.dim()
    mode = s.attrs.get("mode", "constant")
    if isinstance(mode, bytes):
        mode = mode.decode()
    torch_pads = _torch_pad_order(pads)
    # F.pad pads trailing dims first; drop leading all-zero pairs (batch/channel) for non-constant modes
    while len(torch_pads) > 2 and torch_pads[-1] == 0 and torch_pads[-2] == 0:
        torch_pads = torch_pads[:-2]
    if mode == "constant":
        v = 0.0 if value is None else (value.reshape(-1)[0].item() if isinstance(value, torch.Tensor) else value)
        return F.pad(x, torch_pads, mode="constant", value=v)
    tmode = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}[mode]
    return F.pad(x, torch_pads, mode=tmode)


# inputs that ops read as python values (shapes, axes, pads, bounds): when constant, they are
# converted once at import time instead of with .tolist() at every call (and tracer warnings)
_STATIC_ARGS = {
    "Reshape": {1}, "Squeeze": {1}, "Unsqueeze": {1}, "Split": {1}, "Slice": {1, 2, 3, 4},
    "Pad": {1, 2, 3}, "Clip": {1, 2}, "Expand": {1}, "Tile": {1}, "ReduceMean": {1}, "ReduceSum": {1},
    "ReduceMax": {1}, "ReduceMin": {1}, "ReduceL2": {1}, "ReduceL1": {1}, "ReduceSumSquare": {1},
}
_SCALAR_ARGS = {("Clip", 1), ("Clip", 2), ("Pad", 2)}


def _static_value(op_type: str, pos: int, t: torch.Tensor):
    if (op_type, pos) in _SCALAR_ARGS:
        return t.reshape(-1)[0].item()
    return [int(v) for v in t.reshape(-1).tolist()]


SUPPORTED_OPS = tuple(sorted({k for k in _OPS if not k.startswith("_")} | {"Constant"}))


# --------------------------------------------------------------------------------------------
# graph import
# --------------------------------------------------------------------------------------------

@dataclass
class _Node:
    op_type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any]
    domain: str = ""


@dataclass
class _Step:
    fn: Callable
    op_type: str
    name: str
    attrs: dict[str, Any]
    opset: int
    args: list  # per input: None | (0, env name) | (1, buffer attribute name)
    outputs: list[str]
    n_outputs: int = field(default=1)


def _attr_value(a: onnx.AttributeProto):
    v = onnx.helper.get_attribute_value(a)
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, onnx.TensorProto):
        return numpy_helper.to_array(v)
    if isinstance(v, list) and v and isinstance(v[0], bytes):
        return [x.decode() for x in v]
    if isinstance(v, onnx.GraphProto) or (isinstance(v, list) and v and isinstance(v[0], onnx.GraphProto)):
        return v
    return v


def _to_tensor(arr: np.ndarray) -> torch.Tensor:
    arr = np.asarray(arr)
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    if arr.dtype == np.uint16 or arr.dtype == np.uint32:
        arr = arr.astype(np.int64)
    return torch.from_numpy(np.ascontiguousarray(arr).copy())


def _constant_node_value(node: _Node) -> torch.Tensor:
    a = node.attrs
    if "value" in a:
        return _to_tensor(a["value"])
    for key, dtype in (("value_float", np.float32), ("value_int", np.int64),
                       ("value_floats", np.float32), ("value_ints", np.int64)):
        if key in a:
            return _to_tensor(np.array(a[key], dtype=dtype))
    raise NotImplementedError(f"Constant node {node.name!r} with attributes {sorted(a)}")


def _load(model) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        proto = model
        where = "the given ModelProto"
    else:
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(f"no ONNX model at {path}")
        where = str(path)
        try:
            proto = onnx.load(str(path))
        except Exception as e:  # protobuf DecodeError, truncated external data, ...
            raise ValueError(f"{where} is not a readable ONNX model (corrupt or truncated file?): "
                             f"{type(e).__name__}: {e}") from e
    if not proto.HasField("graph") or len(proto.graph.node) == 0 or len(proto.graph.output) == 0:
        raise ValueError(f"{where} is not a valid ONNX model: it has no graph nodes/outputs "
                         f"(corrupt or truncated file?)")
    return proto


def _topo_sort(nodes: list[_Node], available: set[str]) -> list[_Node]:
    producers = {}
    for i, n in enumerate(nodes):
        for o in n.outputs:
            if o:
                producers[o] = i
    done: set[int] = set()
    order: list[_Node] = []
    ready = set(available)
    pending = list(range(len(nodes)))
    while pending:
        progressed = False
        rest = []
        for i in pending:
            n = nodes[i]
            if all((not x) or x in ready or x not in producers for x in n.inputs):
                order.append(n)
                done.add(i)
                ready.update(o for o in n.outputs if o)
                progressed = True
            else:
                rest.append(i)
        if not progressed:
            raise ValueError(f"ONNX graph has a cycle around node {nodes[rest[0]].name!r}")
        pending = rest
    return order


def _check_supported(n: _Node) -> None:
    if n.domain not in ("", "ai.onnx"):
        raise NotImplementedError(f"unsupported ONNX op {n.domain}::{n.op_type} (node {n.name!r})")
    if n.op_type != "Constant" and n.op_type not in _OPS:
        raise NotImplementedError(f"unsupported ONNX op {n.op_type} (node {n.name!r})")


def _step_for(n: _Node, opset: int) -> _Step:
    return _Step(fn=_OPS[n.op_type], op_type=n.op_type, name=n.name, attrs=n.attrs, opset=opset,
                 args=[], outputs=list(n.outputs), n_outputs=len(n.outputs))


def _run_node(n: _Node, opset: int, inputs: list) -> list:
    step = _step_for(n, opset)
    out = step.fn(step, *inputs)
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))


class OnnxModule(nn.Module):
    """An ONNX graph executed with torch ops. Build with `onnx_to_torch`."""

    def __init__(self, steps: list[_Step], consts: dict[str, torch.Tensor], input_names: list[str],
                 output_names: list[str], input_shapes: dict[str, list]):
        super().__init__()
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.input_shapes = input_shapes
        self._buf_of: dict[str, str] = {}
        for i, (name, t) in enumerate(consts.items()):
            attr = f"c{i}"
            self.register_buffer(attr, t)
            self._buf_of[name] = attr
        self._steps = steps
        for st in steps:
            args = []
            for pos, x in enumerate(st.args):
                if not x:
                    args.append(None)
                elif isinstance(x, tuple):  # (2, python value)
                    args.append(x)
                elif x in self._buf_of:
                    args.append((1, self._buf_of[x]))
                else:
                    args.append((0, x))
            st.args = args
        self._out_refs = [(1, self._buf_of[o]) if o in self._buf_of else (0, o) for o in output_names]

    def forward(self, *inputs: torch.Tensor):
        if len(inputs) != len(self.input_names):
            raise TypeError(f"expected {len(self.input_names)} input(s) {self.input_names}, got {len(inputs)}")
        env: dict[str, torch.Tensor] = dict(zip(self.input_names, inputs))
        for st in self._steps:
            args = [None if a is None else (env[a[1]] if a[0] == 0 else getattr(self, a[1]) if a[0] == 1 else a[1])
                    for a in st.args]
            out = st.fn(st, *args)
            if isinstance(out, (tuple, list)):
                for name, t in zip(st.outputs, out):
                    if name:
                        env[name] = t
            else:
                env[st.outputs[0]] = out
        outs = [env[r] if k == 0 else getattr(self, r) for k, r in self._out_refs]
        return outs[0] if len(outs) == 1 else tuple(outs)

    def extra_repr(self) -> str:
        from collections import Counter
        ops = Counter(st.op_type for st in self._steps)
        return f"inputs={self.input_names}, outputs={self.output_names}, ops={dict(ops)}"


def onnx_to_torch(model: str | Path | onnx.ModelProto, activation_qdq: str = "emulate",
                  fold_batchnorm: bool = True) -> OnnxModule:
    """Import an ONNX model as a frozen torch module (see the module docstring).

    activation_qdq: what to do with QuantizeLinear->DequantizeLinear pairs on activations:
    "emulate" (round/clamp like int8, straight-through gradient; what OpenCV's DNN computes) or
    "remove" (identity: the float model the quantiser started from).
    """
    if activation_qdq not in ("emulate", "remove"):
        raise ValueError("activation_qdq must be 'emulate' or 'remove'")
    proto = _load(model)
    graph = proto.graph
    opset = 1
    for o in proto.opset_import:
        if o.domain in ("", "ai.onnx"):
            opset = o.version

    consts: dict[str, torch.Tensor] = {}
    for init in graph.initializer:
        try:
            consts[init.name] = _to_tensor(numpy_helper.to_array(init))
        except Exception as e:
            raise ValueError(f"initializer {init.name!r} cannot be read: {e}") from e
    input_names = [i.name for i in graph.input if i.name not in consts]
    input_shapes = {}
    for i in graph.input:
        if i.name in consts:
            continue
        dims = i.type.tensor_type.shape.dim
        input_shapes[i.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims]
    static_batch = {s[0] for s in input_shapes.values() if s and isinstance(s[0], int) and s[0] > 0}
    output_names = [o.name for o in graph.output]

    nodes = []
    for k, n in enumerate(graph.node):
        nd = _Node(n.op_type, n.name or f"{n.op_type}_{k}", list(n.input), list(n.output),
                   {a.name: _attr_value(a) for a in n.attribute}, n.domain)
        nodes.append(nd)
    nodes = _topo_sort(nodes, set(consts) | set(input_names))

    # 1. constant folding, QDQ handling -------------------------------------------------
    producer: dict[str, _Node] = {}
    kept: list[_Node] = []
    for n in nodes:
        _check_supported(n)
        if n.op_type == "Constant":
            consts[n.outputs[0]] = _constant_node_value(n)
            continue
        if n.op_type == "DequantizeLinear" and n.inputs[0] not in consts and n.inputs[0] in producer:
            q = producer[n.inputs[0]]
            if q.op_type == "QuantizeLinear" and all((not x) or x in consts for x in q.inputs[1:]) \
                    and all((not x) or x in consts for x in n.inputs[1:]):
                get = lambda nd, i: consts[nd.inputs[i]] if len(nd.inputs) > i and nd.inputs[i] else None  # noqa: E731
                if not (_same(get(q, 1), get(n, 1)) and _same(get(q, 2), get(n, 2))):
                    raise NotImplementedError(
                        f"QuantizeLinear {q.name!r} -> DequantizeLinear {n.name!r} with different scales")
                if activation_qdq == "remove":
                    n = _Node("Identity", n.name, [q.inputs[0]], n.outputs, {}, "")
                else:
                    zp = get(q, 2)
                    attrs = dict(n.attrs)
                    attrs["qdtype"] = zp.dtype if zp is not None else torch.uint8
                    n = _Node("_FakeQuant", n.name, [q.inputs[0]] + q.inputs[1:], n.outputs, attrs, "")
        if all((not x) or x in consts for x in n.inputs) and n.op_type not in ("_FakeQuant",):
            vals = [consts[x] if x else None for x in n.inputs]
            with torch.no_grad():
                outs = _run_node(n, opset, vals)
            for name, t in zip(n.outputs, outs):
                if name:
                    consts[name] = t
            continue
        if n.op_type == "Reshape" and static_batch and len(n.inputs) > 1 and n.inputs[1] in consts:
            dims = _ints(consts[n.inputs[1]])
            if dims and dims[0] in static_batch:
                n.attrs = dict(n.attrs, _dynamic_batch=True)
        kept.append(n)
        for o in n.outputs:
            if o:
                producer[o] = n

    # 2. dead-node elimination -----------------------------------------------------------
    needed = set(output_names)
    live: list[_Node] = []
    for n in reversed(kept):
        if any(o in needed for o in n.outputs):
            live.append(n)
            needed.update(x for x in n.inputs if x)
    live.reverse()

    # 3. Conv/Gemm + BatchNormalization folding --------------------------------------------
    if fold_batchnorm:
        live = _fold_batchnorm(live, consts, set(output_names))

    # Gemm with constant weights -> F.linear with a (N, K) weight and 1-D bias
    for n in live:
        if n.op_type != "Gemm" or n.attrs.get("transA", 0) or n.inputs[1] not in consts \
                or n.attrs.get("alpha", 1.0) != 1.0 or n.attrs.get("beta", 1.0) != 1.0:
            continue
        w = consts[n.inputs[1]]
        if w.dim() != 2:
            continue
        w = w if n.attrs.get("transB", 0) else w.t()
        c = consts.get(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2] else None
        if len(n.inputs) > 2 and n.inputs[2] and c is None:
            continue  # runtime bias
        if c is not None and c.numel() != w.shape[0]:
            continue
        wname, bname = n.name + "::linear_w", n.name + "::linear_b"
        consts[wname] = w.contiguous()
        n.inputs = [n.inputs[0], wname]
        if c is not None:
            consts[bname] = c.reshape(-1).contiguous()
            n.inputs.append(bname)
        n.attrs = dict(n.attrs, _linear=True)

    # Expand(x, Shape(y)) -> broadcast against y (keeps the batch size symbolic in traces)
    shape_of = {n.outputs[0]: n for n in live if n.op_type == "Shape" and "start" not in n.attrs
                and "end" not in n.attrs}
    for n in live:
        if n.op_type == "Expand" and n.inputs[1] in shape_of:
            n.op_type, n.inputs = "_ExpandLike", [n.inputs[0], shape_of[n.inputs[1]].inputs[0]]
    if any(n.op_type == "_ExpandLike" for n in live):  # the Shape nodes may now be dead
        needed = set(output_names)
        pruned = []
        for n in reversed(live):
            if any(o in needed for o in n.outputs):
                pruned.append(n)
                needed.update(x for x in n.inputs if x)
        live = pruned[::-1]

    # PRelu with a constant per-channel (C, 1, .., 1) slope -> 1-D slope for F.prelu
    for n in live:
        if n.op_type == "PRelu" and n.inputs[1] in consts:
            sl = consts[n.inputs[1]]
            if sl.dim() >= 1 and all(d == 1 for d in sl.shape[1:]):
                name = n.name + "::slope"
                consts[name] = sl.reshape(-1).contiguous()
                n.attrs = dict(n.attrs, _slope_shape=tuple(sl.shape))
                n.inputs = [n.inputs[0], name]

    # 4. build ---------------------------------------------------------------------------
    steps = []
    used = set(output_names)
    for n in live:
        st = _step_for(n, opset)
        static = _STATIC_ARGS.get(n.op_type, ())
        st.args = [(2, _static_value(n.op_type, pos, consts[x])) if (x and pos in static and x in consts) else x
                   for pos, x in enumerate(n.inputs)]
        used.update(a for a in st.args if isinstance(a, str) and a)
        steps.append(st)
    used_consts = {k: v for k, v in consts.items() if k in used}
    # declared inputs nothing reads (e.g. float weights a quantiser replaced) are dropped
    input_names = [x for x in input_names if x in used]
    input_shapes = {k: v for k, v in input_shapes.items() if k in input_names}
    module = OnnxModule(steps, used_consts, input_names, output_names, input_shapes)
    module.eval()
    return module


def _fold_batchnorm(nodes: list[_Node], consts: dict[str, torch.Tensor], outputs: set[str]) -> list[_Node]:
    consumers: dict[str, int] = {}
    for n in nodes:
        for x in n.inputs:
            consumers[x] = consumers.get(x, 0) + 1
    by_output = {n.outputs[0]: n for n in nodes if n.outputs}
    out: list[_Node] = []
    for n in nodes:
        if n.op_type != "BatchNormalization" or len([o for o in n.outputs if o]) != 1:
            out.append(n)
            continue
        src = by_output.get(n.inputs[0])
        if src is None or consumers.get(n.inputs[0], 0) != 1 or n.inputs[0] in outputs \
                or not all(x in consts for x in n.inputs[1:5]):
            out.append(n)
            continue
        scale, bias, mean, var = (consts[x].double() for x in n.inputs[1:5])
        k = scale / torch.sqrt(var + n.attrs.get("epsilon", 1e-5))
        shift = bias - mean * k
        if src.op_type == "Conv" and src.inputs[1] in consts and (len(src.inputs) < 3 or not src.inputs[2]
                                                                    or src.inputs[2] in consts):
            w = consts[src.inputs[1]].double()
            b = consts[src.inputs[2]].double() if len(src.inputs) > 2 and src.inputs[2] else torch.zeros(w.shape[0], dtype=torch.float64)
            w2 = (w * k.reshape(-1, *([1] * (w.dim() - 1)))).float()
            b2 = (b * k + shift).float()
        elif src.op_type == "Gemm" and src.inputs[1] in consts and not src.attrs.get("transA", 0) \
                and src.attrs.get("alpha", 1.0) == 1.0 and src.attrs.get("beta", 1.0) == 1.0 \
                and (len(src.inputs) < 3 or not src.inputs[2] or src.inputs[2] in consts):
            w = consts[src.inputs[1]].double()
            if not src.attrs.get("transB", 0):
                w = w.t()
            c = consts[src.inputs[2]].double().reshape(-1) if len(src.inputs) > 2 and src.inputs[2] else torch.zeros(w.shape[0], dtype=torch.float64)
            if c.numel() != w.shape[0] or k.numel() != w.shape[0]:
                out.append(n)
                continue
            w2 = (w * k[:, None]).float()
            b2 = (c * k + shift).float()
        else:
            out.append(n)
            continue
        wname, bname = n.outputs[0] + "::folded_w", n.outputs[0] + "::folded_b"
        consts[wname], consts[bname] = w2.contiguous(), b2.contiguous()
        attrs = dict(src.attrs)
        if src.op_type == "Gemm":
            attrs["transB"] = 1
        fused = _Node(src.op_type, f"{src.name}+{n.name}", [src.inputs[0], wname, bname], [n.outputs[0]], attrs)
        idx = next(i for i, m in enumerate(out) if m is src)
        out[idx] = fused
    return out


# --------------------------------------------------------------------------------------------
# face-model spec
# --------------------------------------------------------------------------------------------

_TEMPLATES = ("arcface", "dlib")


@dataclass
class OnnxFaceSpec:
    """How to feed an ONNX face recognizer; see the module docstring for the JSON format."""

    input_size: int
    template: str  # "arcface" | "dlib"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channel_order: str  # "RGB" | "BGR"
    embedding_dim: int

    def __post_init__(self):
        self.input_size = int(self.input_size)
        self.embedding_dim = int(self.embedding_dim)
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        self.channel_order = str(self.channel_order).upper()
        self.template = str(self.template).lower()
        if self.input_size <= 0 or self.embedding_dim <= 0:
            raise ValueError("input_size and embedding_dim must be positive")
        if self.template not in _TEMPLATES:
            raise ValueError(f"template must be one of {_TEMPLATES}, got {self.template!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need 3 values each (one per channel)")
        if any(v == 0 for v in self.std):
            raise ValueError("std values must be non-zero")
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")

    @classmethod
    def from_dict(cls, d: dict) -> "OnnxFaceSpec":
        names = {"input_size", "template", "mean", "std", "channel_order", "embedding_dim"}
        missing, extra = names - set(d), set(d) - names
        if missing or extra:
            raise ValueError(f"face-model spec: missing keys {sorted(missing)}, unknown keys {sorted(extra)}")
        return cls(**d)

    @classmethod
    def from_json(cls, path: str | Path) -> "OnnxFaceSpec":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a JSON object")
        try:
            return cls.from_dict(d)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from e

    def to_json(self, path: str | Path | None = None) -> str:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        text = json.dumps(d, indent=2)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text


class OnnxFaceModel(nn.Module):
    """RGB [0, 255] chips (B, 3, S, S) -> the model's preprocessing -> (B, embedding_dim)."""

    def __init__(self, model: nn.Module, spec: OnnxFaceSpec, channels_last: bool = False):
        super().__init__()
        self.model = model
        self.spec = spec
        self.channels_last = channels_last
        self.swap_rb = spec.channel_order == "BGR"
        self.identity_norm = spec.mean == (0.0, 0.0, 0.0) and spec.std == (1.0, 1.0, 1.0)
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).reshape(1, 3, 1, 1))
        self.register_buffer("inv_std", (1.0 / torch.tensor(spec.std, dtype=torch.float64)).float().reshape(1, 3, 1, 1))

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        s = self.spec.input_size
        if not torch.jit.is_tracing() and (chips.dim() != 4 or tuple(chips.shape[1:]) != (3, s, s)):
            raise ValueError(f"expected chips of shape (B, 3, {s}, {s}), got {tuple(chips.shape)}")
        x = chips if chips.is_floating_point() else chips.float()  # uint8 chips are accepted too
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.swap_rb:
            x = x.flip(1)
        if not self.identity_norm:
            x = (x - self.mean) * self.inv_std
        y = self.model(x)
        if isinstance(y, (tuple, list)):
            y = y[0]
        return y.reshape(y.shape[0], -1)


def wrap_onnx_face_model(module: nn.Module, spec: OnnxFaceSpec, channels_last: bool = False) -> nn.Module:
    """Wrap an imported face model so it takes RGB [0, 255] chips of spec.input_size.

    channels_last=True also converts the model's 4-D weights and every input to channels_last
    (NHWC) memory, which is markedly faster for CNNs on CPU (oneDNN); results are unchanged.
    """
    if isinstance(spec, dict):
        spec = OnnxFaceSpec.from_dict(spec)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    return OnnxFaceModel(module, spec, channels_last).eval()
