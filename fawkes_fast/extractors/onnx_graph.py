"""Reading an ONNX file into the importer's plain node list (`onnx_import` builds a module from it).

Nodes come out in topological order with attributes as Python values; initializers and
``Constant`` values become torch tensors. Unsupported ops are refused here, by name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from .onnx_ops import _OPS


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


@dataclass
class Graph:
    """A model's graph as plain Python: what `onnx_passes` rewrites and `onnx_import` runs."""
    nodes: list[_Node]  # topological order
    consts: dict[str, torch.Tensor]  # initializers (more are added as passes fold nodes)
    input_names: list[str]
    input_shapes: dict[str, list]
    output_names: list[str]
    opset: int


def read_graph(model) -> Graph:
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
    input_shapes = {}
    for i in graph.input:
        if i.name not in consts:
            dims = i.type.tensor_type.shape.dim
            input_shapes[i.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims]
    nodes = [_Node(n.op_type, n.name or f"{n.op_type}_{k}", list(n.input), list(n.output),
                   {a.name: _attr_value(a) for a in n.attribute}, n.domain) for k, n in enumerate(graph.node)]
    for n in nodes:
        _check_supported(n)
    return Graph(_topo_sort(nodes, set(consts) | set(input_shapes)), consts, list(input_shapes), input_shapes,
                 [o.name for o in graph.output], opset)
