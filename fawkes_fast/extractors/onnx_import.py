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

from collections import Counter
from pathlib import Path

import onnx
import torch
import torch.nn as nn

from .onnx_graph import _Step, _step_for, read_graph
from .onnx_ops import _OPS
from .onnx_shape_ops import _STATIC_ARGS, _static_value
from . import onnx_passes as passes

__all__ = ["onnx_to_torch", "OnnxModule", "SUPPORTED_OPS"]

SUPPORTED_OPS = tuple(sorted({k for k in _OPS if not k.startswith("_")} | {"Constant"}))


def onnx_to_torch(model: str | Path | onnx.ModelProto, activation_qdq: str = "emulate",
                  fold_batchnorm: bool = True) -> OnnxModule:
    """Import an ONNX model as a frozen torch module (see the module docstring).

    activation_qdq: what to do with QuantizeLinear->DequantizeLinear pairs on activations:
    "emulate" (round/clamp like int8, straight-through gradient; what OpenCV's DNN computes) or
    "remove" (identity: the float model the quantiser started from).
    """
    if activation_qdq not in ("emulate", "remove"):
        raise ValueError("activation_qdq must be 'emulate' or 'remove'")
    g = read_graph(model)
    outputs = set(g.output_names)
    nodes = passes.live_nodes(passes.fold_constants(g, activation_qdq), outputs)
    if fold_batchnorm:
        nodes = passes.fold_batchnorm(nodes, g.consts, outputs)
    passes.gemm_as_linear(nodes, g.consts)
    nodes = passes.expand_like(nodes, outputs)
    passes.prelu_slopes(nodes, g.consts)
    return _build(nodes, g)


def _build(nodes, g) -> OnnxModule:
    """Steps for the surviving nodes; Identity and inference Dropout become aliases."""
    steps = []
    used = set(g.output_names)
    alias: dict[str, str] = {}
    for n in nodes:
        n.inputs = [alias.get(x, x) for x in n.inputs]
        if (n.op_type == "Identity" or (n.op_type == "Dropout" and len([o for o in n.outputs if o]) == 1)) \
                and n.outputs[0] not in g.output_names and n.inputs[0]:
            alias[n.outputs[0]] = n.inputs[0]
            continue
        st = _step_for(n, g.opset)
        static = _STATIC_ARGS.get(n.op_type, ())
        st.args = [(2, _static_value(n.op_type, pos, g.consts[x])) if (x and pos in static and x in g.consts) else x
                   for pos, x in enumerate(n.inputs)]
        used.update(a for a in st.args if isinstance(a, str) and a)
        steps.append(st)
    # declared inputs nothing reads (e.g. float weights a quantiser replaced) are dropped
    input_names = [x for x in g.input_names if x in used]
    module = OnnxModule(steps, {k: v for k, v in g.consts.items() if k in used}, input_names, g.output_names,
                        {k: v for k, v in g.input_shapes.items() if k in input_names})
    module.eval()
    return module


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
        ops = Counter(st.op_type for st in self._steps)
        return f"inputs={self.input_names}, outputs={self.output_names}, ops={dict(ops)}"


