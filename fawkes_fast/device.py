"""Which torch device to compute on: the one place that turns a user's word into a torch.device."""
from __future__ import annotations

import torch


def resolve_device(device=None) -> torch.device:
    """None or "auto": CUDA when torch sees it, else the CPU. A clear ValueError for anything else."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}: use cpu, cuda, cuda:N or auto") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {str(device)!r}: use cpu, cuda, cuda:N or auto")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but torch sees no CUDA device (use --device cpu)")
    return device
