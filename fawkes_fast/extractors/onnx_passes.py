"""Graph rewrites the ONNX importer applies before building a module (see `onnx_import`).

Each pass takes the node list and the constants and returns the new node list; folded weights are
added to the constants under new names. Order matters: constants and QDQ first, then dead nodes,
then fusions that need to know a node's only consumer.
"""
from __future__ import annotations

import torch

from .onnx_graph import Graph, _constant_node_value, _Node, _run_node
from .onnx_shape_ops import _ints


def fold_constants(g: Graph, activation_qdq: str) -> list[_Node]:
    """Evaluate every node whose inputs are all constants, turn activation QDQ pairs into one
    fake-quant node (or an identity), and let a Reshape that hard-codes the graph's static batch
    size take the batch size from its input."""
    static_batch = {s[0] for s in g.input_shapes.values() if s and isinstance(s[0], int) and s[0] > 0}
    consts = g.consts
    producer: dict[str, _Node] = {}
    kept: list[_Node] = []
    for n in g.nodes:
        if n.op_type == "Constant":
            consts[n.outputs[0]] = _constant_node_value(n)
            continue
        if n.op_type == "DequantizeLinear" and n.inputs[0] not in consts and n.inputs[0] in producer:
            n = _qdq_pair(producer[n.inputs[0]], n, consts, activation_qdq)
        if all((not x) or x in consts for x in n.inputs) and n.op_type != "_FakeQuant":
            with torch.no_grad():
                outs = _run_node(n, g.opset, [consts[x] if x else None for x in n.inputs])
            consts.update((name, t) for name, t in zip(n.outputs, outs) if name)
            continue
        if n.op_type == "Reshape" and static_batch and len(n.inputs) > 1 and n.inputs[1] in consts:
            dims = _ints(consts[n.inputs[1]])
            if dims and dims[0] in static_batch:
                n.attrs = dict(n.attrs, _dynamic_batch=True)
        kept.append(n)
        producer.update((o, n) for o in n.outputs if o)
    return kept


def _qdq_pair(q: _Node, n: _Node, consts, activation_qdq: str) -> _Node:
    """DequantizeLinear `n` fed by QuantizeLinear `q` with constant scales -> one node."""
    if q.op_type != "QuantizeLinear" or not all((not x) or x in consts for x in q.inputs[1:] + n.inputs[1:]):
        return n
    get = lambda nd, i: consts[nd.inputs[i]] if len(nd.inputs) > i and nd.inputs[i] else None  # noqa: E731
    if not (_same(get(q, 1), get(n, 1)) and _same(get(q, 2), get(n, 2))):
        raise NotImplementedError(f"QuantizeLinear {q.name!r} -> DequantizeLinear {n.name!r} with different scales")
    if activation_qdq == "remove":
        return _Node("Identity", n.name, [q.inputs[0]], n.outputs, {}, "")
    zp = get(q, 2)
    attrs = dict(n.attrs, qdtype=zp.dtype if zp is not None else torch.uint8)
    return _Node("_FakeQuant", n.name, [q.inputs[0]] + q.inputs[1:], n.outputs, attrs, "")


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))




def live_nodes(nodes: list[_Node], outputs) -> list[_Node]:
    """The nodes the outputs depend on, in order."""
    needed = set(outputs)
    live: list[_Node] = []
    for n in reversed(nodes):
        if any(o in needed for o in n.outputs):
            live.append(n)
            needed.update(x for x in n.inputs if x)
    return live[::-1]


def gemm_as_linear(nodes: list[_Node], consts) -> None:
    """Gemm with constant weights -> F.linear with an (N, K) weight and a 1-D bias (in place)."""
    for n in nodes:
        if n.op_type != "Gemm" or n.attrs.get("transA", 0) or n.inputs[1] not in consts \
                or n.attrs.get("alpha", 1.0) != 1.0 or n.attrs.get("beta", 1.0) != 1.0:
            continue
        w = consts[n.inputs[1]]
        if w.dim() != 2:
            continue
        w = w if n.attrs.get("transB", 0) else w.t()
        c = consts.get(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2] else None
        if (len(n.inputs) > 2 and n.inputs[2] and c is None) or (c is not None and c.numel() != w.shape[0]):
            continue  # a run-time bias, or one that broadcasts another way
        wname, bname = n.name + "::linear_w", n.name + "::linear_b"
        consts[wname] = w.contiguous()
        n.inputs = [n.inputs[0], wname]
        if c is not None:
            consts[bname] = c.reshape(-1).contiguous()
            n.inputs.append(bname)
        n.attrs = dict(n.attrs, _linear=True)


def expand_like(nodes: list[_Node], outputs) -> list[_Node]:
    """Expand(x, Shape(y)) -> broadcast against y, which keeps the batch size symbolic in traces."""
    shape_of = {n.outputs[0]: n for n in nodes if n.op_type == "Shape" and "start" not in n.attrs
                and "end" not in n.attrs}
    changed = False
    for n in nodes:
        if n.op_type == "Expand" and n.inputs[1] in shape_of:
            n.op_type, n.inputs = "_ExpandLike", [n.inputs[0], shape_of[n.inputs[1]].inputs[0]]
            changed = True
    return live_nodes(nodes, outputs) if changed else nodes  # the Shape nodes may now be dead


def prelu_slopes(nodes: list[_Node], consts) -> None:
    """PRelu with a constant per-channel (C, 1, .., 1) slope -> a 1-D slope for F.prelu (in place)."""
    for n in nodes:
        if n.op_type == "PRelu" and n.inputs[1] in consts:
            sl = consts[n.inputs[1]]
            if sl.dim() >= 1 and all(d == 1 for d in sl.shape[1:]):
                name = n.name + "::slope"
                consts[name] = sl.reshape(-1).contiguous()
                n.attrs = dict(n.attrs, _slope_shape=tuple(sl.shape))
                n.inputs = [n.inputs[0], name]


def fold_batchnorm(nodes: list[_Node], consts: dict[str, torch.Tensor], outputs: set[str]) -> list[_Node]:
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
