"""Op implementations for the GraphDef importer (``graphdef_import``): TF op name -> torch function.

Each is ``fn(step, *inputs) -> Tensor``; ``step.attrs`` holds the node's attributes as python values.

Layout rule: TensorFlow's 4-D activations are NHWC; here every 4-D tensor is stored NCHW, so
convolutions and pools run in torch's native layout. Ops that name axes (ConcatV2, Sum) map them;
``Reshape`` goes back to NHWC order around the reshape; a lower-rank operand broadcast against a
4-D one is broadcast the TF way (trailing axes = channels) with ``to_nchw_broadcast``.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

_OPS: dict[str, Callable] = {}
_NHWC_TO_NCHW_AXIS = {0: 0, 1: 2, 2: 3, 3: 1}


def _op(*names: str):
    """Decorator: register `fn` under each TF op name."""
    return lambda fn: _OPS.update(dict.fromkeys(names, fn)) or fn


def to_nchw(x: torch.Tensor) -> torch.Tensor:
    """A logically NHWC 4-D tensor in NCHW storage; other ranks unchanged."""
    return x.permute(0, 3, 1, 2) if x.dim() == 4 else x


def to_nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1) if x.dim() == 4 else x


def to_nchw_broadcast(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`b` reshaped so that it broadcasts against the NCHW-stored 4-D `a` as TF broadcasts it
    against NHWC (a (C,) bias lands on the channel axis)."""
    if a.dim() != 4 or b.dim() == 0 or b.dim() == 4:
        return b
    return b.reshape((1,) * (4 - b.dim()) + tuple(b.shape)).permute(0, 3, 1, 2)


def _axis(x: torch.Tensor, axis: int) -> int:
    axis = axis + x.dim() if axis < 0 else axis
    return _NHWC_TO_NCHW_AXIS[axis] if x.dim() == 4 else axis


def _nhwc_attr(s, key: str, default=(1, 1, 1, 1)) -> tuple[int, int]:
    """(h, w) entries of an NHWC-ordered attribute such as strides or ksize."""
    v = s.attrs.get(key) or default
    if s.attrs.get("data_format", "NHWC") != "NHWC":
        raise NotImplementedError(f"{s.op_type} {s.name!r}: data_format {s.attrs['data_format']!r} (only NHWC)")
    if v[0] != 1 or v[3] != 1:
        raise NotImplementedError(f"{s.op_type} {s.name!r}: {key} {list(v)} over batch or channels")
    return int(v[1]), int(v[2])


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TF 'SAME' padding (before, after) of one spatial axis: the extra pixel goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _spatial_padding(s, x: torch.Tensor, kernel, stride, dilation=(1, 1)) -> list[int]:
    """F.pad amounts [left, right, top, bottom] for the node's padding mode."""
    mode = s.attrs.get("padding", "VALID")
    if mode == "VALID":
        return [0, 0, 0, 0]
    if mode != "SAME":
        raise NotImplementedError(f"{s.op_type} {s.name!r}: padding {mode!r}")
    top, bottom = same_padding(x.shape[2], kernel[0], stride[0], dilation[0])
    left, right = same_padding(x.shape[3], kernel[1], stride[1], dilation[1])
    return [left, right, top, bottom]


# convolution and pooling ----------------------------------------------------------------------

@_op("Conv2D")
def _conv2d(s, x, w, b=None):
    """w: torch OIHW (the importer permutes TF's HWIO once); b: a folded BiasAdd, or None."""
    stride, dilation = _nhwc_attr(s, "strides"), _nhwc_attr(s, "dilations")
    pad = _spatial_padding(s, x, w.shape[2:], stride, dilation)
    if pad[0] == pad[1] and pad[2] == pad[3]:
        return F.conv2d(x, w, b, stride, (pad[2], pad[0]), dilation)
    return F.conv2d(F.pad(x, pad), w, b, stride, 0, dilation)


@_op("MaxPool")
def _max_pool(s, x):
    kernel, stride = _nhwc_attr(s, "ksize"), _nhwc_attr(s, "strides")
    pad = _spatial_padding(s, x, kernel, stride)
    if any(pad):
        x = F.pad(x, pad, value=float("-inf"))  # TF's SAME max pool ignores the padding
    return F.max_pool2d(x, kernel, stride)


@_op("AvgPool")
def _avg_pool(s, x):
    kernel, stride = _nhwc_attr(s, "ksize"), _nhwc_attr(s, "strides")
    pad = _spatial_padding(s, x, kernel, stride)
    if not any(pad):
        return F.avg_pool2d(x, kernel, stride)
    # TF averages over the window's pixels inside the image only, padding possibly asymmetric
    ones = torch.ones_like(x[:1, :1])
    return F.avg_pool2d(F.pad(x, pad), kernel, stride) / F.avg_pool2d(F.pad(ones, pad), kernel, stride)


@_op("BiasAdd")
def _bias_add(s, x, b):
    return x + to_nchw_broadcast(x, b)


@_op("FusedBatchNorm", "FusedBatchNormV3")
def _fused_batch_norm(s, x, scale, offset, mean, var):
    if s.attrs.get("is_training", False):
        raise NotImplementedError(f"{s.op_type} {s.name!r}: training-mode batch norm")
    k = scale * torch.rsqrt(var + s.attrs.get("epsilon", 1e-4))
    return x * to_nchw_broadcast(x, k) + to_nchw_broadcast(x, offset - mean * k)


@_op("MatMul")
def _matmul(s, a, b):
    if s.attrs.get("transpose_a", False):
        a = a.transpose(-1, -2)
    if s.attrs.get("transpose_b", False):
        b = b.transpose(-1, -2)
    return a @ b


@_op("_Linear")
def _linear(s, x, w_t, b=None):
    """MatMul by a constant weight (stored transposed, torch's (out, in)), with a folded bias."""
    return F.linear(x, w_t, b)


# elementwise ---------------------------------------------------------------------------------

def _binary(fn):
    def apply(s, a, b):
        return fn(a, to_nchw_broadcast(a, b)) if a.dim() >= b.dim() else fn(to_nchw_broadcast(b, a), b)
    return apply


for _name, _fn in (("Add", torch.add), ("AddV2", torch.add), ("Sub", torch.sub), ("Mul", torch.mul),
                   ("RealDiv", torch.div), ("Maximum", torch.maximum), ("Minimum", torch.minimum)):
    _OPS[_name] = _binary(_fn)

_op("Relu")(lambda s, x: F.relu(x))
_op("Relu6")(lambda s, x: F.relu6(x))
_op("Square")(lambda s, x: x * x)
_op("Rsqrt")(lambda s, x: torch.rsqrt(x))
_op("Sqrt")(lambda s, x: torch.sqrt(x))
_op("Identity")(lambda s, x: x)


# shapes and reductions -----------------------------------------------------------------------

@_op("ConcatV2")
def _concat(s, *xs_and_axis):
    *xs, axis = xs_and_axis  # axis: a python int (static input)
    return torch.cat(xs, _axis(xs[0], axis))


@_op("Sum")
def _sum(s, x, axes):
    axes = axes if isinstance(axes, list) else [axes]  # a python int or list (static input)
    dims = sorted({_axis(x, a) for a in axes})
    return x.sum(dim=dims, keepdim=bool(s.attrs.get("keep_dims", False)))


@_op("Reshape")
def _reshape(s, x, shape):
    """TF semantics on NHWC order; the leading entry follows the input's batch when the importer
    found it hard-coding the graph's static batch size."""
    dims = list(shape)  # a python list (static input)
    if s.attrs.get("_dynamic_batch") and dims:
        dims[0] = x.shape[0]
    return to_nchw(to_nhwc(x).reshape(dims))


@_op("Shape")
def _shape(s, x):
    return torch.tensor(to_nhwc(x).shape, dtype=torch.int32)


SUPPORTED_OPS = tuple(sorted(k for k in _OPS if not k.startswith("_")) + ["Const", "Placeholder"])
