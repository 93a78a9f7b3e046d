"""A reader for dlib's binary serialisation of DNN models (``dlib::serialize(net)``).

Only what a trained, inference-only network needs is decoded; everything is checked
as it is read and any mismatch raises :class:`DlibFormatError` (a ``ValueError``).

Format notes (dlib/serialize.h, dlib/dnn/{core,layers,tensor,input}.h):

* integers: one control byte ``c`` then ``c & 0x0F`` little-endian magnitude bytes;
  ``c & 0x80`` marks a negative value (0 is ``01 00``).
* floats/doubles: a ``float_details`` pair, int64 mantissa then int16 exponent, both as
  integers above; value = mantissa * 2**exponent (exponents 32000/32001/32002 mean
  +inf/-inf/nan).
* strings: length (integer) then raw bytes.  bools: one ASCII byte ``'1'``/``'0'``.
* tensor: version 2, then num_samples, k, nr, nc, then n*k*nr*nc little-endian IEEE
  float32 values (row-major, NCHW).  alias_tensor: version 1 then n, k, nr, nc.
* a network is written outermost layer first, but each ``add_layer`` serialises its
  subnetwork *before* its own layer details.  So a file is: the loss layer, a run of
  version integers (2 = add_layer, 1 = tag/skip layer, which carry nothing else, and 3 =
  the bottom add_layer that owns the input layer), the input layer, then the layer
  details bottom-up, each followed by that add_layer's bookkeeping (3 bools and 3
  tensors, plus an int for the bottom layer).  Tag/skip ids are not stored: the layer
  *types* come from the C++ network definition, so a reader must know the architecture.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class DlibFormatError(ValueError):
    """The bytes are not (this kind of) a dlib DNN model file."""


_SPECIAL_EXPONENTS = {32000: math.inf, 32001: -math.inf, 32002: math.nan}


class DlibReader:
    """Sequential decoder for dlib's serialisation primitives over an in-memory buffer."""

    def __init__(self, data: bytes, source: str | None = None):
        self.data = memoryview(data)
        self.pos = 0
        self.source = source

    # -- primitives ------------------------------------------------------------------
    def _fail(self, msg: str) -> DlibFormatError:
        where = f"{self.source}: " if self.source else ""
        return DlibFormatError(f"{where}{msg} (at byte {self.pos})")

    def _take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise self._fail(f"unexpected end of data (wanted {n} more bytes)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        ctrl = self._take(1)[0]
        if ctrl & 0x70:
            raise self._fail(f"bad integer control byte 0x{ctrl:02x}")
        size = ctrl & 0x0F
        if size > 8:
            raise self._fail(f"integer of {size} bytes")
        value = int.from_bytes(self._take(size), "little")
        return -value if ctrl & 0x80 else value

    def float(self) -> float:
        mantissa = self.int()
        exponent = self.int()
        if exponent in _SPECIAL_EXPONENTS:
            return _SPECIAL_EXPONENTS[exponent]
        return math.ldexp(mantissa, exponent)

    def bool(self) -> bool:
        ch = bytes(self._take(1))
        if ch not in (b"0", b"1"):
            raise self._fail(f"bad bool byte {ch!r}")
        return ch == b"1"

    def string(self, max_len: int = 4096) -> str:
        n = self.int()
        if not 0 <= n <= max_len:
            raise self._fail(f"implausible string length {n}")
        raw = bytes(self._take(n))
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise self._fail(f"non-ASCII string {raw[:32]!r}") from None

    def expect_int(self, expected: int, what: str) -> None:
        got = self.int()
        if got != expected:
            raise self._fail(f"{what}: expected {expected}, found {got}")

    def tensor(self) -> np.ndarray:
        """A resizable_tensor as a float32 array of shape (n, k, nr, nc) (a copy)."""
        self.expect_int(2, "tensor version")
        shape = tuple(self.int() for _ in range(4))
        if any(d < 0 for d in shape):
            raise self._fail(f"negative tensor shape {shape}")
        count = math.prod(shape)
        raw = self._take(4 * count)
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)

    def alias(self) -> tuple[int, int, int, int]:
        self.expect_int(1, "alias_tensor version")
        return tuple(self.int() for _ in range(4))  # type: ignore[return-value]

    def at_end(self) -> bool:
        return self.pos == len(self.data)


# -- layer details ----------------------------------------------------------------------

@dataclass
class Layer:
    """One decoded layer: ``kind`` is dlib's serialised name (e.g. 'con_4', 'affine_')."""
    kind: str
    params: dict[str, Any] = field(default_factory=dict)


def _read_con(r: DlibReader, kind: str) -> Layer:
    params = r.tensor().reshape(-1)
    num_filters, nr, nc = r.int(), r.int(), r.int()
    stride = (r.int(), r.int())
    padding = (r.int(), r.int())
    filt = r.alias()
    bias = r.alias()
    for _ in range(4):  # learning-rate / weight-decay multipliers: training only
        r.float()
    n_w = math.prod(filt)
    if filt[0] != num_filters or filt[2:] != (nr, nc) or bias != (1, num_filters, 1, 1) \
            or params.size != n_w + num_filters:
        raise r._fail(f"inconsistent con_ layer (filters {filt}, biases {bias}, "
                      f"{params.size} params)")
    return Layer(kind, dict(weight=params[:n_w].reshape(filt), bias=params[n_w:].copy(),
                            stride=stride, padding=padding))


def _read_affine(r: DlibReader, kind: str) -> Layer:
    params = r.tensor().reshape(-1)
    gamma, beta = r.alias(), r.alias()
    mode = r.int()
    n = math.prod(gamma)
    if gamma != beta or params.size != 2 * n:
        raise r._fail(f"inconsistent affine_ layer (gamma {gamma}, {params.size} params)")
    return Layer(kind, dict(gamma=params[:n].copy(), beta=params[n:].copy(), mode=mode,
                            shape=gamma))


def _read_pool(r: DlibReader, kind: str) -> Layer:
    nr, nc = r.int(), r.int()
    stride = (r.int(), r.int())
    padding = (r.int(), r.int())
    return Layer(kind, dict(size=(nr, nc), stride=stride, padding=padding))


def _read_fc(r: DlibReader, kind: str) -> Layer:
    num_outputs, num_inputs = r.int(), r.int()
    params = r.tensor().reshape(-1)
    weights = r.alias()
    r.alias()  # biases alias (empty when there is no bias)
    bias_mode = r.int()  # 0 = has bias, 1 = no bias
    for _ in range(4):
        r.float()
    n_w = num_inputs * num_outputs
    want = n_w + (num_outputs if bias_mode == 0 else 0)
    if weights[:2] != (num_inputs, num_outputs) or params.size != want:
        raise r._fail(f"inconsistent fc_ layer ({num_inputs}->{num_outputs}, "
                      f"{params.size} params)")
    bias = params[n_w:].copy() if bias_mode == 0 else None
    # dlib computes out = x @ W with W stored (num_inputs, num_outputs) row-major.
    return Layer(kind, dict(weight=params[:n_w].reshape(num_inputs, num_outputs),
                            bias=bias))


def _read_nothing(r: DlibReader, kind: str) -> Layer:
    return Layer(kind)


_DETAIL_READERS = {
    "con_4": _read_con,
    "affine_": _read_affine,
    "relu_": _read_nothing,
    "add_prev_": _read_nothing,
    "max_pool_2": _read_pool,
    "avg_pool_2": _read_pool,
    "fc_2": _read_fc,
}


def read_details(r: DlibReader) -> Layer:
    kind = r.string()
    reader = _DETAIL_READERS.get(kind)
    if reader is None:
        raise r._fail(f"unsupported dlib layer type {kind!r}")
    return reader(r, kind)


def _skip_add_layer_state(r: DlibReader, bottom: bool) -> None:
    for _ in range(3):  # this_layer_setup_called, gradient_input_is_stale, getters disabled
        r.bool()
    for _ in range(3):  # x_grad, cached_output, then params_grad (grad_final at the bottom)
        r.tensor()
    if bottom:
        r.int()  # sample expansion factor (add_layer version 3)


@dataclass
class DlibNet:
    """A decoded dlib network: ``layers`` bottom-up, tag/skip layers as ``None``."""
    loss: Layer
    input: Layer
    layers: list[Layer | None]
    versions: list[int]  # the header's version integers, outermost first


def parse_dlib_net(data: bytes, source: str | None = None) -> DlibNet:
    """Decode a dlib ``loss_metric`` network over an ``input_rgb_image_sized`` input."""
    r = DlibReader(data, source)
    r.expect_int(1, "add_loss_layer version")
    loss_kind = r.string()
    if loss_kind != "loss_metric_2":
        raise r._fail(f"unsupported loss layer {loss_kind!r}")
    loss = Layer(loss_kind, dict(margin=r.float(), dist_thresh=r.float()))

    versions: list[int] = []
    while True:
        v = r.int()
        versions.append(v)
        if v == 3:
            break
        if v not in (1, 2) or len(versions) > 100_000:
            raise r._fail(f"unexpected layer version {v}")

    input_kind = r.string()
    if input_kind != "input_rgb_image_sized":
        raise r._fail(f"unsupported input layer {input_kind!r}")
    mean = (r.float(), r.float(), r.float())
    size = (r.int(), r.int())
    inp = Layer(input_kind, dict(mean=mean, size=size))

    layers: list[Layer | None] = []
    for i, v in enumerate(reversed(versions)):  # bottom-up
        if v == 1:
            layers.append(None)
            continue
        layers.append(read_details(r))
        _skip_add_layer_state(r, bottom=(i == 0))
    if not r.at_end():
        raise r._fail(f"{len(r.data) - r.pos} trailing bytes after the network")
    return DlibNet(loss, inp, layers, versions)
