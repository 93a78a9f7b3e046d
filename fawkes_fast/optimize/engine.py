"""The optimiser: eq. 2 of the paper, penalty method in tanh space, one batch of faces.

For each face crop x0 (working resolution) and per-extractor target features t_e:

    minimise  sum_e ||phi_e(warp_e(x)) - t_e||^2 / d0_e  +  lambda * max(DSSIM(x, x0) - rho, 0)

with x = 255 * (tanh(w) + 1) / 2 and Adam on w (the fused `tanh_adam_step`). d0_e, the
starting distance, normalises extractors so no model dominates. Each face keeps its best
iterate within the budget and freezes (learning rate 0) once its loss stalls. On a CPU frozen
faces are skipped, so a batch costs what its slowest face needs; on CUDA the whole batch's step is
replayed from a CUDA graph, since there launches, not arithmetic, are the cost. The transfer options
(`diversity`, `flip`, `blur_copy`; see transforms.py) change only what the extractors see each step;
`ghost` (ghost.py) thins the extractors themselves, and `momentum` is Adam's beta1.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .. import ops
from ..faces.warp import warp_batch
from ..faces.budget import boxes_dssim
from .colour import colour_excess, delta_e76, rgb_to_lab
from .ghost import thin
from .modes import Settings
from .precision import with_precision
from .shapes import make_shape
from .transforms import diversify, gaussian_blur, jitter_mats


@dataclass
class BatchResult:
    best: torch.Tensor  # (B, 3, S, S) best feasible crop (the last iterate where none was feasible)
    dssim: torch.Tensor  # (B,) DSSIM of `best` at working resolution
    steps: torch.Tensor  # (B,) Adam steps each face took


def _distances(exts, x, mats, targets, untargeted, flip=False, diversity=0.0, gens=None, blur_copy=0.0):
    """(B,) per-extractor squared feature distances, stacked to (E, B). `flip`, `diversity`
    (random transformations drawn from each face's own generator in `gens`) and `blur_copy` (the
    mean with a blurred chip's distance) are the transfer options of Settings."""
    out = []
    for k, ext in enumerate(exts):
        m = jitter_mats(mats[k], ext.chip_size, diversity, gens) if diversity > 0 else mats[k]
        chips = warp_batch(x, m, ext.chip_size)
        if diversity > 0:
            chips = diversify(chips, diversity, gens)
        d = (ext.features(chips, flip=flip) - targets[k]).pow(2).sum(1)
        if blur_copy > 0:
            sigma = torch.full((chips.shape[0],), float(blur_copy), device=chips.device)
            d = (d + (ext.features(gaussian_blur(chips, sigma), flip=flip) - targets[k]).pow(2).sum(1)) / 2
        out.append(-d if untargeted else d)
    return torch.stack(out)


class _EagerStep:
    """Loss and gradient of the active faces only (saves compute where compute is the cost: CPU)."""

    def __init__(self, forward, x):
        self.forward, self.B = forward, x.shape[0]
        self.every = torch.arange(self.B, device=x.device)
        self.grad = torch.zeros_like(x)  # reused each step: frozen faces keep a zero gradient

    def __call__(self, x, active_mask):
        active = active_mask.nonzero().flatten()
        if len(active) == self.B:  # nobody frozen yet (most steps): nothing to spread back
            return self.forward(x, self.every, list(range(self.B)))
        feat, dss, dist, g = self.forward(x.index_select(0, active), active, active.tolist())

        def spread(t):  # frozen faces read as infinitely far and over budget, so nothing about them changes
            return t.new_full((*t.shape[:-1], self.B), float("inf")).index_copy(-1, active, t)

        self.grad.zero_().index_copy_(0, active, g)
        return spread(feat), spread(dss), spread(dist), self.grad


class _GraphedStep:
    """The whole batch's loss and gradient, captured once in a CUDA graph and replayed each step.

    On a GPU the eager step is launch-bound (hundreds of small kernels, ~12 ms of CPU against ~1 ms
    of GPU work); a replay issues them all at once. Frozen faces are computed too (their learning
    rate is 0), which keeps every shape fixed. The graph reads `x` in place, where Adam writes."""

    def __init__(self, forward, x, B: int):
        # the graph replays raw pointers: every tensor it reads must outlive it, hence self.*
        self.every = torch.arange(B, device=x.device)
        self.x = x
        rows = list(range(B))
        run = lambda: forward(self.x, self.every, rows)  # noqa: E731
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):  # warm-up: cuDNN/JIT choices settle before capture
            for _ in range(3):
                run()
        torch.cuda.current_stream(x.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: other threads (detection, another Cloaker) may use CUDA while we capture
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.out = run()

    def __call__(self, x, active_mask):
        self.graph.replay()
        return self.out


def use_cuda_graph(device: torch.device, settings: Settings) -> bool:
    """Graphs need fixed work per step: on CUDA, without per-step randomness; FAWKES_FAST_CUDA_GRAPH=0
    turns them off."""
    return (device.type == "cuda" and not settings.random_each_step
            and os.environ.get("FAWKES_FAST_CUDA_GRAPH", "1") != "0")


class _Problem:
    """Eq. 2 for one batch of faces: everything a step needs, computed once."""

    def __init__(self, exts, x0, mats, targets, settings: Settings, untargeted, seeds, clean, boxes, gray, sizes):
        B, dev, side = x0.shape[0], x0.device, x0.shape[-1]
        self.exts, self.x0, self.mats, self.targets, self.s = exts, x0, mats, targets, settings
        self.untargeted = untargeted
        self.rho = settings.rho * settings.safety
        self.gens = [torch.Generator().manual_seed(int(s)) for s in (seeds if seeds is not None else range(B))]
        self.sizes = sizes  # padded crops: face i is x0[i, :, :sizes[i], :sizes[i]], the rest stays as it is
        own = sizes if sizes is not None else [side] * B
        wholes = [np.array([[0, 0, n, n]]) for n in own]
        self.boxes = torch.as_tensor(np.stack(boxes if boxes is not None else wholes), dtype=torch.long, device=dev)
        if sizes is not None:  # each face's whole crop, for its DSSIM (ops.dssim would see the padding)
            crop_boxes = torch.as_tensor(np.stack(wholes), dtype=torch.long, device=dev)
            self.dssim_boxes = torch.cat([self.boxes, crop_boxes], 1)
            ramp = torch.arange(side, device=dev)
            n = torch.tensor(own, device=dev)[:, None]
            self.inside = ((ramp < n)[:, :, None] & (ramp < n)[:, None, :])[:, None]  # (B, 1, S, S)
        self.grey = torch.tensor(gray if gray is not None else [False] * B, device=dev)
        self.shape = make_shape(settings.shape, x0, self.grey, settings.strength, settings.chroma, sizes,
                                settings.dct_quality)
        with torch.no_grad():
            self.lab0 = rgb_to_lab(x0) if settings.colour_penalty > 0 else None
            self.d0 = self._start_distances(clean)  # measured on the whole models, before any thinning
        self.exts, self.ghosts = thin(exts, settings.ghost)  # the models that can be thinned; the rest whole
        # in the step only: the module's own layout, whose sums do not depend on the thread count (on a
        # CPU reduced precision runs oneDNN's nhwc kernels anyway, so there it is stored nhwc: precision.py)
        self.exts = [with_precision(e, settings.precision, channels_last=False) for e in self.exts]

    def _start_distances(self, clean):
        """Targeted: each extractor's distance is measured in units of where it started.
        Untargeted distances start at 0 and are used as they are (normalised features, <= 4)."""
        if self.untargeted:
            return torch.ones(len(self.exts), self.x0.shape[0], device=self.x0.device)
        if clean is not None and not self.s.flip and self.s.blur_copy <= 0:  # the caller's features are plain
            return torch.stack([(c - t).pow(2).sum(1) for c, t in zip(clean, self.targets)]).clamp_min(1e-6)
        return _distances(self.exts, self.x0, self.mats, self.targets, False, self.s.flip,
                          blur_copy=self.s.blur_copy).clamp_min(1e-6)

    def start(self) -> torch.Tensor:
        """The first iterate of the shape's parameter: no change, or for untargeted cloaks a tiny
        seeded shake (at x0 itself the untargeted loss has a zero gradient)."""
        if not self.untargeted:
            return self.shape.start(None)
        side = self.x0.shape[-1]
        own = self.sizes if self.sizes is not None else [side] * len(self.gens)
        # drawn at each face's own size: its start does not depend on its batch-mates' sizes
        noise = torch.stack([F.pad(torch.rand(3, n, n, generator=g) * 2 - 1, (0, side - n, 0, side - n))
                             for g, n in zip(self.gens, own)])
        return self.shape.start(noise.to(self.x0.device))

    def dssim(self, xa, idx):
        """Per face: DSSIM, the largest over its budget boxes and its whole crop (the boxes are the
        promised budget, the crop keeps the rest of the region from taking what they may not)."""
        x0, boxes = self.x0.index_select(0, idx), self.boxes.index_select(0, idx)
        if self.sizes is None:  # the whole crop by the fused kernel
            return torch.maximum(boxes_dssim(xa, x0, boxes).amax(1), ops.dssim(xa, x0))
        return boxes_dssim(xa, x0, self.dssim_boxes.index_select(0, idx)).amax(1)  # a padded crop's square is one more box

    def budget_terms(self, xa, idx, rows):
        """Per face: DSSIM and how far its colour change exceeds the limits (the mean over each box,
        the peak anywhere). A bounded shape (JND map, JPEG rounding) needs no DSSIM hinge: its DSSIM reads 0 in
        the step, where it cost 18-29% of the step's time (RESULTS §14); the finaliser still checks rho
        on the saved file, and the result's DSSIM is measured once at the end."""
        dss = (torch.zeros(len(rows), device=xa.device) if self.shape.bounded else self.dssim(xa, idx))
        if self.s.colour_penalty <= 0:
            return dss, torch.zeros_like(dss)
        boxes = self.boxes.index_select(0, idx)
        de = delta_e76(rgb_to_lab(xa), self.lab0.index_select(0, idx))
        return dss, colour_excess(de, boxes, self.s.colour_mean, self.s.colour_peak)

    def forward(self, ps, idx, rows):
        """(feature loss, DSSIM, distances, gradient) of the faces `idx` (also as a list, `rows`),
        whose shape parameters are `ps` (the gradient is with respect to them)."""
        s = self.s
        pa = ps.detach().requires_grad_(True)
        xa = self.shape.image(pa, idx)
        gens = [self.gens[i] for i in rows] if s.random_each_step else None
        for g in self.ghosts:
            g.gens = gens
        dist = _distances(self.exts, xa, [mm.index_select(0, idx) for mm in self.mats],
                          [t.index_select(0, idx) for t in self.targets], self.untargeted, s.flip, s.diversity, gens,
                          s.blur_copy)
        feat = (dist / self.d0.index_select(1, idx)).sum(0)
        dss, colour = self.budget_terms(xa, idx, rows)
        loss = feat + s.penalty * torch.relu(dss - self.rho) + s.colour_penalty * colour
        (g,) = torch.autograd.grad(loss.sum(), pa)
        g = self.shape.tie(g, idx)
        if self.sizes is not None:  # padding is not the photo's: it never moves
            g = g * self.inside.index_select(0, idx)
        return feat.detach(), dss.detach(), dist.detach(), g


def optimise(exts, x0: torch.Tensor, mats: list[torch.Tensor], targets: list[torch.Tensor],
             settings: Settings, untargeted: bool = False, on_step=None, seeds: list[int] | None = None,
             clean: list[torch.Tensor] | None = None, graph: bool | None = None,
             boxes: list[np.ndarray] | None = None, gray: list[bool] | None = None,
             sizes: list[int] | None = None) -> BatchResult:
    """Cloak a batch of same-sized face crops; `mats[k]` cut extractor k's chips from them.

    `targets[k]` are L2-normalised (B, D) features for extractor k; when `untargeted`, they are
    the faces' own clean features and the loss pushes away from them instead. `seeds`: one per
    face; each face draws its randomness from its own generator, so its cloak does not depend on
    its batch-mates' randomness. `clean[k]`, the faces' features at x0 when the caller already has
    them, saves one extractor pass. `graph`: replay the step as a CUDA graph (default:
    `use_cuda_graph`). `boxes`: per face, (K, 4) boxes in crop pixels (the same K for all) where its DSSIM budget
    and colour limit are measured (default: the whole crop). `gray`: faces of grayscale photos,
    whose cloak is kept grey (the same change in R, G and B). `sizes`: crops of different sizes
    zero-padded to one (FaceBatch.select): face i's own side, which its budget and gradient keep to.
    """
    problem = _Problem(exts, x0, mats, targets, settings, untargeted, seeds, clean, boxes, gray, sizes)
    lo, hi = problem.shape.lo, problem.shape.hi
    w = ops.image_to_tanh(problem.start(), lo, hi)
    x = ops.tanh_to_image(w, lo, hi).contiguous()  # the shape's parameter (for free pixels, the crop)
    graph = use_cuda_graph(x0.device, settings) if graph is None else graph
    compute = _EagerStep(problem.forward, x)
    if graph:
        try:
            compute = _GraphedStep(problem.forward, x, x0.shape[0])
        except RuntimeError as e:  # an op this torch cannot capture: the eager step gives the same cloak
            warnings.warn(f"CUDA graph capture failed, running eagerly: {e}", RuntimeWarning, stacklevel=2)
    return _descend(problem, compute, w, x, on_step)


def _descend(problem: _Problem, compute, w, x, on_step) -> BatchResult:
    """Adam in tanh space; each face keeps its best iterate within the budget and freezes on a stall."""
    s, B, dev = problem.s, x.shape[0], x.device
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    step = torch.zeros(B, device=dev)
    lr = torch.full((B,), s.lr, device=dev)
    best, best_loss = problem.shape.origin().clone(), torch.full((B,), float("inf"), device=dev)
    best_dssim = torch.zeros(B, device=dev)
    stall = torch.zeros(B, dtype=torch.long, device=dev)
    # under random transformations the loss is noisy: a stall says nothing, so run every step
    patience = s.patience if not s.random_each_step else s.steps + 1
    for it in range(s.steps + 1):
        running = lr > 0
        if not bool(running.any()):
            break
        feat, dss, dist, g = compute(x, running)
        with torch.no_grad():
            # keep the best iterate that meets the budget (the start is no cloak, so not a candidate);
            # this x is the one the loss was taken at
            ok = running & (dss <= problem.rho) & (it > 0)
            improved = ok & (feat < best_loss)
            significant = improved & (torch.isinf(best_loss) | (feat < best_loss - s.min_improvement * best_loss.abs()))
            torch.where(improved[:, None, None, None], x, best, out=best)  # in place: no new image per step
            best_dssim = torch.where(improved, dss, best_dssim)
            best_loss = torch.where(improved, feat, best_loss)
            # only a step inside the budget that fails to improve counts as a stall: right after
            # the start Adam often overshoots a small budget for several steps (the penalty brings
            # it back), and freezing then would leave the face uncloaked
            stall = torch.where(significant, 0, stall + ok.long())
            done = running & (stall >= patience)
            if s.stop_at is not None and not problem.untargeted:
                # paper §8.2: stop once the distance to the target is a fraction of where it began
                done |= ok & (dist / problem.d0 <= s.stop_at ** 2).all(0)
            if it == s.steps:
                break
            lr = torch.where(done, 0.0, lr)
            step += (lr > 0).float()
            ops.tanh_adam_step(w, m, v, x, g, step, lr, problem.shape.lo, problem.shape.hi, beta1=s.momentum)
            if on_step is not None:
                on_step(int((lr > 0).sum()))
        # a face that never got inside the budget (too few steps) keeps its last iterate: the
        # finaliser scales it down until the saved file meets the budget, rather than drop it
        lost = torch.isinf(best_loss)
        if bool(lost.any()):
            best = torch.where(lost[:, None, None, None], x, best)
            best_dssim = torch.where(lost, dss, best_dssim)
    with torch.no_grad():
        every = torch.arange(B, device=dev)
        best = problem.shape.image(best, every)
        if problem.shape.bounded:  # not measured per step (budget_terms)
            best_dssim = problem.dssim(best, every)
    return BatchResult(best=best, dssim=best_dssim, steps=step)
