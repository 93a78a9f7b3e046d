"""Ghost copies of an extractor (model augmentation, as DFANet): dropout on its hidden activations.

Each optimiser step sees a different random thinning of the network, as if the cloak were tuned
against many slightly different models at once; the hope is a cloak that leans less on one model's
exact features. Masks are drawn per face from the face's own generator, so a face's cloak never
depends on its batch-mates. The dropout acts on whole channels of every ``nn.Conv2d`` output (the
built-in dlib ResNets are built of them), in a private eager copy of the module: the shared, cached
TorchScript one (and every other thread using it) is untouched. A model without an ``nn.Conv2d`` (an
imported ONNX or GraphDef graph, as SFace and FaceNet, runs its convolutions functionally) cannot be
thinned this way: `thin` leaves it whole beside the thinned ones, and refuses a request where no
extractor can be thinned (`check_ghost`, which the Cloaker runs before any photo).
"""
from __future__ import annotations

import dataclasses

import torch

from ..extractors import builtin, is_builtin
from ..extractors.base import Extractor, frozen_copy
from ..extractors.loading import eager_builtin




def eager_module(ext: Extractor) -> torch.nn.Module:
    """A private eager copy of `ext`'s module on its device."""
    module = ext.module
    if isinstance(module, torch.jit.ScriptModule):
        if not is_builtin(ext.name):
            raise ValueError(f"ghost copies need an eager torch module; {ext.name} is TorchScript (use ghost=0 with it)")
        module = eager_builtin(ext.name)
    return frozen_copy(module, ext.device)


def can_thin(ext) -> bool:
    """Whether ghost copies can thin `ext` (an Extractor, or the name or path it is loaded from): a
    built-in registered as thinnable (the dlib family), or an eager module with nn.Conv2d layers."""
    name = ext.name if isinstance(ext, Extractor) else str(ext)
    if is_builtin(name):
        return builtin(name).thinnable
    module = getattr(ext, "module", None)
    return (isinstance(module, torch.nn.Module) and not isinstance(module, torch.jit.ScriptModule)
            and any(isinstance(m, torch.nn.Conv2d) for m in module.modules()))


def check_ghost(p: float, extractors) -> None:
    """ValueError for ghost copies (p > 0) that would thin nothing: no extractor can be thinned."""
    if p > 0 and not any(can_thin(e) for e in extractors):
        names = ", ".join(e.name if isinstance(e, Extractor) else str(e) for e in extractors)
        raise ValueError(f"ghost={p}: ghost copies thin dlib-family models only, and none of the extractors "
                         f"({names}) is one; add dlib or use ghost=0")


def thin(exts: list[Extractor], p: float) -> tuple[list[Extractor], list["Ghost"]]:
    """The extractors with each one that can be thinned replaced by its ghost copy (the others whole),
    and those ghosts (set their `gens` before each forward). p = 0: the extractors as they are."""
    if p <= 0:
        return list(exts), []
    check_ghost(p, exts)
    ghosts = {i: Ghost(e, p) for i, e in enumerate(exts) if can_thin(e)}
    return [ghosts[i].extractor if i in ghosts else e for i, e in enumerate(exts)], list(ghosts.values())


class Ghost:
    """An extractor whose conv outputs are channel-dropped at rate `p`; set `gens` (one generator per
    batch row) before each forward. A flipped pass (twice the rows) reuses each row's mask."""

    def __init__(self, ext: Extractor, p: float):
        module = eager_module(ext)
        layers = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
        if not layers:
            raise ValueError(f"ghost copies need nn.Conv2d layers; {ext.name} has none (use ghost=0 with it)")
        self.p, self.gens = p, None
        for m in layers:
            m.register_forward_hook(self._drop)
        self.extractor = dataclasses.replace(ext, module=module)

    def _drop(self, _mod, _inp, out):
        keep = torch.stack([(torch.rand(out.shape[1], generator=g) >= self.p) for g in self.gens])
        mask = (keep.float() / (1.0 - self.p)).to(out.device)[:, :, None, None]
        return out * mask.repeat(out.shape[0] // len(self.gens), 1, 1, 1)
