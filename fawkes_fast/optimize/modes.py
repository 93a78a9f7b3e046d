"""Presets per protection mode, picked from the protection-against-visibility frontier (issue #22).

`mid`, the default, is the least visible point measured that protects (>= 95% / >= 90% against native
dlib): JPEG's rounding chosen adversarially (shapes.py, "dct": each 8x8 DCT coefficient of the luma moves by
at most 2.5 x min(q/2, |c|) at quality 50), in 30 steps: half the steps of the 2 x bound at the same rate,
as protective and no more visible (bench/RESULTS.md §19). `low` is the strongest JND-masked luma change ("jnd") no more
visible than re-saving the photo as JPEG q80, `high` the joint cloak (MODE_EXTRACTORS) as a JND-masked
change. `paper` keeps the paper's shape: free pixels under the DSSIM budget rho = 0.007 over the face's
boxes, with the colour hinge (it protects about 15% against native dlib). README "Modes" gives each
mode's measured protection and visibility.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

SHAPES = ("dssim", "jnd", "dct", "uerd", "juniward")  # what the optimiser moves: see shapes.py
PRECISIONS = ("fp32", "bf16", "fp16")  # of the extractors inside the step: see precision.py


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
    shape: str = "dssim"  # what moves (shapes.py): "dssim" free pixels under the hinges, "jnd" a JND-bounded change
    strength: float = 1.0  # "jnd": the bound as a multiple of the JND map
    chroma: float = 0.5  # "jnd": the chroma bound as a share of the luma bound
    precision: str = "fp32"  # the extractors inside the step: "fp32", or "bf16"/"fp16" autocast (precision.py)
    dct_quality: int = 80  # "dct", "uerd", "juniward": the JPEG quality whose quantisation steps bound the change

    def __post_init__(self):
        bad = [f"{name}={getattr(self, name)!r} (must be {rule})" for name, ok, rule in (
            ("rho", 0 < self.rho < 1, "in (0, 1)"), ("steps", self.steps >= 0, ">= 0"), ("lr", self.lr > 0, "> 0"),
            ("diversity", 0 <= self.diversity <= 1, "in [0, 1]"), ("blur_copy", self.blur_copy >= 0, ">= 0"),
            ("ghost", 0 <= self.ghost < 1, "in [0, 1)"), ("momentum", 0 <= self.momentum < 1, "in [0, 1)"),
            ("shape", self.shape in SHAPES, f"one of {', '.join(SHAPES)}"), ("strength", self.strength > 0, "> 0"),
            ("chroma", 0 <= self.chroma <= 1, "in [0, 1]"),
            ("precision", self.precision in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
            ("dct_quality", 1 <= self.dct_quality <= 100, "in [1, 100]"))
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


# what every bounded (jnd, dct) mode shares; bench/frontier.py builds its points from it too
BOUNDED = {"chroma": 0.0, "rho": 0.2, "colour_penalty": 0.0, "steps": 60, "lr": 0.04, "precision": "bf16"}


def _bounded(shape: str, strength: float, **extra) -> Settings:
    """A luma cloak bounded by its shape; its DSSIM (reported for every cloak) is capped loosely by rho,
    never reached at these strengths, and the colour hinge is off (the change is luma only). The step's
    extractors run in bf16 where they can (the dlib family; 1.5-2.3x the peer's step on a CPU, same
    protection: bench/RESULTS.md §14); the targets, the start and the reports stay fp32."""
    return Settings(**{**BOUNDED, "shape": shape, "strength": strength, **extra})


MODES = {
    "low": _bounded("jnd", 0.1),
    "mid": _bounded("dct", 2.5, dct_quality=50, steps=30),
    "high": _bounded("jnd", 0.8),
    "paper": Settings(rho=0.007, steps=60, lr=0.04),
}


# the extractors a mode cloaks with when the caller names none: `high` is the joint cloak
MODE_EXTRACTORS = {"low": ("dlib",), "mid": ("dlib",), "high": ("dlib", "sface", "facenet"), "paper": ("dlib",)}


def extractors_for(mode: str, extractors=None) -> tuple[str, ...]:
    """The caller's extractors (a name or several), or the mode's own."""
    if extractors is None:
        if mode not in MODE_EXTRACTORS:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        return MODE_EXTRACTORS[mode]
    return (extractors,) if isinstance(extractors, str) else tuple(extractors)


def settings_for(mode: str, **options) -> Settings:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    return MODES[mode].with_options(**options)
