"""A small ONNX -> PyTorch importer. The spec that turns an ONNX face model into an extractor
(described below) lives in `onnx_face.py`.

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
Supported ops are listed in ``SUPPORTED_OPS`` (default ONNX domain; the attribute-vs-input changes
between opsets are handled for Clip, Pad, Slice, Softmax, Squeeze/Unsqueeze, Split, Reduce*); any other
op, or any op of another domain, raises ``NotImplementedError`` naming the op type and node. A file
that is not a readable ONNX model raises ``ValueError``.

Limits: ``Shape`` of an activation is evaluated at run time; under ``torch.jit.trace`` only the batch
dimension stays symbolic (``Reshape`` whose target's first entry equals the input's batch size, and
``Expand(x, Shape(y))``); other shape-derived values are baked into a trace. No control flow
(If/Loop/Scan), no ConvTranspose/Resize/RNNs, no integer-only ops (QLinearConv, ConvInteger).

Bring-your-own-model spec (JSON)
--------------------------------
An ONNX face recognizer is described by a JSON file (by convention ``<model>.json`` beside
``<model>.onnx``)::

    {
      "input_size": 112,              // chips are input_size x input_size pixels (square)
      "template": "arcface",          // alignment: "arcface" (5-point ArcFace/InsightFace template,
                                      //   as cv2.FaceRecognizerSF.alignCrop), "dlib" (dlib chip) or
                                      //   "facenet" (FaceNet's MTCNN box with a margin)
      "mean": [127.5, 127.5, 127.5],  // per channel, in the model's channel order, on the 0..255 scale
      "std": [128.0, 128.0, 128.0],   // model input = (pixel - mean) / std
      "channel_order": "RGB",         // "RGB" or "BGR": channel order the model expects
      "embedding_dim": 512            // length of the model's output vector
    }

(JSON has no comments; they are explanations here.) ``onnx_face.wrap_onnx_face_model(module, spec)`` maps
chips that are RGB float32 ``(B, 3, input_size, input_size)`` with values in [0, 255] to the model's
input (channel reordering, then ``(x - mean) / std``) and returns ``(B, embedding_dim)`` raw
(unnormalised) embeddings. Resizing is not done: chips must already be ``input_size`` square.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import torch
import torch.nn as nn
from onnx import numpy_helper

__all__ = ["onnx_to_torch", "OnnxModule", "SUPPORTED_OPS"]

_INT64_MAX = 2**63 - 1


from .onnx_ops import _OPS, _STATIC_ARGS, _ints, _static_value  # noqa: E402  (op table)


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
    alias: dict[str, str] = {}  # outputs of Identity / inference Dropout -> their input
    for n in live:
        n.inputs = [alias.get(x, x) for x in n.inputs]
        if (n.op_type == "Identity" or (n.op_type == "Dropout" and len([o for o in n.outputs if o]) == 1)) \
                and n.outputs[0] not in output_names and n.inputs[0]:
            alias[n.outputs[0]] = n.inputs[0]
            continue
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
