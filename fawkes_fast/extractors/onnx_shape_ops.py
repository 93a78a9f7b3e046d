"""Reduction and shape ops for the ONNX importer, and the registry helpers every op module uses.

``onnx_ops`` adds the arithmetic, convolution, pooling and quantisation ops on top of this table.
Each op is ``fn(step, *inputs) -> Tensor | tuple``; ``step.attrs`` holds the node's attributes and
``step.opset`` the default-domain opset. Missing optional inputs arrive as None.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

_INT64_MAX = 2**63 - 1


def registry(table: dict[str, Callable]):
    """A decorator `@op("Name", ...)` that enters a function in `table` under each ONNX op name."""
    def op(*names: str):
        def deco(fn):
            for n in names:
                table[n] = fn
            return fn
        return deco
    return op


SHAPE_OPS: dict[str, Callable] = {}
_op = registry(SHAPE_OPS)


def _ints(t) -> list[int]:
    if t is None:
        return []
    if isinstance(t, torch.Tensor):
        return [int(v) for v in t.reshape(-1).tolist()]
    return [int(v) for v in t]


def _is_int(t: torch.Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def _torch_pad_order(pads: Sequence[int]) -> list[int]:
    """ONNX [b1, b2, .., e1, e2, ..] (first axis first) -> F.pad (last axis first) pairs."""
    n = len(pads) // 2
    out = []
    for i in reversed(range(n)):
        out += [pads[i], pads[i + n]]
    return out


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
