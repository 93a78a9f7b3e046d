"""Presets: DSSIM budget (rho), step count and learning rate per protection mode.

`mid` uses the paper's rho = 0.007. Step counts and rates were tuned on LFW photos
(see README "Modes" for each mode's measured protection and time).
"""
from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Settings:
    rho: float = 0.007  # DSSIM budget per face region
    steps: int = 60  # upper bound; faces stop early when they stall
    lr: float = 0.04  # Adam rate in tanh space
    penalty: float = 200.0  # lambda of the hinge max(DSSIM - rho, 0), on distances normalised to 1
    patience: int = 10  # steps without improvement before a face freezes
    min_improvement: float = 1e-3  # relative loss improvement that resets patience
    stop_at: float | None = None  # freeze once distance to target <= stop_at * original distance
    safety: float = 0.97  # optimise to rho * safety, leaving room for 8-bit rounding and JPEG
    diversity: float = 0.0  # strength of random resize/shift/blur/JPEG each step (0: off); for transfer
    flip: bool = False  # average each extractor's features with the mirrored chip's; for transfer
    blur_copy: float = 0.0  # also push a Gaussian-blurred copy of each chip (sigma, chip px; 0: off), as LowKey
    ghost: float = 0.0  # channel dropout rate inside the extractors each step (DFANet's ghost copies; 0: off)
    momentum: float = 0.9  # Adam's beta1; heavier momentum steadies the step direction (MI-FGSM's argument)
    colour_mean: float = 0.9  # mean CIE76 ΔE over each budget box above which colour is penalised
    colour_peak: float = 4.0  # per-pixel CIE76 ΔE above which a pixel's change is penalised
    colour_penalty: float = 3.0  # weight of that colour hinge (0: off); see README "Modes"

    def __post_init__(self):
        bad = [f"{name}={getattr(self, name)!r} (must be {rule})" for name, ok, rule in (
            ("rho", 0 < self.rho < 1, "in (0, 1)"), ("steps", self.steps >= 0, ">= 0"), ("lr", self.lr > 0, "> 0"),
            ("diversity", 0 <= self.diversity <= 1, "in [0, 1]"), ("blur_copy", self.blur_copy >= 0, ">= 0"),
            ("ghost", 0 <= self.ghost < 1, "in [0, 1)"), ("momentum", 0 <= self.momentum < 1, "in [0, 1)"))
            if not ok]
        if bad:
            raise ValueError("bad cloaking option: " + "; ".join(bad))

    @property
    def random_each_step(self) -> bool:
        """Whether each step draws fresh randomness (then the loss is noisy and no step is replayable)."""
        return self.diversity > 0 or self.ghost > 0

    def with_options(self, **options) -> "Settings":
        unknown = set(options) - set(self.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown cloaking option(s): {', '.join(sorted(unknown))}")
        return replace(self, **options)


MODES = {
    "low": Settings(rho=0.004, steps=40, lr=0.03),
    "mid": Settings(rho=0.007, steps=60, lr=0.04),
    "high": Settings(rho=0.012, steps=100, lr=0.05),
}


def settings_for(mode: str, **options) -> Settings:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    return MODES[mode].with_options(**options)
