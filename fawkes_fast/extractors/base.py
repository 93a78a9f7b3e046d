"""The Extractor: a face recognizer plus the chip geometry it expects.

Every extractor, built-in or user-supplied, is reduced to the same shape: a torch
module mapping aligned RGB chips in [0, 255] to raw embeddings, and a declaration of
how chips are cut from a photo (alignment template and size). The engine only ever
talks to this class, so adding a model never touches the optimiser.
"""
from __future__ import annotations

import copy
import io
import warnings
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ..faces.align import chip_matrix, dlib5_template, face_chip_matrix, points_needed


def frozen_copy(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """A frozen copy of `module` on `device`; TorchScript goes through save/load (its parameters
    cannot be moved to every device in place, e.g. not to "meta")."""
    if isinstance(module, torch.jit.ScriptModule):
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notices
            torch.jit.save(module, buf)
            buf.seek(0)
            out = torch.jit.load(buf, map_location=device)
    else:
        out = copy.deepcopy(module).to(device)
    for p in out.parameters():
        p.requires_grad_(False)
    return out.eval()


@dataclass
class Extractor:
    name: str
    module: torch.nn.Module  # (B, 3, S, S) RGB float in [0, 255] -> (B, D) raw embeddings
    template: str  # alignment template known to fawkes_fast.faces.align.chip_matrix ("dlib", "arcface", "facenet", ...)
    chip_size: int
    dim: int
    padding: float = 0.25  # only used by the "dlib" template

    @property
    def device(self) -> torch.device:
        for t in self.module.parameters():
            return t.device
        for t in self.module.buffers():
            return t.device
        return torch.device("cpu")

    def to(self, device) -> "Extractor":
        """This extractor on `device`: itself when already there, else a copy whose module is a
        moved deep copy (nn.Module.to works in place, and built-in modules are shared)."""
        have, want = self.device, torch.device(device)
        if have.type == want.type and want.index in (None, have.index):
            return self
        return replace(self, module=frozen_copy(self.module, want))

    def features(self, chips: torch.Tensor, flip: bool = False) -> torch.Tensor:
        """L2-normalised embeddings; differentiable with respect to `chips`.

        flip: also embed the mirrored chips and sum (test-time flip averaging; on LFW it took
        dlib from 98.80% to 99.06%)."""
        if not flip:
            return F.normalize(self.module(chips).float(), dim=1)
        raw = self.module(torch.cat([chips, chips.flip(-1)])).float()
        return F.normalize(raw[: len(chips)] + raw[len(chips):], dim=1)

    @property
    def points(self) -> str:
        """The landmark scheme its chips are aligned on: "dlib5", or e.g. "yunet5" (SFace, as OpenCV)."""
        return points_needed(self.template)

    def chip_matrix(self, face):
        """(2, 3) chip->photo pixel affine of one detected face, on the points its template is
        fitted on when the face has them (``face.points``), else on dlib's 5."""
        return face_chip_matrix(face, self.template, self.chip_size, **self._chip_kwargs())

    def chip_matrices(self, landmarks):
        """(N, 2, 3) chip->photo pixel affines from dlib 5-point landmarks (N, 5, 2) alone (tooling;
        a template fitted on other points falls back to its dlib-5 twin)."""
        return chip_matrix(dlib5_template(self.template), landmarks, size=self.chip_size, **self._chip_kwargs())

    def _chip_kwargs(self) -> dict:
        return {"padding": self.padding} if self.template == "dlib" else {}
