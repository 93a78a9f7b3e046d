"""The optimiser: eq. 2 of the paper, penalty method in tanh space, one batch of faces.

For each face crop x0 (working resolution) and per-extractor target features t_e:

    minimise  sum_e ||phi_e(warp_e(x)) - t_e||^2 / d0_e  +  lambda * max(DSSIM(x, x0) - rho, 0)

with x = 255 * (tanh(w) + 1) / 2 and Adam on w (the fused `tanh_adam_step`). d0_e, the
starting distance, normalises extractors so no model dominates. Each face keeps its best
iterate within the budget and freezes (learning rate 0) once its loss stalls. On a CPU frozen
faces are skipped, so a batch costs what its slowest face needs; on CUDA the whole batch's step is
replayed from a CUDA graph, since there launches, not arithmetic, are the cost. The transfer options
(`diversity`, `flip`; see transforms.py) change only what the extractors see each step.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch

from .. import ops
from .modes import Settings
from .transforms import diversify, jitter_mats


@dataclass
class BatchResult:
    best: torch.Tensor  # (B, 3, S, S) best feasible crop (x0 where nothing feasible improved)
    dssim: torch.Tensor  # (B,) DSSIM of `best` at working resolution
    steps: torch.Tensor  # (B,) Adam steps each face took


def _distances(exts, chips_fn, x, mats, targets, untargeted, flip=False, diversity=0.0, gen=None):
    """(B,) per-extractor squared feature distances, stacked to (E, B). `flip` and `diversity`
    (random transformations drawn from `gen`) are the transfer options of Settings."""
    out = []
    for k, ext in enumerate(exts):
        m = jitter_mats(mats[k], ext.chip_size, diversity, gen) if diversity > 0 else mats[k]
        chips = chips_fn(x, m, ext)
        if diversity > 0:
            chips = diversify(chips, diversity, gen)
        d = (ext.features(chips, flip=flip) - targets[k]).pow(2).sum(1)
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
            return self.forward(x, self.every)
        feat, dss, dist, g = self.forward(x.index_select(0, active), active)

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
        run = lambda: forward(self.x, self.every)  # noqa: E731
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
    """Graphs need fixed work per step: on CUDA, without random transformations; FAWKES_FAST_CUDA_GRAPH=0
    turns them off."""
    return (device.type == "cuda" and settings.diversity <= 0
            and os.environ.get("FAWKES_FAST_CUDA_GRAPH", "1") != "0")


def optimise(exts, chips_fn, x0: torch.Tensor, mats: list[torch.Tensor], targets: list[torch.Tensor],
             settings: Settings, untargeted: bool = False, on_step=None, seed: int = 0,
             clean: list[torch.Tensor] | None = None, graph: bool | None = None) -> BatchResult:
    """Cloak a batch of same-sized face crops. `chips_fn(x, mats, ext)` cuts an extractor's chips.

    `targets[k]` are L2-normalised (B, D) features for extractor k; when `untargeted`, they are
    the faces' own clean features and the loss pushes away from them instead (from a tiny,
    seeded random start: at x0 itself that loss has a zero gradient). `clean[k]`, the faces'
    features at x0 when the caller already has them, saves one extractor pass. `graph`: replay
    the step as a CUDA graph (default: `use_cuda_graph`).
    """
    B = x0.shape[0]
    dev = x0.device
    rho = settings.rho * settings.safety
    start = x0
    gen = torch.Generator().manual_seed(seed)
    if untargeted:
        start = (x0 + (torch.rand(x0.shape, generator=gen) * 2 - 1).to(dev)).clamp(0, 255)
    w = ops.image_to_tanh(start, 0.0, 255.0)
    x = ops.tanh_to_image(w, 0.0, 255.0).contiguous()
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    step = torch.zeros(B, device=dev)
    lr = torch.full((B,), settings.lr, device=dev)

    with torch.no_grad():
        # targeted: each extractor's distance is measured in units of where it started;
        # untargeted distances start at 0 and are used as they are (normalised features, <= 4)
        if untargeted:
            d0 = torch.ones(len(exts), B, device=dev)
        elif clean is not None and not settings.flip:  # the caller's features are plain, not flip-averaged
            d0 = torch.stack([(c - t).pow(2).sum(1) for c, t in zip(clean, targets)]).clamp_min(1e-6)
        else:
            d0 = _distances(exts, chips_fn, x0, mats, targets, False, settings.flip).clamp_min(1e-6)

    def forward(xs, idx):
        """(feature loss, DSSIM, distances, gradient) of the faces `idx`, whose crops are `xs`."""
        xa = xs.detach().requires_grad_(True)
        dist = _distances(exts, chips_fn, xa, [mm.index_select(0, idx) for mm in mats],
                          [t.index_select(0, idx) for t in targets], untargeted,
                          settings.flip, settings.diversity, gen)
        feat = (dist / d0.index_select(1, idx)).sum(0)
        dss = ops.dssim(xa, x0.index_select(0, idx))
        (g,) = torch.autograd.grad((feat + settings.penalty * torch.relu(dss - rho)).sum(), xa)
        return feat.detach(), dss.detach(), dist.detach(), g

    graph = use_cuda_graph(dev, settings) if graph is None else graph
    compute = _EagerStep(forward, x)
    if graph:
        try:
            compute = _GraphedStep(forward, x, B)
        except RuntimeError as e:  # an op this torch cannot capture: the eager step gives the same cloak
            warnings.warn(f"CUDA graph capture failed, running eagerly: {e}", RuntimeWarning, stacklevel=2)
    best = x0.clone()
    best_loss = torch.full((B,), float("inf"), device=dev)
    best_dssim = torch.zeros(B, device=dev)
    stall = torch.zeros(B, dtype=torch.long, device=dev)
    # under random transformations the loss is noisy: a stall says nothing, so run every step
    patience = settings.patience if settings.diversity <= 0 else settings.steps + 1

    for it in range(settings.steps + 1):
        running = lr > 0
        if not bool(running.any()):
            break
        feat, dss, dist, g = compute(x, running)
        with torch.no_grad():
            # keep the best iterate that meets the budget; this x is the one the loss was taken at
            ok = running & (dss <= rho)
            improved = ok & (feat < best_loss)
            margin = settings.min_improvement * best_loss.abs()
            significant = improved & (torch.isinf(best_loss) | (feat < best_loss - margin))
            torch.where(improved[:, None, None, None], x, best, out=best)  # in place: no new image per step
            best_dssim = torch.where(improved, dss, best_dssim)
            best_loss = torch.where(improved, feat, best_loss)
            # only a step inside the budget that fails to improve counts as a stall: right after
            # the start Adam often overshoots a small budget for several steps (the penalty brings
            # it back), and freezing then would leave the face uncloaked
            stall = torch.where(significant, 0, stall + ok.long())
            done = running & (stall >= patience)
            if settings.stop_at is not None and not untargeted:
                # paper §8.2: stop once the distance to the target is a fraction of where it began
                done |= ok & (dist / d0 <= settings.stop_at ** 2).all(0)
            if it == settings.steps:
                break
            lr = torch.where(done, 0.0, lr)
            step += (lr > 0).float()
            ops.tanh_adam_step(w, m, v, x, g, step, lr, 0.0, 255.0)
            if on_step is not None:
                on_step(int((lr > 0).sum()))
    return BatchResult(best=best, dssim=best_dssim, steps=step)
