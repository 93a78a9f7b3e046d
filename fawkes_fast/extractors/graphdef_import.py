"""A small TensorFlow frozen-GraphDef -> PyTorch importer (no TensorFlow needed).

``graphdef_to_torch(path, output=...)`` reads a frozen ``GraphDef`` (``.pb``) with the TF protocol
buffers that ``tensorboard`` ships (``tensorboard.compat.proto``) and returns a frozen
``torch.nn.Module`` that runs the graph with torch ops, in topological order, from the graph's
single ``Placeholder`` to ``output``. At import time it:

* reads every ``Const`` into a tensor and evaluates every node whose inputs are all constants;
* stores 4-D tensors NCHW: the module takes NCHW input, convolution weights go from TF's HWIO
  to torch's OIHW once, and axis-naming ops are remapped (``graphdef_ops``' layout rule);
* folds a ``BiasAdd`` of a constant into the ``Conv2D`` or ``MatMul`` (constant weight) before it;
* makes a ``Reshape`` whose constant target shape hard-codes the placeholder's static batch size
  take the batch size from its input, so the module runs at any batch size;
* drops nodes the output does not need.

TF 'SAME' padding is reproduced exactly, asymmetric cases included (the extra pixel goes after).
The result is differentiable with respect to its input and works with ``torch.jit.trace``; weights
are buffers. Supported ops: ``graphdef_ops.SUPPORTED_OPS``; any other op raises
``NotImplementedError`` naming it; a file that is not a GraphDef raises ``ValueError``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from ..model_files import ModelMissingError
from .graphdef_ops import _OPS, SUPPORTED_OPS, to_nchw

__all__ = ["graphdef_to_torch", "read_graphdef", "GraphDefModule", "SUPPORTED_OPS"]

# TF DataType enum (tensorflow/core/framework/types.proto) -> numpy, and the TensorProto field
# that holds values when tensor_content is empty
_DTYPES = {1: (np.float32, "float_val"), 2: (np.float64, "double_val"), 3: (np.int32, "int_val"),
           4: (np.uint8, "int_val"), 5: (np.int16, "int_val"), 6: (np.int8, "int_val"),
           9: (np.int64, "int64_val"), 10: (np.bool_, "bool_val"), 19: (np.float16, "half_val")}


@dataclass
class _Node:
    op: str
    name: str
    inputs: list[str]  # producer node names (output 0), control inputs dropped
    attrs: dict[str, Any]


@dataclass
class _Step:
    """One op of the module: `fn(step, *args)`, its result stored under `name`."""
    name: str
    op_type: str
    fn: Callable
    attrs: dict[str, Any]
    args: list = field(default_factory=list)  # per input: (0, env name) | (1, buffer) | (2, python value)


def read_graphdef(path: str | Path):
    """The GraphDef proto of a frozen .pb file (ValueError if it is not one)."""
    try:
        from tensorboard.compat.proto import graph_pb2  # TF's own protos, without TensorFlow
    except ImportError as e:
        raise ModelMissingError("reading a TensorFlow graph needs the TF protocol buffers of the PyPI "
                                "package 'tensorboard': pip install tensorboard") from e
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no GraphDef at {path}")
    graph = graph_pb2.GraphDef()
    try:
        graph.ParseFromString(path.read_bytes())
    except Exception as e:  # protobuf DecodeError
        raise ValueError(f"{path} is not a readable TensorFlow GraphDef: {type(e).__name__}: {e}") from e
    if not graph.node:
        raise ValueError(f"{path} is not a TensorFlow GraphDef: it has no nodes")
    return graph


def tensor_to_numpy(t) -> np.ndarray:
    """A TensorProto's value (dtype, shape, tensor_content or a repeated *_val field)."""
    if t.dtype not in _DTYPES:
        raise NotImplementedError(f"tensor dtype enum {t.dtype}")
    dtype, field_name = _DTYPES[t.dtype]
    shape = [d.size for d in t.tensor_shape.dim]
    if t.tensor_content:
        return np.frombuffer(t.tensor_content, dtype=dtype).reshape(shape).copy()
    vals = getattr(t, field_name)
    if t.dtype == 19:  # half_val holds the raw 16 bits in ints
        vals = np.asarray(vals, np.uint16).view(np.float16)
    arr = np.asarray(vals, dtype=dtype)
    count = int(np.prod(shape)) if shape else 1
    if arr.size == count:
        return arr.reshape(shape)
    if arr.size == 1 or arr.size == 0:  # TF stores a splat as one value (or none for zeros)
        return np.full(shape, arr[0] if arr.size else 0, dtype=dtype)
    raise ValueError(f"tensor holds {arr.size} values for shape {shape}")


def _attr_value(a):
    kind = a.WhichOneof("value")
    if kind == "list":
        lst = a.list
        return [x.decode() for x in lst.s] if lst.s else list(lst.i) or list(lst.f) or list(lst.b)
    if kind == "s":
        return a.s.decode()
    if kind == "tensor":
        return tensor_to_numpy(a.tensor)
    if kind == "shape":
        return [d.size for d in a.shape.dim]
    return getattr(a, kind) if kind else None


def _nodes(graph) -> list[_Node]:
    out = []
    for n in graph.node:
        inputs = [x.split(":")[0] for x in n.input if not x.startswith("^")]
        if any(":" in x and not x.endswith(":0") for x in n.input if not x.startswith("^")):
            raise NotImplementedError(f"node {n.name!r} reads a second output of a node")
        out.append(_Node(n.op, n.name, inputs, {k: _attr_value(v) for k, v in n.attr.items()}))
    return out


def _needed(nodes: dict[str, _Node], output: str) -> list[_Node]:
    """The nodes `output` depends on, producers first (iterative depth-first post-order)."""
    order, seen, stack = [], set(), [(output, False)]
    while stack:
        name, expanded = stack.pop()
        if expanded:
            order.append(nodes[name])
            continue
        if name in seen:
            continue
        if name not in nodes:
            raise ValueError(f"the graph has no node {name!r}")
        seen.add(name)
        stack.append((name, True))
        stack.extend((x, False) for x in reversed(nodes[name].inputs) if x not in seen)
    return order


class GraphDefModule(nn.Module):
    """A GraphDef executed with torch ops. Build with `graphdef_to_torch`."""

    def __init__(self, steps: list[_Step], consts: dict[str, torch.Tensor], input_name: str, output_name: str):
        super().__init__()
        buffer_of = {}
        for i, (name, t) in enumerate(consts.items()):
            self.register_buffer(f"c{i}", t)
            buffer_of[name] = f"c{i}"
        for st in steps:
            st.args = [x if isinstance(x, tuple) else (1, buffer_of[x]) if x in buffer_of else (0, x) for x in st.args]
        self._steps = steps
        self.input_name, self.output_name = input_name, output_name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env = {self.input_name: x}
        for st in self._steps:
            env[st.name] = st.fn(st, *[env[a] if k == 0 else getattr(self, a) if k == 1 else a for k, a in st.args])
        return env[self.output_name]

    def extra_repr(self) -> str:
        from collections import Counter

        ops = dict(Counter(s.op_type for s in self._steps))
        return f"input={self.input_name}, output={self.output_name}, ops={ops}"


def _fold_bias(live: list[_Node], consts: dict[str, torch.Tensor], output: str) -> list[_Node]:
    """Conv2D/MatMul (constant weight) -> BiasAdd (constant) becomes one op with a bias."""
    uses: dict[str, int] = {}
    for n in live:
        for x in n.inputs:
            uses[x] = uses.get(x, 0) + 1
    by_name = {n.name: n for n in live}
    out = []
    for n in live:
        src = by_name.get(n.inputs[0]) if n.inputs else None
        if (n.op == "BiasAdd" and n.inputs[1] in consts and src is not None and uses[src.name] == 1
                and src.name != output and src.op in ("Conv2D", "_Linear") and len(src.inputs) == 2):
            src.inputs.append(n.inputs[1])
            src.name = n.name  # the fused op produces what the BiasAdd produced
            continue
        out.append(n)
    return out


def _prepare(n: _Node, consts: dict[str, torch.Tensor], static_batch: int | None) -> None:
    """Per-node rewrites that need the constants: weight layouts, batch-agnostic reshapes."""
    if n.op == "Conv2D" and n.inputs[1] in consts:
        key = n.name + "::oihw"  # a new entry: a weight shared by two nodes is converted for each
        hwio = consts[n.inputs[1]].permute(0, 2, 3, 1)  # undo the 4-D storage rule
        consts[key] = hwio.permute(3, 2, 0, 1).contiguous()
        n.inputs[1] = key
    elif n.op == "Conv2D":
        raise NotImplementedError(f"Conv2D {n.name!r} with a computed weight")
    elif n.op == "MatMul" and n.inputs[1] in consts and not n.attrs.get("transpose_a"):
        w = consts[n.inputs[1]]
        key = n.name + "::linear"
        consts[key] = (w if n.attrs.get("transpose_b") else w.t()).contiguous()
        n.op, n.inputs = "_Linear", [n.inputs[0], key]
    elif n.op == "Reshape" and static_batch and n.inputs[1] in consts:
        dims = consts[n.inputs[1]].reshape(-1).tolist()
        if dims and dims[0] == static_batch:
            n.attrs = dict(n.attrs, _dynamic_batch=True)


# inputs read as python values (axes, shapes): constant in a trace, and no tensor -> int per call
_STATIC_INPUT = {"ConcatV2": -1, "Sum": 1, "Reshape": 1}


def _static_arg(n: _Node, i: int, name: str, consts: dict[str, torch.Tensor]):
    pos = _STATIC_INPUT.get(n.op)
    if pos is not None and i == pos % len(n.inputs):
        if name not in consts:
            raise NotImplementedError(f"{n.op} {n.name!r}: computed {'axis' if n.op != 'Reshape' else 'shape'}")
        return (2, consts[name].tolist())
    return name


def graphdef_to_torch(model, output: str | None = None) -> GraphDefModule:
    """Import a frozen GraphDef (path or GraphDef proto) as a frozen torch module, from its one
    Placeholder (NCHW input) to `output` (default: the last node)."""
    graph = model if hasattr(model, "node") else read_graphdef(model)
    all_nodes = _nodes(graph)
    by_name = {n.name: n for n in all_nodes}
    output = output or all_nodes[-1].name
    order = _needed(by_name, output)
    placeholders = [n for n in order if n.op == "Placeholder"]
    if len(placeholders) != 1:
        raise NotImplementedError(f"need exactly one Placeholder feeding {output!r}, found {len(placeholders)}")
    shape = placeholders[0].attrs.get("shape") or []
    static_batch = shape[0] if shape and shape[0] > 0 else None
    consts: dict[str, torch.Tensor] = {}
    live: list[_Node] = []
    for n in order:
        if n.op == "Placeholder":
            continue
        if n.op != "Const" and n.op not in _OPS:
            raise NotImplementedError(f"unsupported TensorFlow op {n.op} (node {n.name!r})")
        if n.op == "Const":
            consts[n.name] = to_nchw(torch.from_numpy(np.array(n.attrs["value"])))  # np.array keeps 0-d
        elif all(x in consts for x in n.inputs):
            args = [_static_arg(n, i, x, consts) for i, x in enumerate(n.inputs)]
            with torch.no_grad():
                consts[n.name] = _OPS[n.op](_Step(n.name, n.op, _OPS[n.op], n.attrs),
                                            *[a[1] if isinstance(a, tuple) else consts[a] for a in args])
        else:
            live.append(n)
    for n in live:
        _prepare(n, consts, static_batch)
    live = _fold_bias(live, consts, output)
    steps = [_Step(n.name, n.op, _OPS[n.op], n.attrs, [_static_arg(n, i, x, consts) for i, x in enumerate(n.inputs)])
             for n in live]
    used = {x for st in steps for x in st.args if isinstance(x, str) and x in consts}
    module = GraphDefModule(steps, {k: v for k, v in consts.items() if k in used}, placeholders[0].name, output)
    return module.eval()
