"""dlib's face-recognition ResNet (dlib_face_recognition_resnet_model_v1.dat) as a torch module.

The .dat file is decoded directly (see :mod:`fawkes_fast.extractors.dlib_format`) into the
network dlib defines in tools/python/src/face_recognition.cpp (``anet_type``):

    input_rgb_image_sized<150>: x = (rgb - per-channel mean) / 256
    con 32 7x7/2 (no padding) -> affine -> relu -> max_pool 3x3/2 (no padding)
    3 x ares<32>, ares_down<64> + 3 x ares<64>, ares_down<128> + 2 x ares<128>,
    ares_down<256> + 2 x ares<256>, ares_down<256>
    avg_pool_everything -> fc_no_bias 128  (raw descriptor; dlib does not L2-normalise)

    ares<N>      = relu(x + affine(con3x3(relu(affine(con3x3(x))))))
    ares_down<N> = relu(avg_pool2x2/2(x) (+) block with the first conv at stride 2, pad 0)

dlib's add_prev adds tensors of different shapes by zero-padding the smaller one at the
end of each dimension (channels, rows, cols); ares_down relies on that for the channel
increase and, in the last two stages, for pooled 4x4 vs conv 3x3 and pooled 2x2 vs
conv 1x1 (stride-2 convs and pools have no padding in dlib).

Each affine (the batch-norm of training, frozen to per-channel scale/shift) is folded into
the conv before it, so the forward pass is conv + relu + pool + add only.

The cloak's pixels must not depend on how many threads compute them (issue #23), and torch's CPU
choices did: for one chip, oneDNN's backward of the strided 7x7 stem; the convs of the last stages
(maps of 8x8 and smaller), whose sums oneDNN and MKL split among threads (on an AMD EPYC in the
128-to-256 block only, on an AVX-512 Xeon in every conv there); for a batch of five, MKL's product of
the final fully connected layer. So the stem runs as the same sums over a space-to-depth input
(`_SpaceToDepthConv`), the 128- and 256-channel stages as fixed-order products (`_OrderedConv`) while
the rest stays channels-last (faster), and the last layer sums its products row by row.
tests/test_determinism.py checks 1 thread against 2.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..model_files import dlib_model
from ..ops import HAS_EXTENSION
from .dlib_format import DlibFormatError, DlibNet, Layer, parse_dlib_net

CHIP_SIZE = 150
EMBEDDING_DIM = 128
MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"

__all__ = ["CHIP_SIZE", "EMBEDDING_DIM", "DlibResNet", "read_dlib_resnet", "build_dlib_resnet"]


class _Residual(nn.Module):
    """ares<N>: relu(x + conv2(relu(conv1(x)))), convs with the affines folded in."""

    def __init__(self, conv1: nn.Conv2d, conv2: nn.Conv2d):
        super().__init__()
        self.conv1 = conv1
        self.conv2 = conv2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.conv2(F.relu(self.conv1(x))))


class _SpaceToDepthConv(nn.Conv2d):
    """A stride-2 conv without padding, computed as a stride-1 conv over the input's 2x2 space-to-depth
    rearrangement (the kernel zero-padded to an even side): the same products, and the parameters of
    the nn.Conv2d it stands for. Why: for one chip torch runs the strided conv's input gradient through
    oneDNN's `brgconv_strided`, whose sums depend on the thread count; the stride-1 conv's do not."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size[0]
        half = (k + 1) // 2
        w = F.pad(self.weight, [0, 2 * half - k, 0, 2 * half - k])
        o, i = w.shape[0], w.shape[1]
        # w'[o, 4c + 2dy + dx, a, b] = w[o, c, 2a + dy, 2b + dx], pixel_unshuffle's channel order
        w = w.view(o, i, half, 2, half, 2).permute(0, 1, 3, 5, 2, 4).reshape(o, 4 * i, half, half)
        if not self.weight.is_contiguous():  # channels-last weights: keep the network's layout
            w = w.contiguous(memory_format=torch.channels_last)
        x = F.pad(x, [0, x.shape[3] % 2, 0, x.shape[2] % 2])  # odd sides: one zero row/column
        return F.conv2d(F.pixel_unshuffle(x, 2), w, self.bias)


if HAS_EXTENSION:  # a plain function, so that TorchScript can script and trace the module
    def _ordered_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.ops.fawkes_fast.ordered_mm(a, b)
else:  # ops.py has warned: torch's product, whose bits may follow the thread count
    def _ordered_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.matmul(a, b)


class _OrderedConv(nn.Conv2d):
    """A conv as an unfolded product whose every sum runs in one fixed order (`ops.ordered_mm`), for the
    last stages' small maps (8x8 and below): in float32, oneDNN and BLAS split those sums among the
    threads, so their bits followed the thread count on some CPUs (AVX-512 Xeons; issue #23). Under
    autocast (the bf16 step) the plain conv runs: oneDNN's bf16 kernels there gave the same bits with 1
    and 2 threads (bench/determinism.py --ops), and the fixed-order float32 product cost 2.2x the
    network's forward and backward at batch 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():  # (the sole condition, so TorchScript skips the block)
            if torch.is_autocast_enabled(x.device.type) and not torch.jit.is_tracing():
                return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)
        k, s, p = self.kernel_size[0], self.stride[0], self.padding[0]
        # the output's size, from a one-channel pool of the same geometry: size arithmetic here would
        # be traced into tensor constants, which a TorchScript copy cannot load onto the meta device
        B, _, h, w = F.avg_pool2d(x[:, :1], k, s, p).shape
        cols = F.unfold(x.float(), k, padding=p, stride=s)  # (B, C*k*k, h*w)
        bias = self.bias
        assert bias is not None  # every dlib conv has one (folded affine); says so to TorchScript
        y = _ordered_mm(self.weight.float().reshape(self.out_channels, -1), cols) + bias.float()[:, None]
        return y.view(B, self.out_channels, h, w)


class _ResidualDown(nn.Module):
    """ares_down<N>: relu(avg_pool2x2/2(x) (+) conv2(relu(conv1_stride2_pad0(x)))).

    (+) is dlib's add_prev on unequal shapes: the overlap is summed and each tensor is
    zero-padded at the end of every dimension.  Here the block has the channels
    (N >= input channels) and the pooled shortcut has the rows/cols (floor(s/2) >=
    floor((s-1)/2) for an s x s input), so each side is padded along its short axes only.
    """

    def __init__(self, conv1: nn.Conv2d, conv2: nn.Conv2d):
        super().__init__()
        self.conv1 = conv1
        self.conv2 = conv2
        self.extra_channels: int = conv2.out_channels - conv1.in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.conv1(x)))
        s = F.avg_pool2d(x, 2, 2)
        if self.extra_channels > 0:
            s = F.pad(s, [0, 0, 0, 0, 0, self.extra_channels])
        y = F.pad(y, [0, s.shape[3] - y.shape[3], 0, s.shape[2] - y.shape[2]])
        return F.relu(s + y)


class DlibResNet(nn.Module):
    """(B, 3, 150, 150) RGB chips in [0, 255] -> (B, 128) raw (un-normalised) dlib descriptors."""

    def __init__(self, mean: tuple[float, float, float], stem: nn.Conv2d,
                 blocks: list[nn.Module], fc: nn.Linear):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.stem = stem
        self.blocks = nn.ModuleList(blocks)
        self.fc = fc

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        x = (chips - self.mean) * (1.0 / 256.0)  # exact: 1/256 is a power of two
        x = F.max_pool2d(F.relu(self.stem(x)), 3, 2)
        for block in self.blocks:
            x = block(x)
        # self.fc's product, summed row by row: as a matrix product (MKL) its sums split among the
        # threads for some batch sizes (five chips, for one)
        return (x.mean(dim=(2, 3))[:, None, :] * self.fc.weight).sum(2)


# -- building the module from the decoded layers ------------------------------------------

class _Layers:
    """Bottom-up cursor over the decoded layers that checks each one against the architecture."""

    def __init__(self, net: DlibNet, source: str):
        self.items: Iterator[Layer | None] = iter(net.layers)
        self.source = source
        self.index = -1

    def _fail(self, msg: str) -> DlibFormatError:
        return DlibFormatError(f"{self.source} is not a dlib face-recognition ResNet model "
                               f"(layer {self.index} from the input: {msg})")

    def _next(self) -> Layer | None:
        self.index += 1
        try:
            return next(self.items)
        except StopIteration:
            raise self._fail("the file has fewer layers than the network") from None

    def tag(self) -> None:
        if self._next() is not None:
            raise self._fail("expected a tag/skip layer")

    def take(self, kind: str) -> Layer:
        layer = self._next()
        if layer is None or layer.kind != kind:
            raise self._fail(f"expected {kind}, found {layer.kind if layer else 'tag/skip'}")
        return layer

    def conv_affine(self, in_ch: int, out_ch: int, size: int, stride: int, kind=nn.Conv2d) -> nn.Conv2d:
        """con_ then affine_, folded into one Conv2d of class `kind` (dlib's default padding checked)."""
        con = self.take("con_4").params
        aff = self.take("affine_").params
        pad = 0 if stride != 1 else size // 2
        w = con["weight"]
        if w.shape != (out_ch, in_ch, size, size) or con["stride"] != (stride, stride) \
                or con["padding"] != (pad, pad):
            raise self._fail(f"con_ weight {w.shape} stride {con['stride']} padding "
                             f"{con['padding']}, expected ({out_ch}, {in_ch}, {size}, {size}) "
                             f"stride {stride} padding {pad}")
        if aff["mode"] != 0 or aff["gamma"].size != out_ch:
            raise self._fail(f"affine_ over {aff['gamma'].size} channels (mode {aff['mode']}),"
                             f" expected {out_ch} (conv mode)")
        g = aff["gamma"].astype(np.float64)
        weight = w.astype(np.float64) * g[:, None, None, None]
        bias = con["bias"].astype(np.float64) * g + aff["beta"]
        conv = kind(in_ch, out_ch, size, stride=stride, padding=pad, bias=True)
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(weight.astype(np.float32)))
            conv.bias.copy_(torch.from_numpy(bias.astype(np.float32)))
        return conv

    def pool(self, kind: str, size: int, stride: int) -> None:
        p = self.take(kind).params
        if p["size"] != (size, size) or p["stride"] != (stride, stride) or p["padding"] != (0, 0):
            raise self._fail(f"{kind} {p}, expected {size}x{size}/{stride} without padding")

    def ares(self, ch: int, kind=nn.Conv2d) -> nn.Module:
        self.tag()                                   # tag1
        c1 = self.conv_affine(ch, ch, 3, 1, kind)
        self.take("relu_")
        c2 = self.conv_affine(ch, ch, 3, 1, kind)
        self.take("add_prev_")                       # + tag1
        self.take("relu_")
        return _Residual(c1, c2)

    def ares_down(self, in_ch: int, ch: int, kind=nn.Conv2d) -> nn.Module:
        self.tag()                                   # tag1
        c1 = self.conv_affine(in_ch, ch, 3, 2, kind)
        self.take("relu_")
        c2 = self.conv_affine(ch, ch, 3, 1, kind)
        self.tag()                                   # tag2
        self.tag()                                   # skip1 (back to tag1)
        self.pool("avg_pool_2", 2, 2)
        self.take("add_prev_")                       # + tag2
        self.take("relu_")
        return _ResidualDown(c1, c2)

    def finish(self) -> None:
        if next(self.items, None) is not None:
            raise self._fail("the file has more layers than the network")


# (stage channels, number of ares blocks, whether the stage starts with ares_down), input first
_STAGES = ((32, 3, False), (64, 3, True), (128, 2, True), (256, 2, True), (256, 0, True))


def build_dlib_resnet(net: DlibNet, source: str = "<bytes>") -> DlibResNet:
    """Turn a decoded dlib network into :class:`DlibResNet`, checking the architecture."""
    inp = net.input.params
    if inp["size"] != (CHIP_SIZE, CHIP_SIZE):
        raise DlibFormatError(f"{source} is not a dlib face-recognition ResNet model "
                              f"(input size {inp['size']}, expected {CHIP_SIZE}x{CHIP_SIZE})")
    layers = _Layers(net, source)
    stem = layers.conv_affine(3, 32, 7, 2, kind=_SpaceToDepthConv)
    layers.take("relu_")
    layers.pool("max_pool_2", 3, 2)
    blocks: list[nn.Module] = []
    ch = 32
    for out_ch, n_res, down in _STAGES:
        kind = _OrderedConv if out_ch >= 128 else nn.Conv2d  # the 8x8-and-smaller stages
        if down:
            blocks.append(layers.ares_down(ch, out_ch, kind))
            ch = out_ch
        for _ in range(n_res):
            blocks.append(layers.ares(ch, kind))
    layers.pool("avg_pool_2", 0, 1)               # avg_pool_everything
    fcp = layers.take("fc_2").params
    w = fcp["weight"]
    if w.shape != (ch, EMBEDDING_DIM) or fcp["bias"] is not None:
        raise layers._fail(f"fc_ weight {w.shape} (bias: {fcp['bias'] is not None}), "
                           f"expected ({ch}, {EMBEDDING_DIM}) without bias")
    layers.finish()
    fc = nn.Linear(ch, EMBEDDING_DIM, bias=False)
    with torch.no_grad():
        fc.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
    model = DlibResNet(tuple(float(m) for m in inp["mean"]), stem, blocks, fc)
    model.eval()
    model.requires_grad_(False)
    return model


def read_dlib_resnet(path: str | Path | None = None, *, channels_last: bool = True) -> DlibResNet:
    """Load dlib's face-recognition ResNet from its .dat file (None: the packaged model).

    The result maps float (B, 3, 150, 150) RGB chips in [0, 255] (as made by
    ``dlib.get_face_chip(img, shape, size=150, padding=0.25)``) to (B, 128) descriptors
    equal to ``dlib.face_recognition_model_v1.compute_face_descriptor(chip)``; it is in
    eval mode with frozen parameters but differentiable with respect to its input.

    Raises ModelMissingError when the packaged model is not installed, FileNotFoundError
    for a missing ``path`` and DlibFormatError (a ValueError) when the file is not a dlib
    face-recognition ResNet.

    ``channels_last`` stores the conv weights in channels-last layout, which makes torch pick
    its oneDNN kernels on CPU even for plain NCHW input (measured 1.5-3x faster here, forward
    and backward; the outputs are the same either way), except in the fixed-order convs of the last
    stages (`_OrderedConv`), which read each filter as one row.
    """
    path = dlib_model(MODEL_FILE) if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dlib face-recognition model file not found: {path}")
    data = path.read_bytes()
    try:
        net = parse_dlib_net(data)
    except DlibFormatError as e:
        raise DlibFormatError(f"{path} is not a dlib face-recognition ResNet model: {e}") from e
    model = build_dlib_resnet(net, str(path))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        for conv in model.modules():
            if isinstance(conv, _OrderedConv):  # its product reads each filter as one row
                conv.to(memory_format=torch.contiguous_format)
    return model
