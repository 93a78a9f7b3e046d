"""The optimiser: eq. 2 of the paper, penalty method in tanh space, one batch of faces.

For each face crop x0 (working resolution) and per-extractor target features t_e:

    minimise  sum_e ||phi_e(warp_e(x)) - t_e||^2 / d0_e  +  lambda * max(DSSIM(x, x0) - rho, 0)

with x = 255 * (tanh(w) + 1) / 2 and Adam on w (the fused `tanh_adam_step`). d0_e, the
starting distance, normalises extractors so no model dominates. Each face keeps its best
iterate within the budget and freezes (learning rate 0, skipped by the extractors) once its
loss stalls, so a batch costs what its slowest face needs. The transfer options
(`diversity`, `flip`; see transforms.py) change only what the extractors see each step.
"""
from __future__ import annotations

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


def optimise(exts, chips_fn, x0: torch.Tensor, mats: list[torch.Tensor], targets: list[torch.Tensor],
             settings: Settings, untargeted: bool = False, on_step=None, seed: int = 0,
             clean: list[torch.Tensor] | None = None) -> BatchResult:
    """Cloak a batch of same-sized face crops. `chips_fn(x, mats, ext)` cuts an extractor's chips.

    `targets[k]` are L2-normalised (B, D) features for extractor k; when `untargeted`, they are
    the faces' own clean features and the loss pushes away from them instead (from a tiny,
    seeded random start: at x0 itself that loss has a zero gradient). `clean[k]`, the faces'
    features at x0 when the caller already has them, saves one extractor pass.
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
    best = x0.clone()
    best_loss = torch.full((B,), float("inf"), device=dev)
    best_dssim = torch.zeros(B, device=dev)
    stall = torch.zeros(B, dtype=torch.long, device=dev)
    grad = torch.zeros_like(x)
    # under random transformations the loss is noisy: a stall says nothing, so run every step
    patience = settings.patience if settings.diversity <= 0 else settings.steps + 1

    for it in range(settings.steps + 1):
        active = (lr > 0).nonzero().flatten()
        if active.numel() == 0:
            break
        xa = x.index_select(0, active).requires_grad_(True)
        dist = _distances(exts, chips_fn, xa, [mm.index_select(0, active) for mm in mats],
                          [t.index_select(0, active) for t in targets], untargeted,
                          settings.flip, settings.diversity, gen)
        feat = (dist / d0[:, active]).sum(0)
        dss = ops.dssim(xa, x0.index_select(0, active))
        loss = feat + settings.penalty * torch.relu(dss - rho)
        (g,) = torch.autograd.grad(loss.sum(), xa)

        with torch.no_grad():
            # keep the best iterate that meets the budget; this x is the one the loss was taken at
            ok = dss <= rho
            cur = best_loss[active]
            improved = ok & (feat < cur)
            margin = settings.min_improvement * cur.abs()
            significant = improved & (torch.isinf(cur) | (feat < cur - margin))
            idx = active[improved]
            best[idx] = xa.detach()[improved]
            best_dssim[idx] = dss[improved]
            best_loss[idx] = feat[improved]
            # only a step inside the budget that fails to improve counts as a stall: right after
            # the start Adam often overshoots a small budget for several steps (the penalty brings
            # it back), and freezing then would leave the face uncloaked
            stall[active] += ok.long()
            stall[active[significant]] = 0
            done = stall[active] >= patience
            if settings.stop_at is not None and not untargeted:
                # paper §8.2: stop once the distance to the target is a fraction of where it began
                done |= ok & (dist / d0[:, active] <= settings.stop_at ** 2).all(0)
            if it == settings.steps:
                break
            lr[active[done]] = 0.0
            grad.zero_()
            grad[active] = g
            step += (lr > 0).float()
            ops.tanh_adam_step(w, m, v, x, grad, step, lr, 0.0, 255.0)
            if on_step is not None:
                on_step(int((lr > 0).sum()))
    return BatchResult(best=best, dssim=best_dssim, steps=step)
