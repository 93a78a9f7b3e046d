"""Reduced precision for the extractors inside the optimiser step (issue #13).

On a GPU the step's cost is the extractors' convolutions. Running them under ``torch.autocast``
(bf16 or fp16, tensor cores) with ``channels_last`` activations cuts that cost, while the rest of
the step keeps fp32: the chips handed in, the features (cast back to fp32 before they are
normalised), the loss, the fused SSIM and the Adam state. Gradients reach the chips in fp32.

    fast = with_precision(ext, "bf16")   # once, when the extractors are loaded
    fast.features(chips)                 # the same call as before, reduced precision inside

``with_precision`` returns a new :class:`Extractor` over a copy of the module, so the shared,
cached module (and every other user of ``ext``) is untouched. The autocast weight cache is off,
as CUDA-graph capture requires; the dlib family's copy therefore stores its conv weights already cast
(`_stored_in`), so nothing is cast per call. A TorchScript
module runs without the JIT's graph optimisations here (see AutocastModule.forward); that switch
is process-wide while the forward runs, so concurrent steps should hold the engine's compute lock.

Whether a precision keeps the cloak protective is measured, not assumed: ``feature_parity`` gives
the cosine between fp32 and reduced-precision features of the same chips (goal >= 0.999;
tests/test_precision.py checks it on LFW chips, bench/gpu_check.sh on 100 chips on a GPU).
"""
from __future__ import annotations

import copy
import dataclasses
import functools

import torch
import torch.nn.functional as F

from ..extractors import builtin, is_builtin
from ..extractors.base import Extractor
from ..extractors.loading import eager_builtin

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_dtype(precision: str | torch.dtype | None) -> torch.dtype | None:
    """The autocast dtype of a precision name ("fp32", "bf16", "fp16") or dtype; None for fp32."""
    if precision is None or precision == torch.float32:
        return None
    if isinstance(precision, torch.dtype):
        if precision not in (torch.bfloat16, torch.float16):
            raise ValueError(f"reduced precision must be bfloat16 or float16, got {precision}")
        return precision
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {sorted(PRECISIONS)}")
    return PRECISIONS[precision]


class AutocastModule(torch.nn.Module):
    """Runs `inner` under autocast(dtype) on channels_last input; returns fp32 outputs."""

    def __init__(self, inner: torch.nn.Module, dtype: torch.dtype, channels_last: bool = True):
        super().__init__()
        self.inner, self.dtype, self.channels_last = inner, dtype, channels_last

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            chips = chips.contiguous(memory_format=torch.channels_last)
        # optimized_execution(False): a user's TorchScript module runs without the JIT's fused, symbolically
        # differentiated graphs, as it does in fp32. (An earlier note blamed them for bf16 gradients at a
        # cosine of 0.98 to fp32; eager bf16 gives the same 0.977-0.990 on LFW chips: that is bf16's
        # rounding, tests/test_precision.py.) cache_enabled=False: a cached weight cast would outlive a
        # CUDA-graph capture.
        with torch.jit.optimized_execution(False), \
                torch.autocast(chips.device.type, dtype=self.dtype, cache_enabled=False):
            out = self.inner(chips)
        return out.float()


def with_precision(ext: Extractor, precision: str | torch.dtype | None = "bf16",
                   channels_last: bool = True) -> Extractor:
    """`ext` with its module run in reduced precision (a copy; `ext` itself is unchanged).

    precision: "bf16", "fp16" or "fp32" (returns `ext` as it is). channels_last: also store the
    copy's 4-D weights channels_last, so convolutions need no layout change per call; False keeps
    the module's own layout (dlib's, chosen for thread-count-independent sums). On a CPU the dlib family
    is stored channels_last either way: torch hands reduced-precision convolutions to oneDNN's nhwc
    kernels whatever the layout, so only its per-call reorders go (the same kernels, the same bits).
    A TorchScript module outside the dlib family comes back as it is (autocast cannot reach it)."""
    dtype = resolve_dtype(precision)
    if dtype is None:
        return ext
    module = ext.module
    if isinstance(module, torch.jit.ScriptModule):
        # a traced graph records aten::_convolution, which autocast leaves in fp32 (and SFace's grouped
        # convs then fail on bf16 input): the dlib family runs from its eager twin, the rest as they are
        if not (is_builtin(ext.name) and builtin(ext.name).thinnable):
            return ext
        channels_last = channels_last or ext.device.type == "cpu"
        return dataclasses.replace(ext, module=AutocastModule(
            _stored_in(ext.name, str(ext.device), dtype, channels_last), dtype, channels_last))
    inner = copy.deepcopy(module).to(memory_format=torch.channels_last) if channels_last else module
    return dataclasses.replace(ext, module=AutocastModule(inner, dtype, channels_last))


@functools.lru_cache(maxsize=8)
def _stored_in(name: str, device: str, dtype: torch.dtype, channels_last: bool) -> torch.nn.Module:
    """A built-in's eager module (a copy) whose convolutions keep their weights and biases in `dtype`.
    Autocast casts them to `dtype` anyway, at every call, since its weight cache is off; stored cast,
    the same bits reach the same kernels. Everything else (dlib's final product, a mul and a sum) keeps
    float32, as autocast leaves it. With the layout, dlib's bf16 forward and backward at batch 1 on a
    2-core EPYC: 13-14 ms before, 10-11 ms after (bench/RESULTS.md §17)."""
    module = copy.deepcopy(eager_builtin(name, device))
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    for conv in module.modules():
        if isinstance(conv, torch.nn.Conv2d):
            conv.weight.data = conv.weight.data.to(dtype)
            if conv.bias is not None:
                conv.bias.data = conv.bias.data.to(dtype)
    return module


@torch.no_grad()
def feature_parity(ext: Extractor, chips: torch.Tensor, precision: str | torch.dtype = "bf16",
                   batch: int = 64) -> torch.Tensor:
    """(N,) cosine similarity of `ext`'s raw fp32 features and its reduced-precision features
    of the same chips (N, 3, S, S), computed in batches of `batch`."""
    fast = with_precision(ext, precision)
    out = []
    for part in chips.split(batch):
        out.append(F.cosine_similarity(ext.module(part).float(), fast.module(part), dim=1))
    return torch.cat(out)
