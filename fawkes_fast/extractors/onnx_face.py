"""How an imported face model is used: its chip (template, size), input normalisation and layout
(`OnnxFaceSpec`, stored beside the model as JSON), and the wrapper that turns aligned chips in
[0, 255] into L2-normalised embeddings (`wrap_onnx_face_model`)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn

_TEMPLATES = ("arcface", "dlib", "facenet", "sface_yunet")


@dataclass
class OnnxFaceSpec:
    """How to feed an ONNX face recognizer; see the module docstring for the JSON format."""

    input_size: int
    template: str  # "arcface" | "dlib" | "facenet" | "sface_yunet"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channel_order: str  # "RGB" | "BGR"
    embedding_dim: int

    def __post_init__(self):
        self.input_size = int(self.input_size)
        self.embedding_dim = int(self.embedding_dim)
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        self.channel_order = str(self.channel_order).upper()
        self.template = str(self.template).lower()
        if self.input_size <= 0 or self.embedding_dim <= 0:
            raise ValueError("input_size and embedding_dim must be positive")
        if self.template not in _TEMPLATES:
            raise ValueError(f"template must be one of {_TEMPLATES}, got {self.template!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need 3 values each (one per channel)")
        if any(v == 0 for v in self.std):
            raise ValueError("std values must be non-zero")
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")

    @classmethod
    def from_dict(cls, d: dict) -> "OnnxFaceSpec":
        names = {"input_size", "template", "mean", "std", "channel_order", "embedding_dim"}
        missing, extra = names - set(d), set(d) - names
        if missing or extra:
            raise ValueError(f"face-model spec: missing keys {sorted(missing)}, unknown keys {sorted(extra)}")
        return cls(**d)

    @classmethod
    def from_json(cls, path: str | Path) -> "OnnxFaceSpec":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a JSON object")
        try:
            return cls.from_dict(d)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from e

    def to_json(self, path: str | Path | None = None) -> str:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        text = json.dumps(d, indent=2)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text


class OnnxFaceModel(nn.Module):
    """RGB [0, 255] chips (B, 3, S, S) -> the model's preprocessing -> (B, embedding_dim)."""

    def __init__(self, model: nn.Module, spec: OnnxFaceSpec, channels_last: bool = False):
        super().__init__()
        self.model = model
        self.spec = spec
        self.channels_last = channels_last
        self.swap_rb = spec.channel_order == "BGR"
        self.identity_norm = spec.mean == (0.0, 0.0, 0.0) and spec.std == (1.0, 1.0, 1.0)
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).reshape(1, 3, 1, 1))
        self.register_buffer("inv_std", (1.0 / torch.tensor(spec.std, dtype=torch.float64)).float().reshape(1, 3, 1, 1))

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        s = self.spec.input_size
        if not torch.jit.is_tracing() and (chips.dim() != 4 or tuple(chips.shape[1:]) != (3, s, s)):
            raise ValueError(f"expected chips of shape (B, 3, {s}, {s}), got {tuple(chips.shape)}")
        x = chips if chips.is_floating_point() else chips.float()  # uint8 chips are accepted too
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.swap_rb:
            x = x.flip(1)
        if not self.identity_norm:
            x = (x - self.mean) * self.inv_std
        y = self.model(x)
        if isinstance(y, (tuple, list)):
            y = y[0]
        return y.reshape(y.shape[0], -1)


def wrap_onnx_face_model(module: nn.Module, spec: OnnxFaceSpec, channels_last: bool = False) -> nn.Module:
    """Wrap an imported face model so it takes RGB [0, 255] chips of spec.input_size.

    channels_last=True also converts the model's 4-D weights and every input to channels_last
    (NHWC) memory, which is markedly faster for CNNs on CPU (oneDNN); results are unchanged.
    """
    if isinstance(spec, dict):
        spec = OnnxFaceSpec.from_dict(spec)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    return OnnxFaceModel(module, spec, channels_last).eval()
