"""Op implementations for the ONNX importer (``onnx_import``): ONNX op name -> torch function.

Arithmetic, activations, quantisation, convolution and pooling live here; reductions and shape
ops in ``onnx_shape_ops``, whose table this one extends. Each is ``fn(step, *inputs) -> Tensor |
tuple``; ``step.attrs`` holds the node's attributes and ``step.opset`` the default-domain opset.
Missing optional inputs arrive as None.
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from .onnx_shape_ops import SHAPE_OPS, _is_int, _torch_pad_order, registry

_OPS: dict[str, Callable] = dict(SHAPE_OPS)
_op = registry(_OPS)


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


# variadic elementwise ops: fold the inputs pairwise
for _name, _fn in (("Max", torch.maximum), ("Min", torch.minimum), ("Sum", torch.add)):
    _op(_name)(lambda s, *xs, _fn=_fn: functools.reduce(_fn, xs))


@_op("Mean")
def _mean(s, *xs):
    return functools.reduce(torch.add, xs) / len(xs)


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
    if s.n_outputs > 1:
        return x, torch.ones_like(x, dtype=torch.bool)
    return x


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
